package conductor

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

type call struct {
	target rpc.Target
	method string
	args   map[string]any
}

type fakeCaller struct {
	calls []call
	reply func(c call) (json.RawMessage, error)
}

func (f *fakeCaller) Call(_ context.Context, t rpc.Target, method string, args map[string]any, _ *rpc.RequestContext, _ time.Duration) (json.RawMessage, error) {
	c := call{t, method, args}
	f.calls = append(f.calls, c)
	return f.reply(c)
}

func TestObjectActionAppliesUpdates(t *testing.T) {
	var b []byte
	f := &fakeCaller{reply: func(c call) (json.RawMessage, error) {
		b, _ = json.Marshal(c.args["objinst"]) // as it goes on the wire
		return json.RawMessage(`[{"id": 7, "uuid": "57cd", "last_seen_up": null, "obj_what_changed": ["id"]}, null]`), nil
	}}
	api := New(f, time.Second, nil)
	svc := novaobj.New("Service", ServiceVersion)
	svc.Set("host", "h1")
	svc.Set("report_count", 0)
	if err := api.Create(context.Background(), rpc.AdminContext(), svc); err != nil {
		t.Fatal(err)
	}
	if svc.Int("id") != 7 || svc.String("uuid") != "57cd" || svc.String("host") != "h1" {
		t.Errorf("object after create: %+v", svc.Data)
	}
	if len(svc.Changes) != 1 || svc.Changes[0] != "id" {
		t.Errorf("changes = %v, want conductor's obj_what_changed", svc.Changes)
	}
	c := f.calls[0]
	if c.method != "object_action" || c.target.Topic != "conductor" || c.target.Version != "3.0" || c.args["objmethod"] != "create" {
		t.Errorf("call = %+v", c)
	}
	// What went on the wire is the primitive with its changes.
	var wire map[string]any
	_ = json.Unmarshal(b, &wire)
	if wire["nova_object.name"] != "Service" || wire["nova_object.version"] != "1.22" || len(wire["nova_object.changes"].([]any)) != 2 {
		t.Errorf("objinst on the wire = %s", b)
	}
}

func TestObjectActionBadReply(t *testing.T) {
	f := &fakeCaller{reply: func(call) (json.RawMessage, error) { return json.RawMessage(`{"x": 1}`), nil }}
	err := New(f, time.Second, nil).Save(context.Background(), nil, novaobj.New("Service", "1.22"))
	if !errors.Is(err, ErrBadReply) {
		t.Fatalf("err = %v, want ErrBadReply", err)
	}
}

func TestSaveInstanceExpectedTaskState(t *testing.T) {
	f := &fakeCaller{reply: func(call) (json.RawMessage, error) {
		return nil, &rpc.RemoteError{Module: "nova.exception", Class: "UnexpectedTaskStateError", Message: "Unexpected task state"}
	}}
	inst := novaobj.New("Instance", InstanceVersion)
	inst.Set("uuid", "2f9a4c1e-0000-4000-8000-000000000001")
	err := New(f, time.Second, nil).SaveInstance(context.Background(), nil, inst, []any{"scheduling", nil})
	if !RemoteClass(err, "UnexpectedTaskStateError") {
		t.Fatalf("err = %v", err)
	}
	kw := f.calls[0].args["kwargs"].(map[string]any)
	if b, _ := json.Marshal(kw["expected_task_state"]); string(b) != `["scheduling",null]` {
		t.Errorf("expected_task_state = %s", b)
	}
}

func TestComputeNodeNotFoundIsNil(t *testing.T) {
	f := &fakeCaller{reply: func(call) (json.RawMessage, error) {
		return nil, &rpc.RemoteError{Module: "nova.exception", Class: "ComputeHostNotFound"}
	}}
	cn, err := New(f, time.Second, nil).ComputeNodeByHostAndNodename(context.Background(), "h", "n")
	if err != nil || cn != nil {
		t.Fatalf("cn=%v err=%v", cn, err)
	}
	if got := f.calls[0].args["object_versions"].(map[string]string)["ComputeNode"]; got != "1.19" {
		t.Errorf("manifest ComputeNode = %q", got)
	}
}

func TestPingChecksEcho(t *testing.T) {
	f := &fakeCaller{reply: func(c call) (json.RawMessage, error) {
		if c.target.Namespace != "baseapi" || c.args["arg"] != pingArg {
			t.Errorf("ping call = %+v", c)
		}
		return json.RawMessage(`{"service": "conductor", "arg": "1.21 GigaWatts"}`), nil
	}}
	if err := New(f, time.Second, nil).Ping(context.Background(), time.Second); err != nil {
		t.Fatal(err)
	}
}

type fakeCaster struct {
	fakeCaller
	target rpc.Target
	method string
	args   map[string]any
}

func (f *fakeCaster) Cast(_ context.Context, t rpc.Target, method string, args map[string]any, _ *rpc.RequestContext) error {
	f.target, f.method, f.args = t, method, args
	return nil
}

func TestBuildInstancesCast(t *testing.T) {
	f := &fakeCaster{}
	args := map[string]json.RawMessage{"image": json.RawMessage(`{"id": "i1"}`), "filter_properties": json.RawMessage(`{"retry": {"num_attempts": 1}}`),
		"host_list": json.RawMessage(`[{"nova_object.name": "Selection"}]`), "node": json.RawMessage(`"n1"`)}
	if err := New(f, time.Second, nil).BuildInstances(context.Background(), nil, "inst", args); err != nil {
		t.Fatal(err)
	}
	if f.method != "build_instances" || f.target.Namespace != "compute_task" || f.target.Version != "1.19" {
		t.Errorf("cast %s to %+v", f.method, f.target)
	}
	b, _ := json.Marshal(f.args)
	var got map[string]json.RawMessage
	_ = json.Unmarshal(b, &got)
	if string(got["host_lists"]) != `[[{"nova_object.name":"Selection"}]]` || string(got["instances"]) != `["inst"]` {
		t.Errorf("kwargs = %s", b)
	}
	if _, ok := got["node"]; ok {
		t.Errorf("build_instances does not take node: %s", b)
	}
}

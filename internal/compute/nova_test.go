package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/lxc-agent/lxc-agent/internal/neutron"
	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// fakeNova records what the manager tells conductor, and plays nova's
// expected_task_state check against the task state it holds.
type fakeNova struct {
	mu     sync.Mutex
	task   any // nova's current task_state (nil = None)
	log    []string
	faults []string
	allocs []string
}

func (f *fakeNova) SaveInstance(_ context.Context, _ *rpc.RequestContext, inst *novaobj.Object, expected []any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if expected != nil {
		ok := false
		for _, e := range expected {
			if e == f.task {
				ok = true
			}
		}
		if !ok {
			return &rpc.RemoteError{Module: "nova.exception", Class: "UnexpectedTaskStateError",
				Message: fmt.Sprintf("expected %v, actual %v", expected, f.task)}
		}
	}
	var parts []string
	for _, c := range inst.Changes {
		parts = append(parts, c+"="+string(inst.Data[c]))
		if c == "task_state" {
			var ts *string
			_ = json.Unmarshal(inst.Data[c], &ts)
			if ts == nil {
				f.task = nil
			} else {
				f.task = *ts
			}
		}
	}
	sort.Strings(parts)
	f.log = append(f.log, fmt.Sprintf("save%v %s", expected, strings.Join(parts, " ")))
	return nil
}

func (f *fakeNova) DestroyInstance(context.Context, *rpc.RequestContext, *novaobj.Object) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, "destroy")
	return nil
}

func (f *fakeNova) EventStart(_ context.Context, _ *rpc.RequestContext, _, event, host string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, "start "+event+" "+host)
	return nil
}

func (f *fakeNova) EventFinish(_ context.Context, _ *rpc.RequestContext, _, event, excVal, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, "finish "+event+" "+excVal)
	return nil
}

func (f *fakeNova) AddFault(_ context.Context, _ *rpc.RequestContext, _, _ string, code int, msg, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, fmt.Sprintf("%d %s", code, msg))
	return nil
}

func (f *fakeNova) SaveInfoCache(_ context.Context, _ *rpc.RequestContext, _ string, nw novaobj.NetworkInfo) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, fmt.Sprintf("info_cache %d vifs", len(nw)))
	return nil
}

func (f *fakeNova) BuildInstances(_ context.Context, _ *rpc.RequestContext, instance any, args map[string]json.RawMessage) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, fmt.Sprintf("build_instances filter_properties=%s", args["filter_properties"]))
	return nil
}

func (f *fakeNova) DeleteAllocations(_ context.Context, consumer string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.allocs = append(f.allocs, consumer)
	return nil
}

func newNovaHarness(t *testing.T) (*harness, *fakeNova) {
	t.Helper()
	h := newHarness(t)
	fn := &fakeNova{task: "scheduling"}
	m, err := New(Config{Host: "h1", Node: "node1", InstancesPath: filepath.Join(h.root, "instances2"), FaultsDir: filepath.Join(h.root, "faults2")},
		Deps{Driver: h.drv, Images: h.img, Rootfs: h.fs, Net: h.net, Nova: fn, Allocations: fn})
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	return h, fn
}

func TestBuildRecordsNovaStates(t *testing.T) {
	h, fn := newNovaHarness(t)
	if _, err := h.call(t, "build_and_run_instance", map[string]any{
		"instance": instancePrimitive(t, testUUID, 0, oneVIF), "image": map[string]string{"id": "img1"}, "node": "node1"}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"start compute__do_build_and_run_instance h1",
		`save[scheduling <nil>] task_state=null vm_state="building"`,
		`save[] host="h1" launched_on="h1" node="node1"`,
		`save[<nil>] task_state="networking"`,
		`save[] task_state="block_device_mapping"`,
		`save[block_device_mapping] task_state="spawning"`,
		`save[spawning] launched_at=`,
		"finish compute__do_build_and_run_instance ",
	}
	checkLog(t, fn.log, want)

	// Deleting: nova's API has set task_state deleting.
	fn.task, fn.log = "deleting", nil
	if _, err := h.call(t, "terminate_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 1, "")}); err != nil {
		t.Fatal(err)
	}
	checkLog(t, fn.log, []string{
		"start compute_terminate_instance h1",
		`save[] power_state=0 task_state=null terminated_at=`,
		"destroy",
		"finish compute_terminate_instance ",
	})
	if len(fn.allocs) != 1 || fn.allocs[0] != testUUID {
		t.Errorf("allocations deleted for %v", fn.allocs)
	}
}

func TestBuildNotStartedWhenNovaMovedOn(t *testing.T) {
	h, fn := newNovaHarness(t)
	fn.task = "deleting" // deleted before the build reached the host
	if _, err := h.call(t, "build_and_run_instance", map[string]any{
		"instance": instancePrimitive(t, testUUID, 0, ""), "image": map[string]string{"id": "img1"}}); err != nil {
		t.Fatal(err)
	}
	if calls := h.drv.Calls(); len(calls) != 0 {
		t.Errorf("driver used for an instance nova no longer builds: %v", calls)
	}
}

func TestFailedBuildRecordsFaultAndError(t *testing.T) {
	h, fn := newNovaHarness(t)
	h.img.err = fmt.Errorf("%w: gone", ErrImageNotFound)
	_, err := h.call(t, "build_and_run_instance", map[string]any{
		"instance": instancePrimitive(t, testUUID, 0, ""), "image": map[string]string{"id": "img1"}})
	if err == nil {
		t.Fatal("build succeeded")
	}
	last := fn.log[len(fn.log)-2]
	if last != `save[] host=null node=null task_state=null vm_state="error"` {
		t.Errorf("last save = %s\nlog: %v", last, fn.log)
	}
	if len(fn.faults) != 1 || !strings.HasPrefix(fn.faults[0], "404 Image img1 could not be found") {
		t.Errorf("faults = %v", fn.faults)
	}
	if f := fn.log[len(fn.log)-1]; !strings.HasPrefix(f, "finish compute__do_build_and_run_instance Image img1") {
		t.Errorf("event finish = %s", f)
	}
}

func TestLifecycleRecordsNovaStates(t *testing.T) {
	h, fn := newNovaHarness(t)
	if _, err := h.call(t, "build_and_run_instance", map[string]any{
		"instance": instancePrimitive(t, testUUID, 0, ""), "image": map[string]string{"id": "img1"}}); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		method, task string
		args         map[string]any
		want         string
	}{
		{"stop_instance", "powering-off", map[string]any{"clean_shutdown": false}, `save[powering-off] power_state=4 task_state=null vm_state="stopped"`},
		{"start_instance", "powering-on", nil, `save[powering-on] power_state=1 task_state=null vm_state="active"`},
		{"pause_instance", "pausing", nil, `save[pausing] power_state=3 task_state=null vm_state="paused"`},
		{"unpause_instance", "unpausing", nil, `save[unpausing] power_state=1 task_state=null vm_state="active"`},
		{"reboot_instance", "rebooting_hard", map[string]any{"reboot_type": "HARD"}, `save[] power_state=1 task_state=null vm_state="active"`},
	}
	for _, s := range steps {
		fn.task, fn.log = s.task, nil
		args := map[string]any{"instance": instancePrimitive(t, testUUID, 1, "")}
		for k, v := range s.args {
			args[k] = v
		}
		if _, err := h.call(t, s.method, args); err != nil {
			t.Fatalf("%s: %v", s.method, err)
		}
		if got := fn.log[len(fn.log)-2]; got != s.want {
			t.Errorf("%s: last save %s, want %s\nlog: %v", s.method, got, s.want, fn.log)
		}
		if fn.task != nil {
			t.Errorf("%s left task_state %v", s.method, fn.task)
		}
	}
	// An op nova did not ask for (wrong task state) fails and is recorded.
	fn.task, fn.log = "deleting", nil
	if _, err := h.call(t, "pause_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 1, "")}); err == nil {
		t.Error("pause with task_state deleting succeeded")
	}
}

func checkLog(t *testing.T, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("nova calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("call %d = %s, want %s", i, got[i], want[i])
		}
	}
}

func TestFailedBuildRescheduledWhenRetriesRemain(t *testing.T) {
	h, fn := newNovaHarness(t)
	h.fs.err = errors.New("mount: no loop device free")
	if _, err := h.call(t, "build_and_run_instance", map[string]any{
		"instance": instancePrimitive(t, testUUID, 0, ""), "image": map[string]string{"id": "img1"},
		"filter_properties": map[string]any{"retry": map[string]any{"num_attempts": 1, "hosts": [][]string{{"h1", "node1"}}}}}); err != nil {
		t.Fatalf("a rescheduled build is not an error: %v", err)
	}
	n := len(fn.log)
	if fn.log[n-3] != `save[] host=null node=null task_state="scheduling"` || !strings.HasPrefix(fn.log[n-2], `build_instances filter_properties={"retry"`) ||
		fn.log[n-1] != "finish compute__do_build_and_run_instance " {
		t.Errorf("nova calls: %v", fn.log)
	}
	if len(fn.allocs) != 1 || len(fn.faults) != 0 {
		t.Errorf("allocations deleted %v, faults %v", fn.allocs, fn.faults)
	}
	if _, ok := h.m.store.Get(testUUID); ok {
		t.Error("the rescheduled instance is still recorded here")
	}
	// An image the host cannot use is not the host's fault: no reschedule.
	h2, fn2 := newNovaHarness(t)
	h2.img.err = fmt.Errorf("%w: bad format", ErrImageUnacceptable)
	if _, err := h2.call(t, "build_and_run_instance", map[string]any{
		"instance": instancePrimitive(t, testUUID, 0, ""), "image": map[string]string{"id": "img1"},
		"filter_properties": map[string]any{"retry": map[string]any{"num_attempts": 1}}}); err == nil {
		t.Fatal("unacceptable image: build succeeded")
	}
	for _, l := range fn2.log {
		if strings.HasPrefix(l, "build_instances") {
			t.Errorf("rescheduled an unacceptable image: %v", fn2.log)
		}
	}
}

type fakeNetworks struct {
	nw       novaobj.NetworkInfo
	refreshs int
}

func (f *fakeNetworks) Allocate(context.Context, neutron.Instance, string, []neutron.Request) (novaobj.NetworkInfo, []string, error) {
	return f.nw, nil, nil
}

func (f *fakeNetworks) NetworkInfo(context.Context, string, []string, []string) (novaobj.NetworkInfo, error) {
	f.refreshs++
	return f.nw, nil
}

func (f *fakeNetworks) Deallocate(context.Context, string, novaobj.NetworkInfo) error { return nil }

func (f *fakeNetworks) DeallocatePort(context.Context, string, bool) error { return nil }

func TestExternalInstanceEvents(t *testing.T) {
	h, fn := newNovaHarness(t)
	nets := &fakeNetworks{}
	h.m.networks = nets
	if _, err := h.call(t, "build_and_run_instance", map[string]any{
		"instance": instancePrimitive(t, testUUID, 0, oneVIF), "image": map[string]string{"id": "img1"}}); err != nil {
		t.Fatal(err)
	}
	if len(h.net.plugged) != 1 {
		t.Fatalf("plugged %v", h.net.plugged)
	}
	event := func(name, tag string) *novaobj.Object {
		e := novaobj.New("InstanceExternalEvent", "1.5")
		e.Set("instance_uuid", testUUID)
		e.Set("name", name)
		e.Set("tag", tag)
		e.Set("status", "completed")
		return e
	}
	fn.log = nil
	if _, err := h.call(t, "external_instance_event", map[string]any{
		"instances": []json.RawMessage{instancePrimitive(t, testUUID, 1, oneVIF)},
		"events": []*novaobj.Object{event("network-vif-plugged", "3f5c6b2a-9d1e-4c4b-8a7f-1234567890ab"),
			event("network-changed", "3f5c6b2a-9d1e-4c4b-8a7f-1234567890ab"),
			event("network-vif-deleted", "3f5c6b2a-9d1e-4c4b-8a7f-1234567890ab")}}); err != nil {
		t.Fatal(err)
	}
	if nets.refreshs != 1 {
		t.Errorf("network-changed refreshed %d times", nets.refreshs)
	}
	if len(h.net.plugged) != 0 {
		t.Errorf("network-vif-deleted left the tap plugged: %v", h.net.plugged)
	}
	if rec, _ := h.m.store.Get(testUUID); len(rec.VIFs) != 0 {
		t.Errorf("record keeps the deleted port: %+v", rec.VIFs)
	}
	if fmt.Sprint(fn.log) != "[info_cache 0 vifs info_cache 0 vifs]" {
		t.Errorf("nova calls: %v", fn.log)
	}
}

package conductor

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// Object versions of nova 26.2.2 (Zed), the newest a Zed conductor knows;
// the manifests are oslo's obj_tree_get_versions of each class.
const (
	ServiceVersion       = "1.22"
	ComputeNodeVersion   = "1.19"
	InstanceVersion      = "2.7"
	InstanceFaultVersion = "1.2"
	// ServiceRPCVersion is nova 26's SERVICE_VERSION: the Service record's
	// version, which the cloud uses to cap compute RPC.
	ServiceRPCVersion = 64
)

var (
	computeNodeTree = map[string]string{"ComputeNode": "1.19", "HVSpec": "1.2", "PciDevicePoolList": "1.1", "PciDevicePool": "1.1"}
	serviceTree     = map[string]string{"Service": "1.22", "ComputeNode": "1.19", "HVSpec": "1.2", "PciDevicePoolList": "1.1", "PciDevicePool": "1.1"}
	instanceTree    = map[string]string{"Instance": "2.7", "ServiceList": "1.19", "Service": "1.22", "ComputeNode": "1.19",
		"HVSpec": "1.2", "PciDevicePoolList": "1.1", "PciDevicePool": "1.1", "InstanceInfoCache": "1.5",
		"SecurityGroupList": "1.1", "SecurityGroup": "1.2", "InstanceFault": "1.2", "PciDeviceList": "1.3",
		"PciDevice": "1.7", "InstanceNUMATopology": "1.3", "InstanceNUMACell": "1.6", "VirtCPUTopology": "1.0",
		"InstancePCIRequests": "1.1", "InstancePCIRequest": "1.4", "InstanceDeviceMetadata": "1.0",
		"DeviceMetadata": "1.0", "DeviceBus": "1.0", "TagList": "1.1", "Tag": "1.1", "Flavor": "1.2",
		"VirtCPUModel": "1.0", "VirtCPUFeature": "1.0", "EC2Ids": "1.0", "MigrationContext": "1.2",
		"ResourceList": "1.0", "Resource": "1.0", "ResourceMetadata": "1.0", "KeyPairList": "1.3",
		"KeyPair": "1.4", "TrustedCerts": "1.0"}
	instanceListTree = withKey(instanceTree, "InstanceList", "2.6")
	actionEventTree  = map[string]string{"InstanceActionEvent": "1.4"}
)

func withKey(m map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for a, b := range m {
		out[a] = b
	}
	out[k] = v
	return out
}

// Time formats t as oslo's DateTimeField primitive.
func Time(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

func decodeObject(raw json.RawMessage, name string) (*novaobj.Object, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	return novaobj.Decode(raw, name)
}

// ServiceByHostAndBinary is Service.get_by_host_and_binary; nil when absent.
func (a *API) ServiceByHostAndBinary(ctx context.Context, host, binary string) (*novaobj.Object, error) {
	raw, err := a.ClassAction(ctx, rpc.AdminContext(), "Service", "get_by_host_and_binary", serviceTree, []any{host, binary}, nil)
	if err != nil {
		return nil, err
	}
	return decodeObject(raw, "Service")
}

// MinimumComputeVersion is Service.get_minimum_version(ctx, 'nova-compute').
func (a *API) MinimumComputeVersion(ctx context.Context) (int, error) {
	raw, err := a.ClassAction(ctx, rpc.AdminContext(), "Service", "get_minimum_version", serviceTree, []any{"nova-compute"}, nil)
	if err != nil {
		return 0, err
	}
	var v int
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, fmt.Errorf("minimum nova-compute version: %w: %s", ErrBadReply, raw)
	}
	return v, nil
}

// Create is a remotable create() (Service, ComputeNode, InstanceFault).
func (a *API) Create(ctx context.Context, rctx *rpc.RequestContext, obj *novaobj.Object) error {
	_, err := a.ObjectAction(ctx, rctx, obj, "create", nil, nil)
	return err
}

// Save is a plain remotable save() with the object's changes.
func (a *API) Save(ctx context.Context, rctx *rpc.RequestContext, obj *novaobj.Object) error {
	_, err := a.ObjectAction(ctx, rctx, obj, "save", nil, nil)
	return err
}

// ComputeNodeByHostAndNodename is ComputeNode.get_by_host_and_nodename; nil
// when conductor answers ComputeHostNotFound.
func (a *API) ComputeNodeByHostAndNodename(ctx context.Context, host, node string) (*novaobj.Object, error) {
	raw, err := a.ClassAction(ctx, rpc.AdminContext(), "ComputeNode", "get_by_host_and_nodename", computeNodeTree, []any{host, node}, nil)
	if RemoteClass(err, "ComputeHostNotFound", "ComputeHostNotFound_Remote") {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return decodeObject(raw, "ComputeNode")
}

// ExpectAny is an expected_task_state that checks nothing.
var ExpectAny []any

// SaveInstance is Instance.save(expected_task_state=expected): expected nil
// saves unconditionally; otherwise each element is a task state or nil (for
// None). Conductor answers UnexpectedTaskStateError (or its Deleting
// variant) when the instance's task state is not one of them.
func (a *API) SaveInstance(ctx context.Context, rctx *rpc.RequestContext, inst *novaobj.Object, expected []any) error {
	kwargs := map[string]any{}
	if expected != nil {
		kwargs["expected_task_state"] = expected
	}
	_, err := a.ObjectAction(ctx, rctx, inst, "save", nil, kwargs)
	return err
}

// DestroyInstance is Instance.destroy(): the instance row is marked deleted.
func (a *API) DestroyInstance(ctx context.Context, rctx *rpc.RequestContext, inst *novaobj.Object) error {
	_, err := a.ObjectAction(ctx, rctx, inst, "destroy", nil, nil)
	return err
}

// InstancesByHost is InstanceList.get_by_host.
func (a *API) InstancesByHost(ctx context.Context, host string, expectedAttrs []string) ([]*novaobj.Object, error) {
	if expectedAttrs == nil {
		expectedAttrs = []string{}
	}
	raw, err := a.ClassAction(ctx, rpc.AdminContext(), "InstanceList", "get_by_host", instanceListTree,
		[]any{host}, map[string]any{"expected_attrs": expectedAttrs})
	if err != nil {
		return nil, err
	}
	list, err := decodeObject(raw, "InstanceList")
	if err != nil {
		return nil, err
	}
	return novaobj.List(list)
}

// EventStart is InstanceActionEvent.event_start(want_result=False).
func (a *API) EventStart(ctx context.Context, rctx *rpc.RequestContext, uuid, event, host string) error {
	_, err := a.ClassAction(ctx, rctx, "InstanceActionEvent", "event_start", actionEventTree,
		[]any{uuid, event}, map[string]any{"want_result": false, "host": host})
	return err
}

// EventFinish is InstanceActionEvent.event_finish_with_failure: excVal is the
// failure's message ("" on success), excTB its details.
func (a *API) EventFinish(ctx context.Context, rctx *rpc.RequestContext, uuid, event, excVal, excTB string) error {
	kwargs := map[string]any{"exc_val": nil, "exc_tb": nil, "want_result": false}
	if excVal != "" {
		kwargs["exc_val"] = excVal
		kwargs["exc_tb"] = excTB
	}
	_, err := a.ClassAction(ctx, rctx, "InstanceActionEvent", "event_finish_with_failure", actionEventTree,
		[]any{uuid, event}, kwargs)
	return err
}

// AddFault is compute_utils.add_instance_fault_from_exc: an InstanceFault
// with the failure's code and message; details only for code 500.
func (a *API) AddFault(ctx context.Context, rctx *rpc.RequestContext, uuid, host string, code int, message, details string) error {
	if code == 0 {
		code = 500
	}
	if len(message) > 255 {
		message = message[:255]
	}
	if code != 500 {
		details = ""
	}
	f := novaobj.New("InstanceFault", InstanceFaultVersion)
	f.Set("instance_uuid", uuid)
	f.Set("host", host)
	f.Set("code", code)
	f.Set("message", message)
	f.Set("details", details)
	return a.Create(ctx, rctx, f)
}

// SaveInfoCache is InstanceInfoCache.save() with a new network_info (nova
// stores the model as a JSON string).
func (a *API) SaveInfoCache(ctx context.Context, rctx *rpc.RequestContext, uuid string, nw novaobj.NetworkInfo) error {
	b, err := json.Marshal(nw)
	if err != nil {
		return err
	}
	ic := novaobj.New("InstanceInfoCache", "1.5")
	ic.Set("instance_uuid", uuid)
	ic.Set("network_info", string(b))
	ic.Changes = []string{"network_info"}
	_, err = a.ObjectAction(ctx, rctx, ic, "save", nil, nil)
	return err
}

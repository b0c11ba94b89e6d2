package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/conductor"
	"github.com/lxc-agent/lxc-agent/internal/neutron"
	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// Nova is nova's control plane as nova-compute uses it: instance state,
// action events and faults through conductor. *conductor.API implements it.
// A manager without one (standalone mode) keeps its state only locally.
type Nova interface {
	SaveInstance(ctx context.Context, rctx *rpc.RequestContext, inst *novaobj.Object, expected []any) error
	DestroyInstance(ctx context.Context, rctx *rpc.RequestContext, inst *novaobj.Object) error
	EventStart(ctx context.Context, rctx *rpc.RequestContext, uuid, event, host string) error
	EventFinish(ctx context.Context, rctx *rpc.RequestContext, uuid, event, excVal, excTB string) error
	AddFault(ctx context.Context, rctx *rpc.RequestContext, uuid, host string, code int, message, details string) error
	// SaveInfoCache records the instance's network_info.
	SaveInfoCache(ctx context.Context, rctx *rpc.RequestContext, uuid string, nw novaobj.NetworkInfo) error
	// BuildInstances hands a failed build back to conductor to reschedule.
	BuildInstances(ctx context.Context, rctx *rpc.RequestContext, instance any, args map[string]json.RawMessage) error
}

// Networks is Neutron as nova-compute uses it (*neutron.Client); nil when
// no [neutron] is configured: then network_info comes from nova or from
// requested_networks with the agent's defaults.
type Networks interface {
	Allocate(ctx context.Context, inst neutron.Instance, host string, reqs []neutron.Request) (novaobj.NetworkInfo, []string, error)
	NetworkInfo(ctx context.Context, uuid string, order, created []string) (novaobj.NetworkInfo, error)
	Deallocate(ctx context.Context, uuid string, nw novaobj.NetworkInfo) error
	DeallocatePort(ctx context.Context, portID string, preserve bool) error
}

// Allocations removes an instance's placement allocations.
type Allocations interface {
	DeleteAllocations(ctx context.Context, consumer string) error
}

// nova task states (nova/compute/task_states.py) the agent expects or sets.
const (
	taskScheduling         = "scheduling"
	taskNetworking         = "networking"
	taskBlockDeviceMapping = "block_device_mapping"
	taskSpawning           = "spawning"
	taskPoweringOff        = "powering-off"
	taskPoweringOn         = "powering-on"
	taskRebooting          = "rebooting"
	taskRebootPending      = "reboot_pending"
	taskRebootStarted      = "reboot_started"
	taskRebootingHard      = "rebooting_hard"
	taskRebootPendingHard  = "reboot_pending_hard"
	taskRebootStartedHard  = "reboot_started_hard"
	taskPausing            = "pausing"
	taskUnpausing          = "unpausing"
	taskSuspending         = "suspending"
	taskResuming           = "resuming"
	taskRebuilding         = "rebuilding"
	taskRebuildBDM         = "rebuild_block_device_mapping"
	taskRebuildSpawning    = "rebuild_spawning"
	taskImageSnapshotPend  = "image_snapshot_pending"
	vmDeleted              = "deleted"
	powerNoState           = 0
	eventDoBuildAndRun     = "compute__do_build_and_run_instance"
)

// expect builds an expected_task_state list; None is written as nil.
func expect(states ...any) []any { return states }

// novaSave sets fields on the instance nova sent and saves it through
// conductor with expected_task_state; without conductor it does nothing.
func (m *Manager) novaSave(ctx context.Context, req *rpc.Request, inst *novaobj.Instance, expected []any, fields map[string]any) error {
	if m.nova == nil || inst == nil || inst.Obj == nil {
		return nil
	}
	inst.Obj.Changes = nil
	for k, v := range fields {
		inst.Obj.Set(k, v)
	}
	if err := m.nova.SaveInstance(ctx, req.Context, inst.Obj, expected); err != nil {
		return fmt.Errorf("save instance %s: %w", inst.UUID, err)
	}
	return nil
}

// novaPowerState is what nova records as the instance's power_state
// (driver power states are nova's ints; a driver that cannot tell gives
// NOSTATE, 0).
func (m *Manager) novaPowerState(ctx context.Context, uuid string) int {
	return int(m.powerState(ctx, uuid))
}

// tracked wraps an instance RPC the way nova's decorators do:
// wrap_instance_event (InstanceActionEvent start/finish, event
// "compute_<method>"), wrap_instance_fault (an InstanceFault on failure) and
// reverts_task_state (task_state back to None on failure).
//
// It also sends nova's notifications of the method (methodNotices) when a
// notifier is configured.
func (m *Manager) tracked(event string, h rpc.Handler) rpc.Handler {
	return func(ctx context.Context, req *rpc.Request) (any, error) {
		if m.nova == nil && m.notifier == nil {
			return h(ctx, req)
		}
		inst, err := instanceArg(req)
		if err != nil {
			return h(ctx, req)
		}
		ctx = context.WithValue(ctx, instanceKey{}, inst)
		notes := methodNotices[req.Method]
		m.notify(ctx, req, inst, notes.before, nil)
		if m.nova == nil {
			res, herr := h(ctx, req)
			m.notifyAfter(ctx, req, inst, notes, herr)
			return res, herr
		}
		log := m.logFor(req, inst.UUID)
		if err := m.nova.EventStart(ctx, req.Context, inst.UUID, event, m.cfg.Host); err != nil {
			log.Warn("cannot record instance action event start", "event", event, "error", err)
		}
		res, herr := h(ctx, req)
		m.notifyAfter(ctx, req, inst, notes, herr)
		excVal, excTB := "", ""
		if herr != nil {
			code, msg := faultOf(herr)
			excVal, excTB = msg, herr.Error()
			if !conductor.RemoteClass(herr, "InstanceNotFound") {
				if err := m.nova.AddFault(ctx, req.Context, inst.UUID, m.cfg.Host, code, msg, herr.Error()); err != nil {
					log.Warn("cannot record instance fault", "error", err)
				}
			}
			if !conductor.RemoteClass(herr, "UnexpectedTaskStateError", "UnexpectedDeletingTaskStateError", "InstanceNotFound") &&
				event != eventDoBuildAndRun {
				if err := m.novaSave(ctx, req, inst, nil, map[string]any{"task_state": nil}); err != nil {
					log.Warn("cannot revert task state", "error", err)
				}
			}
		}
		if err := m.nova.EventFinish(ctx, req.Context, inst.UUID, event, excVal, excTB); err != nil {
			log.Warn("cannot record instance action event finish", "event", event, "error", err)
		}
		return res, herr
	}
}

// faultOf is nova's exception_to_dict: a nova exception's code and message,
// else 500 and the error text.
func faultOf(err error) (int, string) {
	var ex *rpc.Exception
	if errors.As(err, &ex) {
		code := 500
		switch c := ex.Kwargs["code"].(type) {
		case int:
			code = c
		case float64:
			code = int(c)
		}
		return code, ex.Msg
	}
	var re *rpc.RemoteError
	if errors.As(err, &re) {
		return 500, re.Message
	}
	return 500, err.Error()
}

// buildStarted is the first part of _do_build_and_run_instance and of the
// resource claim: vm building, task None (expected scheduling or None), then
// host/node, then networking, block_device_mapping and spawning. done is
// false when nova says the build must not go on (the instance is gone or
// in another task): then nothing is built, as nova-compute does.
func (m *Manager) buildStarted(ctx context.Context, req *rpc.Request, inst *novaobj.Instance, reqNets []novaobj.NetworkRequest) (done bool, err error) {
	if m.nova == nil {
		return true, nil
	}
	err = m.novaSave(ctx, req, inst, expect(taskScheduling, nil), map[string]any{"vm_state": StateBuilding, "task_state": nil})
	if conductor.RemoteClass(err, "InstanceNotFound", "UnexpectedTaskStateError", "UnexpectedDeletingTaskStateError") {
		m.logFor(req, inst.UUID).Info("instance gone or busy before build; not building", "error", err)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	node := m.cfg.Node
	var argNode string
	if ok, _ := req.Arg("node", &argNode); ok && argNode != "" {
		node = argNode
	}
	if err := m.novaSave(ctx, req, inst, nil, map[string]any{"host": m.cfg.Host, "node": node, "launched_on": m.cfg.Host}); err != nil {
		return false, err
	}
	if err := m.novaSave(ctx, req, inst, expect(nil), map[string]any{"task_state": taskNetworking}); err != nil {
		return false, err
	}
	if err := m.allocateNetworks(ctx, req, inst, reqNets); err != nil {
		return false, err
	}
	if err := m.novaSave(ctx, req, inst, nil, map[string]any{"task_state": taskBlockDeviceMapping}); err != nil {
		return false, err
	}
	if err := m.novaSave(ctx, req, inst, expect(taskBlockDeviceMapping), map[string]any{"task_state": taskSpawning}); err != nil {
		return false, err
	}
	return true, nil
}

// allocateNetworks is nova's _build_networks_for_instance with Neutron:
// ports created or bound to this host, network_info built from them and
// saved in the instance's info cache.
func (m *Manager) allocateNetworks(ctx context.Context, req *rpc.Request, inst *novaobj.Instance, reqNets []novaobj.NetworkRequest) error {
	if m.networks == nil || len(reqNets) == 0 {
		return nil
	}
	rs := make([]neutron.Request, 0, len(reqNets))
	for _, r := range reqNets {
		rs = append(rs, neutron.Request{NetworkID: r.NetworkID, PortID: r.PortID, Address: r.Address})
	}
	project := inst.Obj.String("project_id")
	if project == "" {
		project = req.Context.ProjectID
	}
	nw, _, err := m.networks.Allocate(ctx, neutron.Instance{UUID: inst.UUID, ProjectID: project, AZ: inst.Obj.String("availability_zone")}, m.cfg.Host, rs)
	if err != nil {
		return buildAbortedException(inst.UUID, "Failed to allocate the network(s), not rescheduling.", err)
	}
	inst.NetworkInfo = nw
	if err := m.nova.SaveInfoCache(ctx, req.Context, inst.UUID, nw); err != nil {
		return fmt.Errorf("save network info: %w", err)
	}
	m.logFor(req, inst.UUID).Info("ports allocated", "ports", len(nw))
	return nil
}

// deallocateNetworks is _cleanup_allocated_networks / deallocate_for_instance.
func (m *Manager) deallocateNetworks(ctx context.Context, req *rpc.Request, inst *novaobj.Instance) {
	if m.networks == nil {
		return
	}
	if err := m.networks.Deallocate(ctx, inst.UUID, inst.NetworkInfo); err != nil {
		m.logFor(req, inst.UUID).Warn("cannot release the instance's ports", "error", err)
	}
}

// buildFinished records a built instance: active, running, launched_at.
func (m *Manager) buildFinished(ctx context.Context, req *rpc.Request, inst *novaobj.Instance, launched time.Time) error {
	return m.novaSave(ctx, req, inst, expect(taskSpawning), map[string]any{
		"power_state": m.novaPowerState(ctx, inst.UUID), "vm_state": StateActive, "task_state": nil,
		"launched_at": conductor.Time(launched)})
}

// buildFailed is nova's handling of a build that cannot go on: host and node
// cleared, vm error, task None.
func (m *Manager) buildFailed(ctx context.Context, req *rpc.Request, inst *novaobj.Instance) error {
	m.deallocateNetworks(ctx, req, inst)
	return m.novaSave(ctx, req, inst, nil, map[string]any{"host": nil, "node": nil, "vm_state": StateError, "task_state": nil})
}

// deleted is the end of nova's _delete_instance: the instance saved as
// deleted, its allocations removed, its row destroyed.
func (m *Manager) deleted(ctx context.Context, req *rpc.Request, inst *novaobj.Instance) error {
	if m.nova == nil {
		return nil
	}
	err := m.novaSave(ctx, req, inst, nil, map[string]any{"vm_state": vmDeleted, "task_state": nil,
		"power_state": powerNoState, "terminated_at": conductor.Time(time.Now())})
	if conductor.RemoteClass(err, "InstanceNotFound") {
		return nil
	}
	if err != nil {
		return err
	}
	m.deallocateNetworks(ctx, req, inst)
	if m.alloc != nil {
		if err := m.alloc.DeleteAllocations(ctx, inst.UUID); err != nil {
			m.logFor(req, inst.UUID).Warn("cannot delete placement allocations", "error", err)
		}
	}
	err = m.nova.DestroyInstance(ctx, req.Context, inst.Obj)
	if conductor.RemoteClass(err, "InstanceNotFound", "ObjectActionError") {
		return nil
	}
	return err
}

// Usage sums what the host's instances claim (error and building records
// excluded from running_vms, included in claims like nova's tracker).
func (m *Manager) Usage() (vcpus, memoryMB, diskGB, running int) {
	for _, r := range m.store.List() {
		if r.VMState == StateError {
			continue
		}
		vcpus += r.VCPUs
		memoryMB += r.MemoryMB
		diskGB += r.RootGB
		if r.VMState != StateBuilding {
			running++
		}
	}
	return vcpus, memoryMB, diskGB, running
}

// NovaPowerState is an instance's power state as nova's int; ok is false
// when the agent has no such instance.
func (m *Manager) NovaPowerState(ctx context.Context, uuid string) (int, bool) {
	if _, known := m.store.Get(uuid); !known {
		return powerNoState, false
	}
	return m.novaPowerState(ctx, uuid), true
}

// abortClasses are the failures nova-compute turns into BuildAbortException
// (no reschedule): the image or the request is at fault, not the host.
var abortClasses = map[string]bool{"BuildAbortException": true, "ImageNotActive": true, "ImageUnacceptable": true,
	"InvalidDiskInfo": true, "InvalidDiskFormat": true, "InvalidInput": true}

// reschedule is nova's RescheduledException path: when conductor sent retry
// information and the failure is the host's, the instance goes back to
// scheduling (host and node cleared, allocations removed) and conductor's
// build_instances tries an alternate host. It reports whether it did.
func (m *Manager) reschedule(ctx context.Context, req *rpc.Request, inst *novaobj.Instance, cause error) bool {
	if m.nova == nil {
		return false
	}
	var ex *rpc.Exception
	if errors.As(cause, &ex) && abortClasses[ex.Class] {
		return false
	}
	var fp struct {
		Retry *struct {
			NumAttempts int `json:"num_attempts"`
		} `json:"retry"`
	}
	if ok, err := req.Arg("filter_properties", &fp); err != nil || !ok || fp.Retry == nil {
		return false
	}
	log := m.logFor(req, inst.UUID)
	m.deallocateNetworks(ctx, req, inst)
	if err := m.novaSave(ctx, req, inst, nil, map[string]any{"host": nil, "node": nil, "task_state": taskScheduling}); err != nil {
		log.Error("cannot reschedule: save", "error", err)
		return false
	}
	if m.alloc != nil {
		if err := m.alloc.DeleteAllocations(ctx, inst.UUID); err != nil {
			log.Warn("cannot delete placement allocations before rescheduling", "error", err)
		}
	}
	if err := m.nova.BuildInstances(ctx, req.Context, inst.Obj, req.Args); err != nil {
		log.Error("cannot reschedule: build_instances", "error", err)
		return false
	}
	if err := m.store.Forget(inst.UUID); err != nil {
		log.Warn("cannot forget the rescheduled instance's record", "error", err)
	}
	log.Info("build failed here; rescheduled through conductor", "attempt", fp.Retry.NumAttempts, "error", cause)
	return true
}

func (m *Manager) notifyAfter(ctx context.Context, req *rpc.Request, inst *novaobj.Instance, n notices, err error) {
	switch {
	case err == nil:
		m.notify(ctx, req, inst, n.after, nil)
	case n.onError != "":
		m.notify(ctx, req, inst, []phaseStep{{n.onError, "error"}}, err)
	}
}

package compute

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/conductor"
	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/internal/shadow"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// nova vm_states the agent records beyond building/active/error.
const (
	StateStopped   = "stopped"
	StatePaused    = "paused"
	StateSuspended = "suspended"
)

// instanceOp loads the record of the instance argument; nova-compute answers
// InstanceNotFound when the hypervisor does not know the instance.
func (m *Manager) instanceOp(ctx context.Context, req *rpc.Request) (*novaobj.Instance, Record, error) {
	inst, err := instanceArgCtx(ctx, req)
	if err != nil {
		return nil, Record{}, err
	}
	rec, ok := m.store.Get(inst.UUID)
	if !ok || rec.VMState == StateError || rec.VMState == StateBuilding {
		return inst, rec, rpc.InstanceNotFound(inst.UUID, driver.ErrNotFound)
	}
	return inst, rec, nil
}

func (m *Manager) saveState(rec Record, vmState string) error {
	rec.VMState = vmState
	return m.store.Put(rec)
}

// shutdownTimeout is nova's _get_power_off_values: the image's
// os_shutdown_timeout, else [DEFAULT] shutdown_timeout; 0 without a clean
// shutdown.
func (m *Manager) shutdownTimeout(inst *novaobj.Instance, clean bool) time.Duration {
	if !clean {
		return 0
	}
	if v, ok := inst.SystemMetadata["image_os_shutdown_timeout"]; ok {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			return time.Duration(n) * time.Second
		}
	}
	if m.cfg.ShutdownTimeout > 0 {
		return m.cfg.ShutdownTimeout
	}
	return 60 * time.Second
}

// ensureReady brings back what a host reboot removes before a container can
// start again: the rootfs mount and the VIF plumbing. Fetch (a cache hit)
// and Prepare (which keeps a mounted rootfs as it is) are idempotent, so
// they simply run again.
func (m *Manager) ensureReady(ctx context.Context, rec *Record, token string) error {
	dir := m.store.Dir(rec.UUID)
	path, _, err := m.images.Fetch(ctx, rec.ImageID, token)
	if err != nil {
		return classifyImageError(rec.ImageID, err)
	}
	if _, err := m.rootfs.Prepare(ctx, rec.ImageID, path, dir); err != nil {
		return classifyImageError(rec.ImageID, fmt.Errorf("rootfs: %w", err))
	}
	for i := range rec.VIFs {
		peer, err := m.plug(ctx, rec.VIFs[i].plugSpec())
		if err != nil {
			return fmt.Errorf("plug port %s: %w", rec.VIFs[i].PortID, err)
		}
		rec.VIFs[i].Peer = peer
	}
	return nil
}

func (m *Manager) startInstance(ctx context.Context, req *rpc.Request) (any, error) {
	inst, rec, err := m.instanceOp(ctx, req)
	if err != nil {
		return nil, err
	}
	if err := m.powerOn(ctx, &rec, req.Context.AuthToken); err != nil {
		return nil, err
	}
	if err := m.saveState(rec, StateActive); err != nil {
		return nil, err
	}
	return nil, m.novaSave(ctx, req, inst, expect(taskPoweringOn), map[string]any{
		"power_state": m.novaPowerState(ctx, inst.UUID), "vm_state": StateActive, "task_state": nil})
}

func (m *Manager) powerOn(ctx context.Context, rec *Record, token string) error {
	info, err := m.drv.Info(ctx, rec.UUID)
	if err != nil {
		return err
	}
	switch info.State {
	case driver.Running:
		return nil
	case driver.Paused:
		return m.unpause(ctx, rec.UUID)
	}
	if err := m.ensureReady(ctx, rec, token); err != nil {
		return err
	}
	if err := m.drv.Start(ctx, rec.UUID); err != nil {
		return err
	}
	return m.configureGuest(ctx, rec.UUID, rec.VIFs)
}

func (m *Manager) stopInstance(ctx context.Context, req *rpc.Request) (any, error) {
	inst, rec, err := m.instanceOp(ctx, req)
	if err != nil {
		return nil, err
	}
	clean := true
	if _, err := req.Arg("clean_shutdown", &clean); err != nil {
		return nil, err
	}
	expected := expect(taskPoweringOff)
	if ps := m.powerState(ctx, rec.UUID); ps == driver.NoState || ps == driver.Shutdown || ps == driver.Crashed {
		expected = append(expected, nil) // already off: nova expects a racing None too
	}
	if err := m.powerOff(ctx, rec.UUID, m.shutdownTimeout(inst, clean)); err != nil {
		return nil, err
	}
	if err := m.saveState(rec, StateStopped); err != nil {
		return nil, err
	}
	return nil, m.novaSave(ctx, req, inst, expected, map[string]any{
		"power_state": m.novaPowerState(ctx, inst.UUID), "vm_state": StateStopped, "task_state": nil})
}

// powerOff stops the container; a frozen one is thawed first so that its init
// can see the halt signal.
func (m *Manager) powerOff(ctx context.Context, id string, timeout time.Duration) error {
	info, err := m.drv.Info(ctx, id)
	if err != nil {
		return err
	}
	if info.State == driver.Paused {
		if err := m.unpause(ctx, id); err != nil {
			return err
		}
	}
	return m.drv.Stop(ctx, id, timeout)
}

func (m *Manager) rebootInstance(ctx context.Context, req *rpc.Request) (any, error) {
	inst, rec, err := m.instanceOp(ctx, req)
	if err != nil {
		return nil, err
	}
	var kind string
	if _, err := req.Arg("reboot_type", &kind); err != nil {
		return nil, err
	}
	timeout := m.shutdownTimeout(inst, true)
	pending, started, expected := taskRebootPending, taskRebootStarted, expect(taskRebooting, taskRebootPending, taskRebootStarted)
	if strings.EqualFold(kind, "HARD") {
		timeout = 0 // kill and start
		pending, started, expected = taskRebootPendingHard, taskRebootStartedHard, expect(taskRebootingHard, taskRebootPendingHard, taskRebootStartedHard)
	}
	if err := m.novaSave(ctx, req, inst, expected, map[string]any{"task_state": pending,
		"power_state": m.novaPowerState(ctx, inst.UUID)}); err != nil {
		return nil, err
	}
	if err := m.novaSave(ctx, req, inst, expect(pending), map[string]any{"task_state": started}); err != nil {
		return nil, err
	}
	if err := m.powerOff(ctx, rec.UUID, timeout); err != nil {
		return nil, err
	}
	if err := m.powerOn(ctx, &rec, req.Context.AuthToken); err != nil {
		return nil, err
	}
	if err := m.saveState(rec, StateActive); err != nil {
		return nil, err
	}
	return nil, m.novaSave(ctx, req, inst, nil, map[string]any{
		"power_state": m.novaPowerState(ctx, inst.UUID), "vm_state": StateActive, "task_state": nil})
}

func (m *Manager) pauser() (driver.Pauser, error) {
	p, ok := m.drv.(driver.Pauser)
	if !ok {
		return nil, fmt.Errorf("pause: %w", driver.ErrUnsupported)
	}
	return p, nil
}

func (m *Manager) unpause(ctx context.Context, id string) error {
	p, err := m.pauser()
	if err != nil {
		return err
	}
	return p.Unpause(ctx, id)
}

// freeze handles pause and suspend: a container keeps its memory while
// frozen; suspend is a freeze that nova sees as SUSPENDED.
func (m *Manager) freeze(vmState string) rpc.Handler {
	return func(ctx context.Context, req *rpc.Request) (any, error) {
		inst, rec, err := m.instanceOp(ctx, req)
		if err != nil {
			return nil, err
		}
		p, err := m.pauser()
		if err != nil {
			return nil, err
		}
		oldVMState := rec.VMState
		if err := p.Pause(ctx, rec.UUID); err != nil {
			return nil, err
		}
		if err := m.saveState(rec, vmState); err != nil {
			return nil, err
		}
		fields := map[string]any{"power_state": m.novaPowerState(ctx, inst.UUID), "vm_state": vmState, "task_state": nil}
		expected := expect(taskPausing)
		if vmState == StateSuspended {
			expected = expect(taskSuspending)
			if inst.VMState != "" {
				oldVMState = inst.VMState
			}
			if inst.SystemMetadata != nil {
				inst.SystemMetadata["old_vm_state"] = oldVMState
				fields["system_metadata"] = inst.SystemMetadata
			}
		}
		return nil, m.novaSave(ctx, req, inst, expected, fields)
	}
}

// thaw handles unpause and resume (task is the task state nova set).
// resume restores the vm_state suspend kept in system_metadata.
func (m *Manager) thaw(task string) rpc.Handler {
	return func(ctx context.Context, req *rpc.Request) (any, error) {
		inst, rec, err := m.instanceOp(ctx, req)
		if err != nil {
			return nil, err
		}
		if err := m.unpause(ctx, rec.UUID); err != nil {
			return nil, err
		}
		if err := m.saveState(rec, StateActive); err != nil {
			return nil, err
		}
		fields := map[string]any{"power_state": m.novaPowerState(ctx, inst.UUID), "vm_state": StateActive, "task_state": nil}
		if task == taskResuming && inst.SystemMetadata != nil {
			if old, ok := inst.SystemMetadata["old_vm_state"]; ok {
				delete(inst.SystemMetadata, "old_vm_state")
				fields["vm_state"] = old
				fields["system_metadata"] = inst.SystemMetadata
			}
		}
		return nil, m.novaSave(ctx, req, inst, expect(task), fields)
	}
}

// rebuildInstance replaces the root filesystem with image_ref and starts
// again with the same uuid, MACs and IPs. With recreate (evacuate) and no
// local record, the instance is built here from scratch.
func (m *Manager) rebuildInstance(ctx context.Context, req *rpc.Request) (any, error) {
	inst, err := instanceArgCtx(ctx, req)
	if err != nil {
		return nil, err
	}
	var newImage string
	if _, err := req.Arg("image_ref", &newImage); err != nil {
		return nil, err
	}
	if newImage == "" {
		newImage = inst.ImageRef
	}
	rec, ok := m.store.Get(inst.UUID)
	if !ok {
		var recreate bool
		if _, err := req.Arg("recreate", &recreate); err != nil {
			return nil, err
		}
		if !recreate {
			return nil, rpc.InstanceNotFound(inst.UUID, driver.ErrNotFound)
		}
		return m.rebuildSpawn(ctx, req, inst, newImage)
	}
	if err := m.novaSave(ctx, req, inst, expect(taskRebuilding), map[string]any{"task_state": taskRebuildBDM}); err != nil {
		return nil, err
	}
	if err := m.drv.Destroy(ctx, rec.UUID); err != nil {
		return nil, fmt.Errorf("rebuild: destroy: %w", err)
	}
	dir := m.store.Dir(rec.UUID)
	if err := m.rootfs.Release(ctx, dir); err != nil {
		return nil, fmt.Errorf("rebuild: release rootfs: %w", err)
	}
	// From here on the instance is rebuilt like a build, keeping its VIFs.
	vifs := rec.VIFs
	nw := make(novaobj.NetworkInfo, 0, len(vifs))
	for _, v := range vifs {
		nw = append(nw, v.modelVIF())
	}
	inst.NetworkInfo = nw
	if err := m.store.Forget(rec.UUID); err != nil {
		return nil, err
	}
	return m.rebuildSpawn(ctx, req, inst, newImage)
}

// rebuildSpawn is the spawning part of a rebuild, with nova's task states
// rebuild_spawning then None.
func (m *Manager) rebuildSpawn(ctx context.Context, req *rpc.Request, inst *novaobj.Instance, image string) (any, error) {
	if m.nova != nil {
		fields := map[string]any{"task_state": taskRebuildSpawning, "host": m.cfg.Host, "node": m.cfg.Node}
		if err := m.novaSave(ctx, req, inst, expect(taskRebuilding, taskRebuildBDM), fields); err != nil {
			return nil, err
		}
	}
	if err := m.build(ctx, req, inst, imageRef{ID: image}, nil); err != nil {
		return nil, err
	}
	return nil, m.novaSave(ctx, req, inst, expect(taskRebuildSpawning), map[string]any{
		"power_state": m.novaPowerState(ctx, inst.UUID), "vm_state": StateActive, "task_state": nil,
		"launched_at": conductor.Time(time.Now()), "image_ref": image})
}

// modelVIF turns a record back into nova's VIF model so a rebuild keeps the
// port, MAC, addresses and names.
func (v VIFRecord) modelVIF() novaobj.VIF {
	net := novaobj.Network{ID: v.NetworkID, Bridge: v.Bridge, Meta: map[string]any{"mtu": float64(v.MTU)}}
	for _, a := range v.Addrs {
		parts := strings.SplitN(a, "/", 2)
		sn := novaobj.Subnet{CIDR: a, IPs: []novaobj.FixedIP{{IP: novaobj.IP{Address: parts[0], Type: "fixed"}}}}
		if strings.Contains(parts[0], ":") {
			if v.Gateway6 != "" {
				sn.Gateway = &novaobj.IP{Address: v.Gateway6}
			}
		} else if v.Gateway4 != "" {
			sn.Gateway = &novaobj.IP{Address: v.Gateway4}
		}
		net.Subnets = append(net.Subnets, sn)
	}
	vif := novaobj.VIF{ID: v.PortID, Address: v.MAC, Type: VIFKindBridge, Devname: v.Tap, Network: net}
	if v.Kind == VIFKindOVS {
		vif.Type = VIFKindOVS
		vif.Details = map[string]any{"ovs_hybrid_plug": v.Hybrid}
		if v.Datapath != "" {
			vif.Details["datapath_type"] = v.Datapath
		}
	}
	return vif
}

// getDiagnostics is the libvirt driver's get_diagnostics dict.
func (m *Manager) getDiagnostics(ctx context.Context, req *rpc.Request) (any, error) {
	inst, err := instanceArgCtx(ctx, req)
	if err != nil {
		return nil, err
	}
	info, err := m.drv.Info(ctx, inst.UUID)
	if err != nil || info.State != driver.Running {
		return nil, rpc.InstanceInvalidState(inst.UUID, "power state", stateName(inst.PowerState), "get_diagnostics")
	}
	rec, _ := m.store.Get(inst.UUID)
	out := map[string]any{"memory": rec.MemoryMB * 1024}
	if sr, ok := m.drv.(driver.StatsReader); ok {
		st, err := sr.Stats(ctx, inst.UUID)
		if err != nil {
			return nil, err
		}
		out["cpu0_time"] = st.CPUTime.Nanoseconds()
		if st.MemoryLimit > 0 {
			out["memory"] = st.MemoryLimit >> 10
			out["memory-actual"] = st.MemoryLimit >> 10
		}
		out["memory-rss"] = st.MemoryBytes >> 10
	}
	for _, v := range rec.VIFs {
		if m.nicStat == nil {
			break
		}
		s, err := m.nicStat(ctx, v.Tap)
		if err != nil {
			continue
		}
		out[v.Tap+"_rx"], out[v.Tap+"_rx_packets"], out[v.Tap+"_rx_errors"], out[v.Tap+"_rx_drop"] = s.RxOctets, s.RxPackets, s.RxErrors, s.RxDrop
		out[v.Tap+"_tx"], out[v.Tap+"_tx_packets"], out[v.Tap+"_tx_errors"], out[v.Tap+"_tx_drop"] = s.TxOctets, s.TxPackets, s.TxErrors, s.TxDrop
	}
	return out, nil
}

// getHostUptime returns `uptime`, as the libvirt driver does.
func (m *Manager) getHostUptime(ctx context.Context, _ *rpc.Request) (any, error) {
	cmd := exec.CommandContext(ctx, "uptime")
	cmd.Env = append(os.Environ(), "LANG=C")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("uptime: %w", err)
	}
	return string(out), nil
}

func passwordSetFailed(uuid, reason string) *rpc.Exception {
	return rpc.NovaException("InstancePasswordSetFailed", 500,
		fmt.Sprintf("Failed to set admin password on %s because %s", uuid, reason),
		map[string]any{"instance": uuid, "reason": reason})
}

// setAdminPassword sets root's password in the container's /etc/shadow.
func (m *Manager) setAdminPassword(ctx context.Context, req *rpc.Request) (any, error) {
	inst, rec, err := m.instanceOp(ctx, req)
	if err != nil {
		return nil, err
	}
	var pw string
	if _, err := req.Arg("new_pass", &pw); err != nil {
		return nil, err
	}
	if info, err := m.drv.Info(ctx, rec.UUID); err != nil || info.State != driver.Running {
		return nil, passwordSetFailed(inst.UUID, fmt.Sprintf("instance %s is not running", inst.UUID))
	}
	if err := shadow.SetPassword(filepath.Join(m.store.Dir(rec.UUID), "rootfs"), "root", pw); err != nil {
		m.logFor(req, inst.UUID).Warn("set_admin_password failed", "error", err)
		reason := "error setting admin password"
		if errors.Is(err, shadow.ErrNoShadow) {
			reason = "the image has no /etc/shadow entry for root"
		}
		return nil, passwordSetFailed(inst.UUID, reason)
	}
	m.logFor(req, inst.UUID).Info("admin password set")
	return nil, nil
}

// consoleUnavailable answers graphical and serial console requests: a
// container has none, as nova does when those consoles are disabled.
func consoleUnavailable(_ context.Context, req *rpc.Request) (any, error) {
	var ct string
	_, _ = req.Arg("console_type", &ct)
	if ct == "" {
		ct = strings.TrimSuffix(strings.TrimPrefix(req.Method, "get_"), "_console")
	}
	return nil, rpc.NovaException("ConsoleTypeUnavailable", 400, fmt.Sprintf("Unavailable console type %s.", ct),
		map[string]any{"console_type": ct})
}

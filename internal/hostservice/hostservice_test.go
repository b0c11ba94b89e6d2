package hostservice

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/internal/placement"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// fakeConductor keeps the objects a conductor would store.
type fakeConductor struct {
	mu       sync.Mutex
	svc      *novaobj.Object
	cn       *novaobj.Object
	saves    []string
	insts    []*novaobj.Object
	instSave []string
}

func (f *fakeConductor) WaitUntilReady(context.Context) error               { return nil }
func (f *fakeConductor) MinimumComputeVersion(context.Context) (int, error) { return 64, nil }
func (f *fakeConductor) ServiceByHostAndBinary(context.Context, string, string) (*novaobj.Object, error) {
	return f.svc, nil
}
func (f *fakeConductor) ComputeNodeByHostAndNodename(context.Context, string, string) (*novaobj.Object, error) {
	return f.cn, nil
}
func (f *fakeConductor) Create(_ context.Context, _ *rpc.RequestContext, o *novaobj.Object) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch o.Name {
	case "Service":
		o.Data["id"] = json.RawMessage("1")
		o.Data["disabled"] = json.RawMessage("false")
		f.svc = o
	case "ComputeNode":
		o.Data["uuid"] = json.RawMessage(`"7c1d2f0e-0000-4000-8000-000000000001"`)
		f.cn = o
	}
	o.Changes = nil
	return nil
}
func (f *fakeConductor) Save(_ context.Context, _ *rpc.RequestContext, o *novaobj.Object) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.saves = append(f.saves, o.Name+":"+joinChanges(o.Changes))
	o.Changes = nil
	return nil
}
func (f *fakeConductor) InstancesByHost(context.Context, string, []string) ([]*novaobj.Object, error) {
	return f.insts, nil
}
func (f *fakeConductor) SaveInstance(_ context.Context, _ *rpc.RequestContext, o *novaobj.Object, _ []any) error {
	f.instSave = append(f.instSave, o.String("uuid")+":"+joinChanges(o.Changes)+":"+o.String("vm_state"))
	return nil
}

func joinChanges(c []string) string {
	c = slices.Clone(c)
	slices.Sort(c)
	out := ""
	for i, s := range c {
		if i > 0 {
			out += ","
		}
		out += s
	}
	return out
}

type fakePlacement struct {
	inv    map[string]placement.Inventory
	traits []string
}

func (f *fakePlacement) EnsureProvider(context.Context, string, string) (int, error) { return 0, nil }
func (f *fakePlacement) Inventories(context.Context, string) (map[string]placement.Inventory, int, error) {
	return f.inv, 0, nil
}
func (f *fakePlacement) SetInventories(_ context.Context, _ string, inv map[string]placement.Inventory) error {
	f.inv = inv
	return nil
}
func (f *fakePlacement) SetTraits(_ context.Context, _ string, t []string) error {
	f.traits = t
	return nil
}

func newService(c *fakeConductor, p *fakePlacement, power PowerState) *Service {
	usage := func(context.Context) (Usage, error) {
		return Usage{VCPUs: 4, MemoryMB: 8192, DiskGB: 100, FreeDisk: 80, VCPUsUsed: 1, MemoryMBUsed: 256, DiskGBUsed: 1, RunningVMs: 1}, nil
	}
	return New(Config{Host: "h1", HypervisorVersion: 5000002, Reserved: placement.Reserved{MemoryMB: 512},
		Ratios: placement.Ratios{InitialCPU: 16, InitialRAM: 1.5, InitialDisk: 1}}, c, p, usage, power, nil)
}

func TestRegisterHeartbeatAndDisable(t *testing.T) {
	c, p := &fakeConductor{}, &fakePlacement{}
	s := newService(c, p, func(context.Context, string) (int, bool) { return 1, true })
	ctx := context.Background()
	if err := s.Register(ctx); err != nil {
		t.Fatal(err)
	}
	if c.svc.Int("version") != 64 || c.svc.String("binary") != "nova-compute" || c.svc.String("topic") != "compute" {
		t.Errorf("service = %v", c.svc.Data)
	}
	if c.cn.String("hypervisor_type") != "lxc" || c.cn.Int("memory_mb_used") != 256+512 || c.cn.Int("free_ram_mb") != 8192-768 ||
		c.cn.String("hypervisor_hostname") != "h1" || c.cn.Int("hypervisor_version") != 5000002 {
		t.Errorf("compute node = %v", c.cn.Data)
	}
	if p.inv["VCPU"].Total != 4 || p.inv["MEMORY_MB"].Reserved != 512 || p.inv["MEMORY_MB"].AllocationRatio != 1.5 {
		t.Errorf("inventories = %+v", p.inv)
	}
	if slices.Contains(p.traits, "COMPUTE_STATUS_DISABLED") || !slices.Contains(p.traits, "COMPUTE_NODE") {
		t.Errorf("traits = %v", p.traits)
	}
	// Heartbeats save report_count only; a disabled service gets the trait.
	for range 2 {
		if err := s.ReportState(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if c.svc.Int("report_count") != 2 || len(c.saves) != 2 || c.saves[0] != "Service:report_count" {
		t.Errorf("report_count %d, saves %v", c.svc.Int("report_count"), c.saves)
	}
	c.svc.Data["disabled"] = json.RawMessage("true") // as conductor's save reply would update it
	if err := s.ReportState(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(p.traits, "COMPUTE_STATUS_DISABLED") {
		t.Errorf("traits of a disabled service = %v", p.traits)
	}
	// Unchanged resources: no ComputeNode save.
	n := len(c.saves)
	if err := s.UpdateResources(ctx); err != nil {
		t.Fatal(err)
	}
	if len(c.saves) != n {
		t.Errorf("compute node saved without a change: %v", c.saves[n:])
	}
}

func TestSyncPowerStates(t *testing.T) {
	inst := func(uuid, vm, task string, ps int) *novaobj.Object {
		o := novaobj.New("Instance", "2.7")
		o.Set("uuid", uuid)
		o.Set("vm_state", vm)
		if task != "" {
			o.Set("task_state", task)
		}
		o.Set("power_state", ps)
		o.Changes = nil
		return o
	}
	c := &fakeConductor{insts: []*novaobj.Object{
		inst("a", "active", "", 1),             // container died: stopped
		inst("b", "active", "", 1),             // still running: nothing
		inst("c", "stopped", "powering-on", 4), // busy: skipped
	}}
	states := map[string]int{"a": 4, "b": 1, "c": 1}
	s := newService(c, &fakePlacement{}, func(_ context.Context, id string) (int, bool) { return states[id], true })
	if err := s.SyncPowerStates(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(c.instSave) != 1 || c.instSave[0] != "a:power_state,vm_state:stopped" {
		t.Errorf("instance saves = %v", c.instSave)
	}
}

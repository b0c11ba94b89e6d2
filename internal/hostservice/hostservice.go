// Package hostservice is what nova-compute does toward nova's control plane
// for the host itself: wait for conductor, create or update the nova-compute
// Service record, keep it alive with report_state heartbeats, keep the
// ComputeNode record and the placement resource provider (inventories and
// traits) up to date, and sync instances' power states.
package hostservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/conductor"
	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/internal/placement"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// Conductor is the part of conductor.API the host service uses.
type Conductor interface {
	WaitUntilReady(ctx context.Context) error
	MinimumComputeVersion(ctx context.Context) (int, error)
	ServiceByHostAndBinary(ctx context.Context, host, binary string) (*novaobj.Object, error)
	ComputeNodeByHostAndNodename(ctx context.Context, host, node string) (*novaobj.Object, error)
	Create(ctx context.Context, rctx *rpc.RequestContext, obj *novaobj.Object) error
	Save(ctx context.Context, rctx *rpc.RequestContext, obj *novaobj.Object) error
	InstancesByHost(ctx context.Context, host string, expectedAttrs []string) ([]*novaobj.Object, error)
	SaveInstance(ctx context.Context, rctx *rpc.RequestContext, inst *novaobj.Object, expected []any) error
}

// Placement is the part of the placement client the host service uses.
type Placement interface {
	EnsureProvider(ctx context.Context, uuid, name string) (int, error)
	Inventories(ctx context.Context, uuid string) (map[string]placement.Inventory, int, error)
	SetInventories(ctx context.Context, uuid string, inv map[string]placement.Inventory) error
	SetTraits(ctx context.Context, uuid string, traits []string) error
}

// Usage is what the host has and what its instances use.
type Usage struct {
	VCPUs    int // usable host CPUs
	MemoryMB int // host memory
	DiskGB   int // the instances path's filesystem
	FreeDisk int // GB free on that filesystem (disk_available_least)

	VCPUsUsed    int
	MemoryMBUsed int // instances only; the reserved amount is added here
	DiskGBUsed   int
	RunningVMs   int
}

// PowerState is a container's state as nova's power_state int, with ok false
// when the agent does not run the instance at all.
type PowerState func(ctx context.Context, uuid string) (state int, ok bool)

// Config holds nova's option values the host service follows.
type Config struct {
	Host string
	Node string // hypervisor_hostname; Host when empty
	// HostIP is [DEFAULT] my_ip.
	HostIP string
	// ReportInterval is [DEFAULT] report_interval (10 s).
	ReportInterval time.Duration
	// ResourceInterval is update_resources_interval (60 s when 0).
	ResourceInterval time.Duration
	// SyncPowerInterval is sync_power_state_interval (600 s; < 0 disables).
	SyncPowerInterval time.Duration
	Ratios            placement.Ratios
	Reserved          placement.Reserved
	// HypervisorVersion is the ComputeNode's hypervisor_version (an int, as
	// libvirt's version number).
	HypervisorVersion int
}

// Service is one host's nova-compute service record and compute node.
type Service struct {
	cfg   Config
	cond  Conductor
	pl    Placement
	usage func(ctx context.Context) (Usage, error)
	power PowerState
	log   *slog.Logger

	mu       sync.Mutex
	svc      *novaobj.Object
	cn       *novaobj.Object
	disabled bool
	traits   []string
	lastUp   time.Time
}

// New returns a host service; Register must succeed before Run.
func New(cfg Config, cond Conductor, pl Placement, usage func(ctx context.Context) (Usage, error), power PowerState, log *slog.Logger) *Service {
	if cfg.Node == "" {
		cfg.Node = cfg.Host
	}
	if cfg.ReportInterval <= 0 {
		cfg.ReportInterval = 10 * time.Second
	}
	if cfg.ResourceInterval <= 0 {
		cfg.ResourceInterval = 60 * time.Second
	}
	if cfg.SyncPowerInterval == 0 {
		cfg.SyncPowerInterval = 600 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, cond: cond, pl: pl, usage: usage, power: power, log: log.With("component", "hostservice")}
}

// Register does nova-compute's start-up toward the control plane: wait for
// conductor, check the cloud's computes are not too old for it, create or
// update the Service record (version 64) and the ComputeNode, and the
// placement provider with inventories and traits.
func (s *Service) Register(ctx context.Context) error {
	t := time.Now()
	if err := s.cond.WaitUntilReady(ctx); err != nil {
		return err
	}
	if min, err := s.cond.MinimumComputeVersion(ctx); err != nil {
		return fmt.Errorf("minimum compute version: %w", err)
	} else if min > conductor.ServiceRPCVersion {
		return fmt.Errorf("%w: the cloud's oldest nova-compute is version %d, this agent speaks %d",
			ErrTooOld, min, conductor.ServiceRPCVersion)
	}
	if err := s.ensureService(ctx); err != nil {
		return err
	}
	if err := s.UpdateResources(ctx); err != nil {
		return err
	}
	s.log.Info("registered with nova", "host", s.cfg.Host, "node", s.cfg.Node,
		"compute_node", s.ComputeNodeUUID(), "seconds", time.Since(t).Seconds())
	return nil
}

// ErrTooOld is returned when the cloud runs computes newer than the agent.
var ErrTooOld = errors.New("compute service too old")

func (s *Service) ensureService(ctx context.Context) error {
	svc, err := s.cond.ServiceByHostAndBinary(ctx, s.cfg.Host, "nova-compute")
	if err != nil {
		return fmt.Errorf("service record: %w", err)
	}
	rctx := rpc.AdminContext()
	if svc == nil {
		svc = novaobj.New("Service", conductor.ServiceVersion)
		svc.Set("host", s.cfg.Host)
		svc.Set("binary", "nova-compute")
		svc.Set("topic", "compute")
		svc.Set("report_count", 0)
		svc.Set("version", conductor.ServiceRPCVersion)
		if err := s.cond.Create(ctx, rctx, svc); err != nil {
			return fmt.Errorf("create service record: %w", err)
		}
		s.log.Info("created the nova-compute service record", "id", svc.Int("id"))
	} else if svc.Int("version") != conductor.ServiceRPCVersion {
		svc.Changes = nil
		svc.Set("version", conductor.ServiceRPCVersion)
		if err := s.cond.Save(ctx, rctx, svc); err != nil {
			return fmt.Errorf("update service version: %w", err)
		}
	}
	var disabled bool
	_, _ = svc.Get("disabled", &disabled)
	s.mu.Lock()
	s.svc, s.disabled = svc, disabled
	s.mu.Unlock()
	return nil
}

// Disabled reports whether the service is disabled in nova (as of the last
// heartbeat).
func (s *Service) Disabled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.disabled
}

// ComputeNodeUUID is the compute node's uuid, the placement provider's.
func (s *Service) ComputeNodeUUID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cn == nil {
		return ""
	}
	return s.cn.String("uuid")
}

// ReportState is one report_state tick: report_count incremented and saved;
// conductor then sets last_seen_up.
func (s *Service) ReportState(ctx context.Context) error {
	s.mu.Lock()
	svc := s.svc
	s.mu.Unlock()
	if svc == nil {
		return errors.New("report state: not registered")
	}
	svc.Changes = nil
	svc.Set("report_count", svc.Int("report_count")+1)
	if err := s.cond.Save(ctx, rpc.AdminContext(), svc); err != nil {
		return fmt.Errorf("report state: %w", err)
	}
	var disabled bool
	_, _ = svc.Get("disabled", &disabled)
	s.mu.Lock()
	changed := disabled != s.disabled
	s.disabled = disabled
	s.lastUp = time.Now()
	s.mu.Unlock()
	if changed {
		s.log.Info("service status changed in nova", "disabled", disabled)
		if err := s.syncTraits(ctx); err != nil {
			return err
		}
	}
	return nil
}

func archName() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	case "386":
		return "i686"
	}
	return runtime.GOARCH
}

func hvSpec() json.RawMessage {
	o := novaobj.New("HVSpec", "1.2")
	o.Set("arch", archName())
	o.Set("hv_type", "lxc")
	o.Set("vm_mode", "exe")
	o.Changes = nil
	b, _ := json.Marshal(o)
	return b
}

func emptyPools() json.RawMessage {
	o := novaobj.New("PciDevicePoolList", "1.1")
	o.Set("objects", []any{})
	o.Changes = nil
	b, _ := json.Marshal(o)
	return b
}

// UpdateResources is update_available_resource: the ComputeNode created or
// saved when something changed, then placement synced.
func (s *Service) UpdateResources(ctx context.Context) error {
	u, err := s.usage(ctx)
	if err != nil {
		return fmt.Errorf("host resources: %w", err)
	}
	memUsed := u.MemoryMBUsed + s.cfg.Reserved.MemoryMB
	diskUsed := u.DiskGBUsed + (s.cfg.Reserved.DiskMB+1023)/1024
	fields := map[string]any{
		"vcpus": u.VCPUs, "memory_mb": u.MemoryMB, "local_gb": u.DiskGB,
		"vcpus_used": u.VCPUsUsed, "memory_mb_used": memUsed, "local_gb_used": diskUsed,
		"free_ram_mb": u.MemoryMB - memUsed, "free_disk_gb": u.DiskGB - diskUsed,
		"current_workload": 0, "running_vms": u.RunningVMs, "disk_available_least": u.FreeDisk,
		"hypervisor_type": "lxc", "hypervisor_version": s.cfg.HypervisorVersion,
		"hypervisor_hostname": s.cfg.Node, "cpu_info": "",
	}
	if s.cfg.HostIP != "" {
		fields["host_ip"] = s.cfg.HostIP
	}
	rctx := rpc.AdminContext()
	s.mu.Lock()
	cn := s.cn
	s.mu.Unlock()
	if cn == nil {
		if cn, err = s.cond.ComputeNodeByHostAndNodename(ctx, s.cfg.Host, s.cfg.Node); err != nil {
			return fmt.Errorf("compute node: %w", err)
		}
	}
	if cn == nil {
		cn = novaobj.New("ComputeNode", conductor.ComputeNodeVersion)
		cn.Set("host", s.cfg.Host)
		for k, v := range fields {
			cn.Set(k, v)
		}
		cn.Set("cpu_allocation_ratio", orDefault(s.cfg.Ratios.CPU, s.cfg.Ratios.InitialCPU, 16.0))
		cn.Set("ram_allocation_ratio", orDefault(s.cfg.Ratios.RAM, s.cfg.Ratios.InitialRAM, 1.5))
		cn.Set("disk_allocation_ratio", orDefault(s.cfg.Ratios.Disk, s.cfg.Ratios.InitialDisk, 1.0))
		cn.Set("stats", map[string]string{"failed_builds": "0"})
		cn.Data["supported_hv_specs"] = json.RawMessage("[" + string(hvSpec()) + "]")
		cn.Data["pci_device_pools"] = emptyPools()
		cn.Changes = append(cn.Changes, "supported_hv_specs", "pci_device_pools")
		if err := s.cond.Create(ctx, rctx, cn); err != nil {
			return fmt.Errorf("create compute node: %w", err)
		}
		s.log.Info("created the compute node record", "uuid", cn.String("uuid"), "node", s.cfg.Node)
	} else {
		cn.Changes = nil
		for k, v := range fields {
			b, _ := json.Marshal(v)
			if string(cn.Data[k]) != string(b) {
				cn.Set(k, v)
			}
		}
		if len(cn.Changes) > 0 {
			if err := s.cond.Save(ctx, rctx, cn); err != nil {
				return fmt.Errorf("save compute node: %w", err)
			}
		}
	}
	s.mu.Lock()
	s.cn = cn
	s.mu.Unlock()
	return s.syncPlacement(ctx, u)
}

func orDefault(v ...float64) float64 {
	for _, x := range v {
		if x > 0 {
			return x
		}
	}
	return 0
}

func (s *Service) syncPlacement(ctx context.Context, u Usage) error {
	if s.pl == nil {
		return nil
	}
	id := s.ComputeNodeUUID()
	if _, err := s.pl.EnsureProvider(ctx, id, s.cfg.Node); err != nil {
		return fmt.Errorf("placement provider: %w", err)
	}
	existing, _, err := s.pl.Inventories(ctx, id)
	if err != nil {
		return fmt.Errorf("placement inventories: %w", err)
	}
	inv := placement.LibvirtInventories(placement.HostResources{VCPUs: u.VCPUs, MemoryMB: u.MemoryMB, DiskGB: u.DiskGB},
		s.cfg.Ratios, s.cfg.Reserved, existing)
	if err := s.pl.SetInventories(ctx, id, inv); err != nil {
		return fmt.Errorf("placement inventories: %w", err)
	}
	return s.syncTraits(ctx)
}

// Traits the agent's compute node carries: what nova's resource tracker
// always adds and the capabilities a container host has.
func (s *Service) wantTraits() []string {
	t := []string{"COMPUTE_NODE", "COMPUTE_IMAGE_TYPE_RAW", "COMPUTE_IMAGE_TYPE_QCOW2", "COMPUTE_STORAGE_BUS_LXC"}
	if s.Disabled() {
		t = append(t, "COMPUTE_STATUS_DISABLED")
	}
	sort.Strings(t)
	return t
}

func (s *Service) syncTraits(ctx context.Context) error {
	if s.pl == nil {
		return nil
	}
	want := s.wantTraits()
	if err := s.pl.SetTraits(ctx, s.ComputeNodeUUID(), want); err != nil {
		return fmt.Errorf("placement traits: %w", err)
	}
	s.mu.Lock()
	s.traits = want
	s.mu.Unlock()
	return nil
}

// Run heartbeats, refreshes resources and syncs power states until ctx ends.
func (s *Service) Run(ctx context.Context) {
	var wg sync.WaitGroup
	loop := func(name string, first, every time.Duration, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			timer := time.NewTimer(first)
			defer timer.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-timer.C:
				}
				if err := f(ctx); err != nil && ctx.Err() == nil {
					s.log.Warn(name+" failed", "error", err)
				}
				timer.Reset(every)
			}
		}()
	}
	// nova: the first report after INITIAL_REPORTING_DELAY (5 s).
	loop("report_state", min(5*time.Second, s.cfg.ReportInterval), s.cfg.ReportInterval, s.ReportState)
	loop("update_available_resource", s.cfg.ResourceInterval, s.cfg.ResourceInterval, s.UpdateResources)
	if s.cfg.SyncPowerInterval > 0 {
		loop("sync_power_states", 0, s.cfg.SyncPowerInterval, s.SyncPowerStates)
	}
	wg.Wait()
}

// nova power states.
const (
	powerRunning  = 1
	powerShutdown = 4
	powerCrashed  = 6
)

// SyncPowerStates is _sync_power_states: nova's power_state brought in line
// with the containers; an active instance whose container stopped by itself
// becomes stopped, as nova's stop API would make it.
func (s *Service) SyncPowerStates(ctx context.Context) error {
	insts, err := s.cond.InstancesByHost(ctx, s.cfg.Host, []string{})
	if err != nil {
		return fmt.Errorf("instances on host: %w", err)
	}
	var errs []error
	for _, o := range insts {
		uuid := o.String("uuid")
		if o.String("task_state") != "" {
			continue // an operation is in flight; nova skips these too
		}
		state, ok := s.power(ctx, uuid)
		if !ok {
			state = 0
		}
		vm := o.String("vm_state")
		if vm == "building" || vm == "deleted" || vm == "error" {
			continue
		}
		o.Changes = nil
		if o.Int("power_state") != state {
			o.Set("power_state", state)
		}
		if vm == "active" && (state == powerShutdown || state == powerCrashed || state == 0) {
			s.log.Info("instance shut down by itself; recording it stopped", "instance_uuid", uuid)
			o.Set("vm_state", "stopped")
		}
		if len(o.Changes) == 0 {
			continue
		}
		if err := s.cond.SaveInstance(ctx, rpc.AdminContext(), o, []any{nil}); err != nil &&
			!conductor.RemoteClass(err, "UnexpectedTaskStateError", "InstanceNotFound") {
			errs = append(errs, fmt.Errorf("instance %s: %w", uuid, err))
		}
	}
	return errors.Join(errs...)
}

// Endpoint serves the compute RPCs about the host service itself
// (set_host_enabled), at the compute API version given.
func (s *Service) Endpoint(version string) rpc.Endpoint {
	return rpc.Endpoint{Version: version, Methods: map[string]rpc.Method{
		"set_host_enabled": {Handler: s.setHostEnabled},
	}}
}

// setHostEnabled is nova-compute's set_host_enabled: nova-api calls it when
// an operator enables or disables the service, and the compute node's
// COMPUTE_STATUS_DISABLED trait follows at once.
func (s *Service) setHostEnabled(ctx context.Context, req *rpc.Request) (any, error) {
	var enabled bool
	if ok, err := req.Arg("enabled", &enabled); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("%w: missing argument enabled", rpc.ErrMalformed)
	}
	s.mu.Lock()
	s.disabled = !enabled
	s.mu.Unlock()
	if err := s.syncTraits(ctx); err != nil {
		return nil, err
	}
	if enabled {
		return "enabled", nil
	}
	return "disabled", nil
}

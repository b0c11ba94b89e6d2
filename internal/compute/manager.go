// Package compute implements nova-compute's RPC methods on top of a
// container driver, a rootfs mounter, an image store and a VIF plugger.
package compute

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/metrics"
	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// ComputeRPCVersion is the compute API version nova 26 (Zed) speaks.
const ComputeRPCVersion = "6.1"

// ImageStore fetches, verifies and caches images.
type ImageStore interface {
	// Fetch returns the local path of image id and whether it was cached.
	Fetch(ctx context.Context, id, token string) (path string, hit bool, err error)
}

// RootfsMounter turns a cached image into an instance's root filesystem.
type RootfsMounter interface {
	Prepare(ctx context.Context, imageID, imagePath, instanceDir string) (rootfs string, err error)
	Release(ctx context.Context, instanceDir string) error
}

// PlugSpec is the host side of one VIF.
type PlugSpec struct {
	PortID string
	MAC    string
	Bridge string
	Tap    string
	MTU    int
	// Kind is VIFKindOVS for a port of the Open vSwitch bridge Bridge;
	// empty (or VIFKindBridge) for linuxbridge.
	Kind string
	// Hybrid (ovs_hybrid_plug), Datapath (datapath_type) and InstanceUUID
	// (external-ids:vm-uuid) matter for OVS only.
	Hybrid       bool
	Datapath     string
	InstanceUUID string
	// NoTap: the backend makes the VIF's veth itself (libvirt-lxc); Plug
	// makes only what it joins (for OVS: the bridge, or a hybrid plug's
	// qbr… and its qvb…/qvo… link) and returns "".
	NoTap bool
}

// VIF kinds: nova's VIF types this agent plugs.
const (
	VIFKindBridge = "bridge"
	VIFKindOVS    = "ovs"
)

// NetPlugger plugs VIFs into bridges.
type NetPlugger interface {
	Plug(ctx context.Context, v PlugSpec) (peer string, err error)
	Unplug(ctx context.Context, v PlugSpec) error
	// EnsureBridge only makes the bridge, for backends that make the veth.
	EnsureBridge(ctx context.Context, bridge string, mtu int) error
	// Wired reports whether the VIF's tap exists and whether it is in its
	// bridge.
	Wired(ctx context.Context, v PlugSpec) (tap, inBridge bool, err error)
	// GuestRoutes adds static routes through dev inside the network
	// namespace of pid (the container's init).
	GuestRoutes(ctx context.Context, pid int, dev string, routes []GuestRoute) error
}

// GuestRoute is a subnet's host route inside the container.
type GuestRoute struct {
	Dst netip.Prefix
	Via netip.Addr
}

// plug prepares one VIF's host side: the whole veth pair, or only the bridge
// when the backend makes the veth itself. It returns the device to hand over.
func (m *Manager) plug(ctx context.Context, v PlugSpec) (string, error) {
	if np, ok := m.drv.(driver.NICPlugger); ok && np.PlugsNICs() {
		if v.Kind == VIFKindOVS {
			v.NoTap = true
			_, err := m.net.Plug(ctx, v)
			return "", err
		}
		return "", m.net.EnsureBridge(ctx, v.Bridge, v.MTU)
	}
	return m.net.Plug(ctx, v)
}

// NICCounters reads a host tap's counters as seen from the container.
type NICCounters func(ctx context.Context, tap string) (driver.NICStats, error)

// Config is what the manager needs from the agent configuration.
type Config struct {
	Host string
	// Node is the hypervisor_hostname of this host's ComputeNode (Host when
	// empty).
	Node            string
	InstancesPath   string
	FaultsDir       string
	ShutdownTimeout time.Duration
	DefaultMTU      int
	DefaultPrefix   int
	DefaultGateway  string
	// SnapshotFormat is how snapshots are captured (root-tar by default).
	SnapshotFormat SnapshotFormat
	// PidsLimit and SwapMB are the defaults of every container (0 = no
	// pids limit, no swap); flavors override them.
	PidsLimit int
	SwapMB    int
	// IDMaps, when set, run every new container unprivileged with them
	// ([libvirt] uid_maps and gid_maps); the rootfs mounter must make
	// their root filesystems for the same maps.
	IDMaps []driver.IDMap
}

// Manager handles compute RPCs.
type Manager struct {
	cfg      Config
	drv      driver.Driver
	images   ImageStore
	rootfs   RootfsMounter
	net      NetPlugger
	nicStat  NICCounters
	capture  Capturer
	upload   ImageUploader
	store    *Store
	nova     Nova
	alloc    Allocations
	notifier Notifier
	networks Networks
	metrics  *metrics.Metrics
	log      *slog.Logger
}

// Deps are the manager's collaborators.
type Deps struct {
	Driver   driver.Driver
	Images   ImageStore
	Rootfs   RootfsMounter
	Net      NetPlugger
	NICStats NICCounters
	Capturer Capturer
	Uploader ImageUploader
	// Nova and Allocations are nova's conductor and placement; nil in
	// standalone mode.
	Nova        Nova
	Allocations Allocations
	// Notifier sends nova's notifications; nil = none.
	Notifier Notifier
	// Networks is Neutron; nil = none configured.
	Networks Networks
	Metrics  *metrics.Metrics
	Logger   *slog.Logger
}

// New opens the instance store and returns a manager.
func New(cfg Config, d Deps) (*Manager, error) {
	store, err := OpenStore(cfg.InstancesPath, cfg.FaultsDir)
	if err != nil {
		return nil, err
	}
	log := d.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Node == "" {
		cfg.Node = cfg.Host
	}
	if cfg.DefaultMTU == 0 {
		cfg.DefaultMTU = 1500
	}
	if cfg.DefaultPrefix == 0 {
		cfg.DefaultPrefix = 24
	}
	switch cfg.SnapshotFormat {
	case "":
		cfg.SnapshotFormat = SnapshotRootTar
	case SnapshotRootTar, SnapshotRaw:
	default:
		return nil, fmt.Errorf("snapshot format %q: want root-tar or raw", cfg.SnapshotFormat)
	}
	return &Manager{cfg: cfg, drv: d.Driver, images: d.Images, rootfs: d.Rootfs, net: d.Net,
		nicStat: d.NICStats, capture: d.Capturer, upload: d.Uploader, store: store, nova: d.Nova, alloc: d.Allocations, notifier: d.Notifier, networks: d.Networks, metrics: d.Metrics, log: log.With("component", "compute")}, nil
}

// Store exposes the instance records (for metrics and reconcile).
func (m *Manager) Store() *Store { return m.store }

// Methods lists the compute methods this manager serves (for metrics labels).
func (m *Manager) Methods() []string {
	var out []string
	for _, ep := range m.Endpoints() {
		for name := range ep.Methods {
			out = append(out, name)
		}
	}
	return out
}

// Endpoints returns the RPC endpoints: nova's compute manager methods, and
// lxc-agent's own namespace for the standalone client.
func (m *Manager) Endpoints() []rpc.Endpoint {
	compute := rpc.Endpoint{Version: ComputeRPCVersion, Methods: map[string]rpc.Method{
		"build_and_run_instance":   {Handler: m.tracked(eventDoBuildAndRun, m.buildAndRunInstance), SerializeOn: "instance"},
		"terminate_instance":       {Handler: m.tracked("compute_terminate_instance", m.terminateInstance), SerializeOn: "instance"},
		"get_console_output":       {Handler: m.getConsoleOutput},
		"get_instance_diagnostics": {Handler: m.getInstanceDiagnostics},
		"snapshot_instance":        {Handler: m.tracked("compute_snapshot_instance", m.snapshotInstance), SerializeOn: "instance"},
		"cache_images":             {Handler: m.cacheImages},
		"start_instance":           {Handler: m.tracked("compute_start_instance", m.startInstance), SerializeOn: "instance"},
		"stop_instance":            {Handler: m.tracked("compute_stop_instance", m.stopInstance), SerializeOn: "instance"},
		"reboot_instance":          {Handler: m.tracked("compute_reboot_instance", m.rebootInstance), SerializeOn: "instance"},
		"pause_instance":           {Handler: m.tracked("compute_pause_instance", m.freeze(StatePaused)), SerializeOn: "instance"},
		"unpause_instance":         {Handler: m.tracked("compute_unpause_instance", m.thaw(taskUnpausing)), SerializeOn: "instance"},
		"suspend_instance":         {Handler: m.tracked("compute_suspend_instance", m.freeze(StateSuspended)), SerializeOn: "instance"},
		"resume_instance":          {Handler: m.tracked("compute_resume_instance", m.thaw(taskResuming)), SerializeOn: "instance"},
		"rebuild_instance":         {Handler: m.tracked("compute_rebuild_instance", m.rebuildInstance), SerializeOn: "instance"},
		"get_diagnostics":          {Handler: m.getDiagnostics},
		"get_host_uptime":          {Handler: m.getHostUptime},
		"external_instance_event":  {Handler: m.externalInstanceEvent},
		"attach_interface":         {Handler: m.tracked("compute_attach_interface", m.attachInterface), SerializeOn: "instance"},
		"detach_interface":         {Handler: m.tracked("compute_detach_interface", m.detachInterface), SerializeOn: "instance"},
		"set_admin_password":       {Handler: m.tracked("compute_set_admin_password", m.setAdminPassword), SerializeOn: "instance"},
		"get_vnc_console":          {Handler: consoleUnavailable},
		"get_spice_console":        {Handler: consoleUnavailable},
		"get_rdp_console":          {Handler: consoleUnavailable},
		"get_mks_console":          {Handler: consoleUnavailable},
		"get_serial_console":       {Handler: consoleUnavailable},
	}}
	agent := rpc.Endpoint{Namespace: "lxc_agent", Version: "1.0", Methods: map[string]rpc.Method{
		"list_instances": {Handler: m.listInstances},
	}}
	return []rpc.Endpoint{compute, agent}
}

// ImageInUse reports whether any instance record (building ones included)
// uses the image: the image cache never evicts such an image.
func (m *Manager) ImageInUse(id string) bool {
	for _, r := range m.store.List() {
		if r.ImageID == id && r.VMState != StateError {
			return true
		}
	}
	return false
}

// PowerStates counts instances by power state for the density gauge.
func (m *Manager) PowerStates(ctx context.Context) map[string]int {
	out := map[string]int{}
	for _, r := range m.store.List() {
		if r.VMState == StateError {
			continue
		}
		out[m.powerState(ctx, r.UUID).String()]++
	}
	return out
}

func (m *Manager) powerState(ctx context.Context, uuid string) driver.PowerState {
	info, err := m.drv.Info(ctx, uuid)
	if err != nil {
		return driver.NoState
	}
	if info.State == driver.Paused {
		if rec, ok := m.store.Get(uuid); ok && rec.VMState == StateSuspended {
			return driver.Suspended
		}
	}
	return info.State
}

func (m *Manager) logFor(req *rpc.Request, uuid string) *slog.Logger {
	return m.log.With("method", req.Method, "request_id", req.Context.RequestID, "instance_uuid", uuid)
}

// consoleBytes is how much console.log get_console_output returns at most,
// like the libvirt driver's MAX_CONSOLE_BYTES.
const consoleBytes = 100 * 1024

func (m *Manager) getConsoleOutput(ctx context.Context, req *rpc.Request) (any, error) {
	inst, err := instanceArgCtx(ctx, req)
	if err != nil {
		return nil, err
	}
	var tail *int
	var n int
	if ok, err := req.Arg("tail_length", &n); err != nil {
		return nil, err
	} else if ok {
		tail = &n
	}
	if _, known := m.store.Get(inst.UUID); !known {
		if _, err := m.drv.Info(ctx, inst.UUID); err != nil {
			return nil, rpc.InstanceNotFound(inst.UUID, err)
		}
	}
	out, err := readTail(consolePath(m.store.Dir(inst.UUID)), consoleBytes)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("console of %s: %w", inst.UUID, err)
	}
	return consoleText(out, tail), nil
}

// consoleText applies nova's _tail_log and decode('ascii', 'replace').
func consoleText(out []byte, tail *int) string {
	if tail != nil {
		if *tail <= 0 {
			out = nil
		} else {
			lines := strings.Split(string(out), "\n")
			if len(lines) > *tail {
				lines = lines[len(lines)-*tail:]
			}
			out = []byte(strings.Join(lines, "\n"))
		}
	}
	var b strings.Builder
	b.Grow(len(out))
	for _, c := range out {
		if c < 0x80 {
			b.WriteByte(c)
		} else {
			b.WriteRune('\uFFFD')
		}
	}
	return b.String()
}

func readTail(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := int64(0)
	if st.Size() > max {
		off = st.Size() - max
	}
	buf := make([]byte, st.Size()-off)
	n, err := f.ReadAt(buf, off)
	if err != nil && n != len(buf) {
		return nil, err
	}
	return buf[:n], nil
}

// stateMap is nova's power_state.STATE_MAP.
func stateName(ps int) string { return driver.PowerState(ps).String() }

func (m *Manager) getInstanceDiagnostics(ctx context.Context, req *rpc.Request) (any, error) {
	inst, err := instanceArgCtx(ctx, req)
	if err != nil {
		return nil, err
	}
	info, err := m.drv.Info(ctx, inst.UUID)
	if err != nil && !errors.Is(err, driver.ErrNotFound) {
		return nil, err
	}
	if err != nil || info.State != driver.Running {
		// nova-compute names the power state nova has recorded.
		return nil, rpc.InstanceInvalidState(inst.UUID, "power state", stateName(inst.PowerState), "get_diagnostics")
	}
	rec, _ := m.store.Get(inst.UUID)
	return m.diagnostics(ctx, inst.UUID, rec, info)
}

func instanceArg(req *rpc.Request) (*novaobj.Instance, error) {
	raw, ok := req.Args["instance"]
	if !ok || string(raw) == "null" {
		return nil, fmt.Errorf("%w: missing argument instance", rpc.ErrMalformed)
	}
	inst, err := novaobj.DecodeInstance(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", rpc.ErrMalformed, err)
	}
	return inst, nil
}

// Package driver is the contract between the compute manager and the container
// backends (go-lxc, libvirt-lxc, a stateful fake). It imports no backend.
//
// Every method takes a context first; backends return errors wrapping the
// classes in errors.go so that pkg/rpc can map them to nova.exception names.
package driver

import (
	"context"
	"net/netip"
	"time"
)

// PowerState mirrors nova.compute.power_state values so they can be sent
// to nova unchanged.
type PowerState int

const (
	NoState   PowerState = 0
	Running   PowerState = 1
	Paused    PowerState = 3
	Shutdown  PowerState = 4
	Crashed   PowerState = 6
	Suspended PowerState = 7
)

// String returns nova's name for the power state (power_state.STATE_MAP).
func (p PowerState) String() string {
	switch p {
	case Running:
		return "running"
	case Paused:
		return "paused"
	case Shutdown:
		return "shutdown"
	case Crashed:
		return "crashed"
	case Suspended:
		return "suspended"
	default:
		return "pending"
	}
}

// NIC is one container network interface. The host side has already been
// created by pkg/netplug; HostDev is the device the backend moves into the
// container and renames to Name.
type NIC struct {
	HostDev  string         // e.g. "tin3f5c6b2a-9d" (peer of the tap in the bridge)
	Bridge   string         // "brq…", for backends that plug themselves (libvirt)
	Tap      string         // "tap…", host end in the bridge
	Name     string         // "eth0", "eth1", … in VIF order
	MAC      string         // the VIF's MAC
	MTU      int            // the network's MTU, 0 = leave the default
	Addrs    []netip.Prefix // fixed IPs with the subnet prefix length
	Gateway4 netip.Addr     // zero if none
	Gateway6 netip.Addr     // zero if none
	// OVSInterfaceID, for backends that plug themselves, makes the tap a
	// port of the Open vSwitch bridge Bridge for this Neutron port
	// (libvirt's <virtualport type="openvswitch">); empty: a linux bridge.
	OVSInterfaceID string
}

// Spec is everything a backend needs to define a container.
type Spec struct {
	ID          string // instance uuid; also the container name
	Hostname    string
	InstanceDir string // <instances_path>/<uuid>
	Rootfs      string // mounted root filesystem directory
	ConsoleLog  string // file that receives the console output
	Init        string // "/sbin/init" unless the image says otherwise
	NICs        []NIC
	// Limits are applied before init runs (and can change live, see LimitSetter).
	Limits
	// IDMaps, when set, run the container unprivileged in a user namespace
	// (nova's [libvirt] uid_maps / gid_maps).
	IDMaps []IDMap
	// Name is the backend-visible name where it differs from ID (libvirt:
	// nova's instance-%08x); "" = ID.
	Name string
}

// Limits are the resource limits of a container, from the flavor, its
// quota:* extra specs and the agent's configuration. Zero means the default.
type Limits struct {
	MemoryMB    int // hard memory limit
	SwapMB      int // swap on top of MemoryMB; 0 = none
	VCPUs       int // CPU limit: quota = VCPUs * period unless CPUQuotaUS is set
	CPUShares   int // quota:cpu_shares (relative weight); 0 = 1024 per vCPU
	CPUQuotaUS  int // quota:cpu_quota in microseconds; 0 = VCPUs * period; -1 = unlimited
	CPUPeriodUS int // quota:cpu_period in microseconds; 0 = 100000
	Pids        int // maximum number of tasks (quota:pids, [lxc_agent] pids_limit); 0 = unlimited
	IOWeight    int // block I/O weight 10..1000 (quota:disk_io_weight); 0 = the default
}

// IDMap is one user-namespace mapping range, as in nova's "guest:host:count".
type IDMap struct {
	Kind        byte // 'u' or 'g'
	ContainerID int
	HostID      int
	Count       int
}

// LimitSetter is implemented by backends that change limits of a running
// container.
type LimitSetter interface {
	SetLimits(ctx context.Context, id string, l Limits) error
}

// Info is the state of one container as the backend sees it.
type Info struct {
	ID    string
	State PowerState
	// InitPID is the host pid of the container's init, 0 if not running.
	InitPID int
}

// Stats are the basic figures nova's Diagnostics object carries.
type Stats struct {
	CPUTime       time.Duration // total CPU time used by the container
	MemoryBytes   uint64        // current memory usage
	MemoryLimit   uint64        // hard limit, 0 if unlimited
	NICs          []NICStats
	UptimeSeconds int64
}

// NICStats are the counters of one container NIC, read on the host end.
type NICStats struct {
	MAC       string
	RxOctets  uint64
	RxPackets uint64
	RxErrors  uint64
	RxDrop    uint64
	TxOctets  uint64
	TxPackets uint64
	TxErrors  uint64
	TxDrop    uint64
}

// Driver is the core lifecycle every backend implements.
type Driver interface {
	// Name is a short backend name ("lxc", "libvirt-lxc", "fake") used in
	// metrics and logs.
	Name() string
	// Create defines the container from spec. ErrAlreadyExists if defined.
	Create(ctx context.Context, spec Spec) error
	// Start starts a defined container and returns once init runs.
	Start(ctx context.Context, id string) error
	// Stop asks init to halt and kills the container after timeout.
	// A zero timeout kills at once. Stopping a stopped container is not an error.
	Stop(ctx context.Context, id string, timeout time.Duration) error
	// Destroy stops (by force) and undefines the container. nil if it does
	// not exist.
	Destroy(ctx context.Context, id string) error
	// Info reports the container's state; ErrNotFound if it is not defined.
	Info(ctx context.Context, id string) (Info, error)
	// List returns the ids of every container this backend manages.
	List(ctx context.Context) ([]string, error)
}

// StatsReader is implemented by backends that can report usage.
type StatsReader interface {
	Stats(ctx context.Context, id string) (Stats, error)
}

// Pauser is implemented by backends that can freeze a container's processes
// (pause, and a consistent snapshot).
type Pauser interface {
	Pause(ctx context.Context, id string) error
	Unpause(ctx context.Context, id string) error
}

// NICPlugger is implemented by backends that create each NIC's veth pair
// themselves (libvirt-lxc makes the tap in the bridge from <interface
// type="bridge">): the agent then only ensures the bridge exists.
type NICPlugger interface {
	PlugsNICs() bool
}

// NICHotplugger is implemented by backends that attach NICs to and detach
// them from running containers. An attached NIC is also added to the
// container's definition (a detached one removed), so a restart keeps the
// change. A stopped container only has its definition changed.
type NICHotplugger interface {
	AttachNIC(ctx context.Context, id string, nic NIC) error
	DetachNIC(ctx context.Context, id string, nic NIC) error
}

// Package libvirtlxc is the driver.Driver backend that runs instances as
// libvirt LXC domains (libvirtd's LXC driver, libvirt_lxc controllers), the
// way nova 26.2.2's libvirt driver does with [libvirt] virt_type = lxc. It
// is the only package that links libvirt (cgo, libvirt.org/go/libvirt);
// the domain XML is built from libvirt.org/go/libvirtxml structs.
//
// # The domain
//
// Create defines exactly the domain nova generates (wire-protocol.md §6.1):
//
//	<domain type="lxc">
//	  <name>   Spec.Name (nova's instance-%08x), else Spec.ID
//	  <uuid>   Spec.ID
//	  <memory> Spec.MemoryMB*1024 KiB (the host's memory if 0)
//	  <vcpu>   Spec.VCPUs (1 if 0)
//	  <metadata><lxcagent:instance xmlns:lxcagent="https://lxc-agent/instance/1"/></metadata>
//	  <os><type>exe</type><cmdline>console=tty0 console=ttyS0 console=hvc0</cmdline>
//	      <init>Spec.Init</init><initenv name="product_name">OpenStack Nova</initenv></os>
//	  <cputune> shares (CPUShares, else 1024 per vCPU), period/quota (quota:cpu_*, else VCPUs CPUs)
//	  <memtune> hard_limit = MemoryMB, swap_hard_limit = MemoryMB+SwapMB (no swap by default)
//	  <blkiotune><weight> IOWeight, when set
//	  <clock offset="utc"/>
//	  <devices>
//	    <filesystem type="mount"><source dir=Spec.Rootfs/><target dir="/"/></filesystem>
//	    <interface type="bridge"> per NIC: <mac/>, <source bridge=NIC.Bridge/>, <mtu/>,
//	        <target dev=NIC.Tap/>, plus <ip/> per address and a default <route/> per gateway
//	    <console type="pty"><log file=Spec.ConsoleLog append="off"/></console>
//	    <controller type="usb" index="0" model="none"/>
//	  </devices>
//	  <idmap> from Spec.IDMaps (nova's uid_maps/gid_maps)
//	</domain>
//
// With <idmap>, libvirt_lxc starts init in a user namespace but changes no
// file: the rootfs must already be owned by the mapped ids. pkg/rootfs
// (WithIDMap) makes it so without a chown of the image, with an idmapped
// mount as the overlay's lower layer; that overlay is the <filesystem>
// source as for any other container (drivertest's Unprivileged subtest).
//
// nova's own domain has neither the bandwidth derived from the vCPUs nor
// the memtune: the agent adds them so that both backends enforce the same
// limits (one conformance suite). Two limits libvirt 9.0 cannot express
// are recorded as attributes of the marker and applied by Start: pids
// (libvirt puts LXC domains in no pids cgroup on a v1/hybrid host: the
// domain is frozen right after start, a pids cgroup is made at the path of
// its memory cgroup with pids.max, its processes are moved in, and it is
// thawed; the cgroup is removed when the domain stops) and "no memory
// limit" (libvirt always applies <memory>; Start lifts it live).
//
// The marker in <metadata> is what makes a domain the agent's: List only
// returns marked domains, and every per-instance operation treats an
// unmarked domain as not found (Destroy leaves it alone); Create still
// refuses a uuid or name that any domain uses.
//
// # What the agent does differently with this backend
//
//   - NICs: libvirt creates each veth pair itself when the domain starts,
//     names its host end after <target dev> (the tap…) and enslaves it to
//     <source bridge> (the brq…); the container end becomes eth0, eth1, …
//     with the MAC, and libvirt configures the <ip> addresses and <route>s
//     inside. The agent must therefore NOT create the tap/tin veth pair
//     (pkg/netplug) for this backend — only make sure the brq… bridge
//     exists (created if missing, as os-vif does for nova) — and fill in
//     NIC.Bridge and NIC.Tap; NIC.HostDev is not used. libvirt deletes the
//     pair when the container stops.
//   - MTU: libvirt 9.0's LXC driver ignores <mtu> (both ends get 1500);
//     Start sets the MTU on the tap and on the container's interface itself
//     (netlink, in the container's network namespace), before it returns.
//   - Console: libvirt's LXC driver does not write <log file> (it only
//     offers the pty, <source path='/dev/pts/N'>). The driver reads that pty
//     in raw mode and appends to the log file, from Start on, and again for
//     every running domain when New is called after an agent restart. The
//     log is appended across restarts (append="off" is nova's spelling;
//     libvirt ignores it). `virsh console` competes for the same pty.
//   - Halt: Stop sends init SIGPWR (SIGRTMIN+3 if init blocks it, i.e.
//     systemd), as liblxc does, because libvirt's shutdown modes do not fit
//     busybox init: VIR_DOMAIN_SHUTDOWN_SIGNAL sends SIGTERM, which busybox
//     init treats as "reboot", and libvirt then restarts the domain
//     (on_reboot=restart); the default (initctl, then SIGTERM) left a
//     busybox container running. Only when init is not a local process
//     (a remote URI) is virDomainShutdownFlags(0) used.
//   - Hostname: libvirt sets the container's hostname to the domain name;
//     Spec.Hostname is not used.
//   - Limits: the vCPU count does not limit CPU time (nova's behaviour;
//     go-lxc derives a quota from it); Pids and IOWeight have no libvirt
//     LXC equivalent and are ignored with a warning; SwapMB = 0 leaves swap
//     unlimited (no <memtune>, as nova).
//   - Names: the domain is found by uuid (Spec.ID) for every operation;
//     the agent passes nova's instance-%08x as Spec.Name so that domains
//     look like nova's.
//   - Init pid, uptime, MTU and halt rely on the domain id being the host
//     pid of the libvirt_lxc controller (libvirt's LXC driver) and init its
//     child: true whenever libvirtd runs on the agent's host.
//
// # libvirtd on hybrid-cgroup hosts (and root filesystem mounts)
//
// libvirt 9.0's LXC driver fails to start any container on a host with the
// hybrid cgroup layout (v1 controllers plus an empty cgroup2 mount at
// /sys/fs/cgroup/unified) with "Unable to create directory
// /sys/fs/cgroup/unified/machine…". The remedy is to run libvirtd (and
// virtlogd) in a mount namespace of their own without that mount. The
// namespace must be a SLAVE of the host's mounts, and "/" must be shared
// before it is made, so that the root filesystems the agent mounts later
// (image base + overlay under instances_path) propagate into libvirtd's
// namespace; a libvirt_lxc controller only sees mounts of its namespace:
//
//	mount --make-rshared /      # systemd hosts: already the case
//	mkdir -p /var/log/libvirt /run/libvirt
//	getent passwd libvirt-qemu || useradd --system --no-create-home libvirt-qemu
//	unshare --mount --propagation slave sh -c '
//	    umount /sys/fs/cgroup/unified
//	    exec sleep infinity' &            # holds the namespace
//	nsenter -t $! -m virtlogd -d
//	nsenter -t $! -m libvirtd -d
//
// (With systemd, a drop-in for libvirtd.service with PrivateMounts=yes,
// which makes the unit's namespace a slave of the rshared "/", and
// ExecStartPre=-/bin/umount /sys/fs/cgroup/unified should do the same; that
// variant is not tested here.) A libvirt network autostart (virbr0, dnsmasq)
// is not needed by this backend; the test harness masks it. The agent
// itself must make its mounts in the host's namespace (or in a namespace
// that propagates to it), never in a private one.
//
// internal/testenv.StartLibvirtd does all this for the tests, with private
// /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and a
// private socket (URI lxc:///system?socket=<dir>/sock/libvirt-sock).
//
// Building this package needs cgo and libvirt's headers (libvirt-dev).
package libvirtlxc

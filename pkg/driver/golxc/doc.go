// Package golxc is the driver.Driver backend that runs instances as LXC
// system containers through liblxc (github.com/lxc/go-lxc).
//
// # Layout
//
// Every container lives in <lxcpath>/<id>/ (id = instance uuid):
//
//	config    the liblxc configuration written by Create
//	spec.json the driver.Spec the container was created from
//	lxc.log   liblxc's log for the container (level WARN)
//
// The root filesystem (Spec.Rootfs) is owned by the caller and only
// referenced (lxc.rootfs.path = dir:<Rootfs>, lxc.rootfs.managed = 0).
// Destroy removes <lxcpath>/<id> itself and never descends into the rootfs.
//
// # The forklxc helper
//
// liblxc's start forks twice to become the container monitor. Forking the
// multi-threaded agent would copy its state into that long-lived monitor, so
// Start runs a helper process instead (the LXD/Incus "forkstart" pattern): the
// agent binary re-executed as
//
//	<agent> forklxc start <name> <lxcpath> <configfile>
//
// in its own session, which loads the container, starts it daemonized and
// exits once it is RUNNING. The agent's main must dispatch this subcommand
// before it does anything else:
//
//	func main() {
//		if len(os.Args) > 1 && os.Args[1] == golxc.HelperSubcommand {
//			os.Exit(golxc.ForkMain(os.Args[2:]))
//		}
//		...
//		drv, err := golxc.New(lxcpath, golxc.SelfExecHelper(), logger)
//	}
//
// Every other operation (state, stop, freeze, cgroup reads) talks to the
// running monitor over its command socket and does not fork. Besides the
// fork, liblxc moves the process calling start (the "transient pid") into
// the container's lxc.monitor.<name> cgroup in every hierarchy: one more
// reason why that must be the helper and not the agent.
//
// # Limits
//
// driver.Limits become cgroup settings in the config, so liblxc writes them
// into the container's cgroup before init runs; SetLimits (driver.LimitSetter)
// changes them on a running container through liblxc's set_cgroup_item and
// rewrites config and spec.json for the next start. New detects, per
// controller, the hierarchy that carries it (v1, v2, or hybrid: v1
// controllers plus a cgroup2 mount) and the files the kernel offers:
//
//	limit           cgroup v1                          cgroup v2
//	MemoryMB        memory.limit_in_bytes              memory.max
//	SwapMB          memory.memsw.limit_in_bytes        memory.swap.max
//	                = MemoryMB+SwapMB (needs memsw)    = SwapMB
//	CPUShares/VCPUs cpu.shares (1024 per vCPU)         cpu.weight (shares*100/1024)
//	CPUQuotaUS      cpu.cfs_quota_us (-1 unlimited)    cpu.max "<quota|max> <period>"
//	CPUPeriodUS     cpu.cfs_period_us (100000)
//	Pids            pids.max                           pids.max
//	IOWeight        blkio.bfq.weight or blkio.weight   io.bfq.weight or io.weight
//
// A limit the host cannot enforce (no memsw accounting, no pids controller,
// no weight file) is left out of the config and logged: liblxc fails a start
// whose lxc.cgroup.* file does not exist.
//
// # Unprivileged containers
//
// A spec with IDMaps (nova's [libvirt] uid_maps and gid_maps) becomes
// lxc.idmap entries: init runs in a user namespace as, e.g., host uid
// 100000, root only inside. What that needs:
//
//   - A rootfs already owned by the mapped ids. The driver never chowns
//     it; Create (and Start) refuse one whose top directory is owned by an
//     id outside the map. pkg/rootfs (WithIDMap) makes such a rootfs
//     without touching the image: the overlay's lower layer is an idmapped
//     mount of the base (Linux 5.19+; ext4, xfs, btrfs, squashfs, tmpfs),
//     shared by all instances of the image with that map, and only the
//     empty upper directory is chowned, once. Where the kernel or the
//     filesystem cannot idmap, it makes one shifted copy of the base per
//     map instead (disk space and a one-time copy per image).
//     lxc.rootfs.options = idmap=container (liblxc idmapping the rootfs
//     mount itself) is no alternative: the rootfs is an overlayfs, and
//     overlayfs cannot be idmapped (EINVAL from mount_setattr).
//   - /etc/subuid and /etc/subgid ranges for root covering the host ids,
//     when the setuid newuidmap and newgidmap (package uidmap) are
//     installed: liblxc then writes the maps through them even as root,
//     and they refuse ranges not granted there ("root:100000:65536").
//     CheckIDMaps tells (the agent calls it at startup).
//   - Every directory above the lxcpath and the rootfs searchable by the
//     mapped root (o+x): liblxc resolves them from inside the namespace.
//     New makes the lxcpath 0711; Create checks both paths.
//
// What it costs: one idmapped mount per image and map, made by the first
// instance (about 27 ms, mostly the user namespace: see pkg/rootfs
// BenchmarkPrepareReleaseIDMapped; later instances +0.4 ms). Starts of a
// busybox container on the test host (kernel 6.18, hybrid cgroups, idle)
// take 70-85 ms against 50-60 ms privileged (drivertest's Unprivileged
// subtest logs both): liblxc's user-namespace setup, two newuidmap runs,
// cgroup chowns, device bind mounts instead of mknod. Files the
// container creates are stored with host ids in the upper directory;
// snapshots map them back (pkg/snapshot WriteTarUnshifted). Files the
// agent writes into the rootfs as host root appear as nobody (65534)
// inside. Inside, mknod and module loading are refused and /proc and /sys
// are the namespace's.
//
// # liblxc 5.0 behaviour this package works around or relies on
//
//   - cgroup keys: lxc.cgroup2.* is applied only on a pure cgroup2 host and
//     ignored (WARN "Ignoring cgroup2 limits on legacy cgroup system") on
//     hybrid ones; lxc.cgroup.<file> is written into whichever hierarchy
//     carries the controller named by the file, the cgroup2 mount of a
//     hybrid host included, and is ignored on a pure cgroup2 host. So v2
//     file names go under lxc.cgroup.* on hybrid hosts (cgroupKey).
//   - Destroy: liblxc's destroy deletes a "dir:" rootfs recursively; with
//     lxc.rootfs.managed = 0 it deletes nothing at all (not even
//     <lxcpath>/<id>). Hence managed = 0 plus our own removal.
//   - ipv4.address without a broadcast gets a wrong one (0.0.0.255 for a
//     /24); the broadcast address is always written explicitly.
//   - A failed start leaves an empty lxc.monitor.<id> cgroup behind (the
//     monitor's rmdir races with the exiting helper); Start and Destroy
//     remove such empty leftovers.
//   - Console: lxc.console.logfile alone is enough for a daemonized
//     container; the monitor copies the console pty into the file (O_APPEND,
//     no size limit, kept across restarts).
//   - Shutdown: the halt signal is SIGPWR (busybox init halts on it, running
//     its ::shutdown: actions), or SIGRTMIN+3 if init blocks it (systemd).
//   - Phys NICs: on stop the device is moved back to the host under its
//     original name with its MTU restored, down, without addresses, but
//     keeping the MAC set by lxc.net.N.hwaddr.
//
// Building this package needs cgo and liblxc's headers (lxc-dev).
package golxc

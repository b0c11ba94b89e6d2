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
// # liblxc 5.0 behaviour this package works around or relies on
//
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

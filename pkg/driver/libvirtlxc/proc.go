package libvirtlxc

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The domain id libvirt's LXC driver reports for a running domain is the
// pid of its libvirt_lxc controller, and the container's init is that
// controller's child, pid 1 of a new pid namespace. Both are host pids when
// libvirtd runs on this host (lxc:///), which is what the functions below
// rely on; they report errors (and the driver falls back to libvirt's own
// calls) otherwise.

const controllerComm = "libvirt_lxc"

// sigrtmin is the kernel's SIGRTMIN (glibc reserves 32 and 33).
const sigrtmin = 34

// isLocal reports whether pid is a local libvirt_lxc controller.
func isLocal(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.TrimSpace(string(b)) == controllerComm
}

// findInit returns the host pid of the init the controller ctrl runs.
func findInit(ctrl int) (int, error) {
	if !isLocal(ctrl) {
		return 0, fmt.Errorf("pid %d is not a local %s process", ctrl, controllerComm)
	}
	var kids []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", ctrl))
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", ctrl, t.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				kids = append(kids, n)
			}
		}
	}
	for _, k := range kids {
		if !nsPidIsOne(k) {
			continue
		}
		// Until it execs init, the child is a clone of the controller
		// setting up the container.
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", k)); err != nil || strings.TrimSpace(string(b)) == controllerComm {
			return 0, fmt.Errorf("controller %d: container %d has not exec'd init yet", ctrl, k)
		}
		return k, nil
	}
	return 0, fmt.Errorf("controller %d has no init child yet", ctrl)
}

// nsPidIsOne reports whether pid is pid 1 of its innermost pid namespace.
func nsPidIsOne(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "NSpid:"); ok {
			f := strings.Fields(rest)
			return len(f) >= 2 && f[len(f)-1] == "1"
		}
	}
	return false
}

// waitInit polls findInit for up to patience.
func waitInit(ctx context.Context, ctrl int, patience time.Duration) (int, error) {
	deadline := time.Now().Add(patience)
	for delay := 2 * time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		pid, err := findInit(ctrl)
		if err == nil || !isLocal(ctrl) || time.Now().After(deadline) {
			return pid, err
		}
		if err := sleepCtx(ctx, delay); err != nil {
			return 0, err
		}
	}
}

// haltSignal picks the signal that makes init halt, as liblxc does:
// SIGRTMIN+3 if init blocks it (systemd, which reads its signals from a
// signalfd), else SIGPWR (busybox init halts on it and runs its
// ::shutdown: actions; SIGTERM would make it reboot).
func haltSignal(pid int) syscall.Signal {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "SigBlk:"); ok {
				mask, err := strconv.ParseUint(strings.TrimSpace(rest), 16, 64)
				if err == nil && mask&(1<<(sigrtmin+3-1)) != 0 {
					return syscall.Signal(sigrtmin + 3)
				}
			}
		}
	}
	return syscall.SIGPWR
}

// setMTUs sets the MTU of each NIC on both ends of its veth: the tap on
// the host and the interface inside the container (libvirt 9.0's LXC
// driver creates the pair with the default MTU whatever <mtu> says).
func setMTUs(initPID int, nics []liveNIC) error {
	var todo []liveNIC
	for _, n := range nics {
		if n.MTU > 0 {
			todo = append(todo, n)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	for _, n := range todo {
		l, err := netlink.LinkByName(n.Tap)
		if err != nil {
			return fmt.Errorf("mtu: host end %s: %w", n.Tap, err)
		}
		if l.Attrs().MTU != n.MTU {
			if err := netlink.LinkSetMTU(l, n.MTU); err != nil {
				return fmt.Errorf("mtu %d on %s: %w", n.MTU, n.Tap, err)
			}
		}
	}
	ns, err := netns.GetFromPid(initPID)
	if err != nil {
		return fmt.Errorf("mtu: network namespace of init %d: %w", initPID, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("mtu: netlink in init %d's namespace: %w", initPID, err)
	}
	defer h.Close()
	for _, n := range todo {
		l, err := h.LinkByName(n.Guest)
		if err != nil {
			return fmt.Errorf("mtu: container interface %s: %w", n.Guest, err)
		}
		if l.Attrs().MTU != n.MTU {
			if err := h.LinkSetMTU(l, n.MTU); err != nil {
				return fmt.Errorf("mtu %d on container %s: %w", n.MTU, n.Guest, err)
			}
		}
	}
	return nil
}

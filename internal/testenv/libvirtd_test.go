package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestLibvirtd(t *testing.T) {
	l := Libvirtd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// What the brief asks: virsh -c <uri> version connects to this daemon.
	out, err := exec.CommandContext(ctx, "virsh", "-c", l.URI(), "version").CombinedOutput()
	if err != nil {
		t.Fatalf("virsh -c %s version: %v: %s", l.URI(), err, out)
	}
	t.Logf("virsh version:\n%s", out)
	if !strings.Contains(string(out), "Running hypervisor: LXC") {
		t.Errorf("virsh version does not report the LXC driver")
	}
	if !strings.HasPrefix(l.SocketPath(), l.Dir+"/") {
		t.Errorf("socket %s is not under %s", l.SocketPath(), l.Dir)
	}

	pid, holder := l.Pid(), l.NamespacePid()
	if pid == 0 || holder == 0 || l.VirtlogdPid() == 0 {
		t.Fatalf("pids: libvirtd %d, holder %d, virtlogd %d", pid, holder, l.VirtlogdPid())
	}
	// Own process group, own mount namespace shared with virtlogd.
	for _, p := range []int{pid, l.VirtlogdPid(), holder} {
		if st, ok := readStat(p); !ok || st.pgid != p {
			t.Errorf("pid %d: process group %d, want its own", p, st.pgid)
		}
	}
	self, _ := os.Readlink("/proc/self/ns/mnt")
	for _, p := range []int{pid, l.VirtlogdPid()} {
		ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", p))
		if ns != l.mntNS || ns == self {
			t.Errorf("pid %d: mount namespace %s, want %s (not the test's %s)", p, ns, l.mntNS, self)
		}
	}

	// The namespace: no cgroup2 unified mount, private libvirt dirs.
	mounts, err := MountsUnderPid(pid, "/")
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(mounts, unifiedCgroupMount) {
		t.Errorf("%s is mounted in libvirtd's namespace", unifiedCgroupMount)
	}
	for _, d := range libvirtHostDirs {
		if !slices.Contains(mounts, d.host) {
			t.Errorf("%s is not a private mount in libvirtd's namespace", d.host)
		}
	}
	if hostMounts, _ := MountsUnder("/sys/fs/cgroup"); slices.Contains(hostMounts, unifiedCgroupMount) {
		t.Logf("host keeps %s (hybrid layout); libvirtd does not see it", unifiedCgroupMount)
	}
	if host, _ := MountsUnder("/etc/libvirt"); len(host) > 0 {
		t.Errorf("the namespace's mounts leaked to the host: %v", host)
	}
	if _, err := os.Stat(filepath.Join(l.Dir, "run", "lxc")); err != nil {
		t.Errorf("the LXC driver's state dir is not in Dir/run: %v", err)
	}

	// No libvirt network was started.
	if links, _ := LinksWithPrefix("virbr"); len(links) > 0 {
		t.Errorf("libvirt network links appeared: %v", links)
	}
	if out, err := l.Virsh(ctx, "net-list", "--all", "--name"); err == nil && strings.TrimSpace(out) != "" {
		t.Errorf("libvirt networks defined: %s", out)
	}

	// Mounts made on the host after libvirtd started propagate into its
	// namespace (slave of a shared "/"), and so do their unmounts.
	if ok, err := RootShared(); err != nil || !ok {
		t.Errorf("/ is not shared after StartLibvirtd: %v, %v", ok, err)
	}
	mnt := filepath.Join(t.TempDir(), "later")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "seen"), []byte("yes"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root%s/seen", pid, mnt)); err != nil || string(b) != "yes" {
		t.Errorf("a tmpfs mounted after libvirtd started is not visible to it: %q, %v", b, err)
	}
	if err := syscall.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if m, _ := MountsUnderPid(pid, mnt); len(m) > 0 {
		t.Errorf("the unmount did not propagate into libvirtd's namespace: %v", m)
	}

	// A daemon restart keeps the namespace.
	if err := l.RestartDaemon(ctx); err != nil {
		t.Fatalf("RestartDaemon: %v", err)
	}
	if l.Pid() == pid || l.Pid() == 0 {
		t.Errorf("after RestartDaemon pid %d (was %d)", l.Pid(), pid)
	}
	if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", l.Pid())); ns != l.mntNS {
		t.Errorf("restarted libvirtd in namespace %s, want %s", ns, l.mntNS)
	}
	if _, err := l.Virsh(ctx, "list", "--all"); err != nil {
		t.Errorf("after restart: %v", err)
	}

	// Stop leaves nothing running; a second Stop is a no-op.
	pids := []int{l.Pid(), l.VirtlogdPid(), holder}
	if err := l.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	for _, p := range pids {
		if st, ok := readStat(p); ok && st.state != "Z" {
			t.Errorf("pid %d still runs after Stop (%s)", p, st.state)
		}
	}
	if err := l.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestLibvirtdRejectsDirUnderReplacedPaths(t *testing.T) {
	RequireRoot(t)
	if _, err := StartLibvirtd(context.Background(), "/run/libvirt/x"); err == nil || !strings.Contains(err.Error(), "lies under") {
		t.Errorf("StartLibvirtd under /run/libvirt: %v", err)
	}
}

func TestRootSharedParses(t *testing.T) {
	if _, err := RootShared(); err != nil {
		t.Fatal(err)
	}
}

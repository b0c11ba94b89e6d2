package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	libvirtdBin  = "/usr/sbin/libvirtd"
	virtlogdBin  = "/usr/sbin/virtlogd"
	unshareBin   = "/usr/bin/unshare"
	nsenterBin   = "/usr/bin/nsenter"
	virshBin     = "/usr/bin/virsh"
	libvirtdUser = "libvirt-qemu"

	// LibvirtdStartTimeout bounds StartLibvirtd when the context has no
	// earlier deadline (libvirtd usually answers after about 1 s).
	LibvirtdStartTimeout = 60 * time.Second
	libvirtdStopTimeout  = 15 * time.Second
	unifiedCgroupMount   = "/sys/fs/cgroup/unified"
)

// libvirtHostDirs are the directories of the host's libvirt that a private
// libvirtd must not share: inside its mount namespace each one is replaced
// by a bind mount of a directory under LibvirtdServer.Dir. /etc/libvirt
// holds the daemon configuration and the persistent domain definitions
// (/etc/libvirt/lxc), and, by being private, no libvirt network definition
// at all: nothing (virbr0, dnsmasq) can be autostarted. /run/libvirt holds
// the drivers' state (/run/libvirt/lxc: controller pid files, sockets,
// status XML) and virtlogd's socket.
var libvirtHostDirs = []struct{ host, sub string }{
	{"/etc/libvirt", "etc"},
	{"/run/libvirt", "run"},
	{"/var/lib/libvirt", "lib"},
	{"/var/log/libvirt", "log"},
	{"/var/cache/libvirt", "cache"},
}

// LibvirtdServer is a private libvirtd (Debian's libvirt 9.0, LXC driver)
// and its virtlogd, both in a mount namespace of their own:
//
//   - The namespace is made by a holder process (`unshare --mount
//     --propagation slave`, then `sleep`), and the daemons are started in it
//     with `nsenter -t <holder> -m`, so libvirtd can be restarted in the same
//     namespace (RestartDaemon) while its containers keep running.
//   - It is a SLAVE of the host's mounts: "/" is made rshared first (as it is
//     on a systemd host), so a root filesystem that a test (or the agent)
//     mounts on the host after libvirtd started is visible to libvirtd and
//     its libvirt_lxc controllers, while nothing mounted inside leaks out.
//   - /sys/fs/cgroup/unified (the empty cgroup2 mount of a hybrid cgroup
//     host) is unmounted inside: libvirt 9.0's LXC driver fails with
//     "Unable to create directory /sys/fs/cgroup/unified/..." otherwise.
//   - /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and
//     /var/cache/libvirt are bind mounts of Dir/etc, Dir/run, Dir/lib,
//     Dir/log and Dir/cache: the daemon sees no host libvirt configuration,
//     defines its domains in Dir/etc/lxc and keeps its state in Dir/run.
//     libvirt's LXC driver has no option for those paths (they are compiled
//     in for a privileged daemon); the namespace is what makes them private.
//   - Clients connect through Dir/sock/libvirt-sock (unix_sock_dir), which
//     is the same file in both namespaces: URI() is
//     "lxc:///system?socket=<Dir>/sock/libvirt-sock".
//
// The host is changed in three ways, all idempotent and left in place:
// "/" becomes rshared, the system user libvirt-qemu is created (libvirtd's
// QEMU driver refuses to initialize without it, and libvirtd does not start
// if a driver fails), and the mount points /run/libvirt, /var/lib/libvirt,
// /var/log/libvirt and /var/cache/libvirt are created (empty) if missing.
//
// The processes run in their own process groups and are stopped by pid
// (SIGTERM, then SIGKILL), never by name; see Stop.
type LibvirtdServer struct {
	Dir string
	// Startup is how long libvirtd took from exec to answering virsh.
	Startup time.Duration

	mu       sync.Mutex
	holder   *proc
	virtlogd *proc
	libvirtd *proc
	mntNS    string // "mnt:[…]" of the holder's namespace
}

// StartLibvirtd starts a private virtlogd and libvirtd with their state
// under dir (created if needed; it must not lie under one of the libvirt
// directories it replaces). It returns once `virsh -c URI() version`
// answers. Needs root.
func StartLibvirtd(ctx context.Context, dir string) (*LibvirtdServer, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("libvirtd: needs root (euid %d)", os.Geteuid())
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	for _, d := range libvirtHostDirs {
		if isUnder(canonical(dir), d.host) {
			return nil, fmt.Errorf("libvirtd: dir %s lies under %s, which the daemon's namespace replaces", dir, d.host)
		}
	}
	if strings.ContainsAny(dir, "\"\\\n") {
		return nil, fmt.Errorf("libvirtd: dir %q has characters libvirt's config syntax cannot hold", dir)
	}
	for _, b := range []string{libvirtdBin, virtlogdBin, unshareBin, nsenterBin, virshBin} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("libvirtd: %w (packages libvirt-daemon, libvirt-daemon-driver-lxc, libvirt-clients, util-linux)", err)
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, LibvirtdStartTimeout)
		defer cancel()
	}
	if err := ensureSystemUser(libvirtdUser); err != nil {
		return nil, err
	}
	if err := ensureRootShared(); err != nil {
		return nil, err
	}
	for _, d := range libvirtHostDirs {
		if err := os.MkdirAll(filepath.Join(dir, d.sub), 0o755); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(d.host, 0o755); err != nil {
			return nil, fmt.Errorf("libvirtd: mount point: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "sock"), 0o700); err != nil {
		return nil, err
	}
	l := &LibvirtdServer{Dir: dir}
	if err := l.writeConfig(); err != nil {
		return nil, err
	}
	if err := l.startNamespace(ctx); err != nil {
		return nil, err
	}
	if err := l.startVirtlogd(ctx); err != nil {
		_ = l.holder.stop(5 * time.Second)
		return nil, err
	}
	if err := l.startLibvirtd(ctx); err != nil {
		_ = l.virtlogd.stop(5 * time.Second)
		_ = l.holder.stop(5 * time.Second)
		return nil, err
	}
	return l, nil
}

// URI is the libvirt connection URI of this daemon.
func (l *LibvirtdServer) URI() string {
	return "lxc:///system?socket=" + l.SocketPath()
}

// SocketPath is libvirtd's read-write unix socket.
func (l *LibvirtdServer) SocketPath() string { return filepath.Join(l.Dir, "sock", "libvirt-sock") }

// LogFile is libvirtd's own log (level warning).
func (l *LibvirtdServer) LogFile() string { return filepath.Join(l.Dir, "libvirtd.log") }

// ControllerLog is the libvirt_lxc controller log of domain name (the
// daemon's /var/log/libvirt/lxc/<name>.log).
func (l *LibvirtdServer) ControllerLog(name string) string {
	return filepath.Join(l.Dir, "log", "lxc", name+".log")
}

// Pid is libvirtd's pid, 0 if it is not running.
func (l *LibvirtdServer) Pid() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.libvirtd == nil || l.libvirtd.exited() {
		return 0
	}
	return l.libvirtd.Pid()
}

// VirtlogdPid is virtlogd's pid, 0 if it is not running.
func (l *LibvirtdServer) VirtlogdPid() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.virtlogd == nil || l.virtlogd.exited() {
		return 0
	}
	return l.virtlogd.Pid()
}

// NamespacePid is the pid of the process holding the daemons' mount
// namespace (`nsenter -t <pid> -m` enters it; /proc/<pid>/mountinfo is
// what libvirtd sees), 0 after Stop.
func (l *LibvirtdServer) NamespacePid() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.holder == nil || l.holder.exited() {
		return 0
	}
	return l.holder.Pid()
}

// Virsh runs virsh against this daemon and returns its combined output.
func (l *LibvirtdServer) Virsh(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, virshBin, append([]string{"-q", "-c", l.URI()}, args...)...)
	cmd.Env = serviceEnv([]string{"LIBVIRT_", "VIRSH_"})
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (l *LibvirtdServer) writeConfig() error {
	etc := filepath.Join(l.Dir, "etc")
	files := map[string]string{
		"libvirtd.conf": fmt.Sprintf(`# private test libvirtd (lxc-agent internal/testenv)
unix_sock_dir = "%[1]s/sock"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:%[1]s/libvirtd.log"
`, l.Dir),
		"virtlogd.conf": fmt.Sprintf("log_outputs = \"3:file:%s/virtlogd.log\"\n", l.Dir),
		// No AppArmor/SELinux labelling of the test containers.
		"lxc.conf": "security_driver = \"none\"\n",
		// The QEMU driver is loaded too; it must not try to label anything.
		"qemu.conf":    "security_driver = \"none\"\n",
		"libvirt.conf": "",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// namespaceScript prepares the mount namespace and becomes its holder.
// $1 is Dir; the rest are "hostdir=sub" pairs.
const namespaceScript = `set -e
d=$1; shift
if mountpoint -q ` + unifiedCgroupMount + `; then
	umount ` + unifiedCgroupMount + ` 2>/dev/null || umount -l ` + unifiedCgroupMount + `
fi
for p in "$@"; do
	mount --bind "$d/${p#*=}" "${p%%=*}"
done
exec sleep 2147483647
`

func (l *LibvirtdServer) startNamespace(ctx context.Context) error {
	args := []string{unshareBin, "--mount", "--propagation", "slave", "/bin/sh", "-c", namespaceScript, "sh", l.Dir}
	for _, d := range libvirtHostDirs {
		args = append(args, d.host+"="+d.sub)
	}
	p, err := startProc("libvirt-mntns", filepath.Join(l.Dir, "mntns.out"), serviceEnv(nil), args...)
	if err != nil {
		return err
	}
	self, _ := os.Readlink("/proc/self/ns/mnt")
	for {
		ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", p.Pid()))
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.Pid()))
		if ns != "" && ns != self && strings.TrimSpace(string(comm)) == "sleep" {
			l.holder, l.mntNS = p, ns
			return l.checkNamespace()
		}
		if p.exited() {
			return fmt.Errorf("libvirtd mount namespace: %w", p.exitError())
		}
		select {
		case <-ctx.Done():
			_ = p.stop(5 * time.Second)
			return fmt.Errorf("libvirtd mount namespace not ready: %w\n%s", ctx.Err(), tailFile(p.logPath, 20))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// checkNamespace verifies the holder's mounts: the private libvirt
// directories are there and the cgroup2 unified mount is not.
func (l *LibvirtdServer) checkNamespace() error {
	mounts, err := MountsUnderPid(l.holder.Pid(), "/")
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, m := range mounts {
		have[m] = true
	}
	var bad []string
	if have[unifiedCgroupMount] {
		bad = append(bad, unifiedCgroupMount+" still mounted")
	}
	for _, d := range libvirtHostDirs {
		if !have[d.host] {
			bad = append(bad, d.host+" not bound")
		}
	}
	if len(bad) > 0 {
		_ = l.holder.stop(5 * time.Second)
		return fmt.Errorf("libvirtd mount namespace: %s\n%s", strings.Join(bad, ", "), tailFile(l.holder.logPath, 20))
	}
	return nil
}

func (l *LibvirtdServer) nsenter(argv ...string) []string {
	return append([]string{nsenterBin, "-t", strconv.Itoa(l.holder.Pid()), "-m", "--"}, argv...)
}

func (l *LibvirtdServer) startVirtlogd(ctx context.Context) error {
	sock := filepath.Join(l.Dir, "run", "virtlogd-sock")
	p, err := startProc("virtlogd", filepath.Join(l.Dir, "virtlogd.out"), serviceEnv([]string{"LIBVIRT_"}),
		l.nsenter(virtlogdBin, "-f", filepath.Join(l.Dir, "etc", "virtlogd.conf"),
			"-p", filepath.Join(l.Dir, "run", "virtlogd.pid"))...)
	if err != nil {
		return err
	}
	for {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 && !p.exited() {
			l.virtlogd = p
			return nil
		}
		if p.exited() {
			return fmt.Errorf("virtlogd: %w", p.exitError())
		}
		select {
		case <-ctx.Done():
			_ = p.stop(5 * time.Second)
			return fmt.Errorf("virtlogd socket %s not ready: %w\n%s", sock, ctx.Err(), tailFile(p.logPath, 20))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (l *LibvirtdServer) startLibvirtd(ctx context.Context) error {
	start := time.Now()
	// Stale sockets of a killed daemon would make virsh talk to nothing.
	for _, s := range []string{"libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock"} {
		_ = os.Remove(filepath.Join(l.Dir, "sock", s))
	}
	p, err := startProc("libvirtd", filepath.Join(l.Dir, "libvirtd.out"), serviceEnv([]string{"LIBVIRT_"}),
		l.nsenter(libvirtdBin, "-f", filepath.Join(l.Dir, "etc", "libvirtd.conf"),
			"-p", filepath.Join(l.Dir, "run", "libvirtd.pid"))...)
	if err != nil {
		return err
	}
	var lastErr error
	for {
		if _, err := os.Stat(l.SocketPath()); err == nil {
			vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, lastErr = l.Virsh(vctx, "version")
			cancel()
			if lastErr == nil && !p.exited() {
				l.mu.Lock()
				l.libvirtd = p
				l.mu.Unlock()
				l.Startup = time.Since(start)
				return nil
			}
		}
		if p.exited() {
			return fmt.Errorf("libvirtd: %w\n%s", p.exitError(), tailFile(l.LogFile(), 20))
		}
		select {
		case <-ctx.Done():
			_ = p.stop(libvirtdStopTimeout)
			return fmt.Errorf("libvirtd not answering on %s: %w (last: %v)\n%s", l.SocketPath(), ctx.Err(), lastErr, tailFile(l.LogFile(), 20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// RestartDaemon stops libvirtd (SIGTERM) and starts it again in the same
// namespace, as an operator's `systemctl restart libvirtd` would: running
// containers keep running (their libvirt_lxc controllers are not libvirtd's
// children) and the new daemon reconnects to them. Clients' connections
// break.
func (l *LibvirtdServer) RestartDaemon(ctx context.Context) error {
	l.mu.Lock()
	p := l.libvirtd
	l.libvirtd = nil
	l.mu.Unlock()
	if err := p.stop(libvirtdStopTimeout); err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, LibvirtdStartTimeout)
		defer cancel()
	}
	return l.startLibvirtd(ctx)
}

// Stop destroys and undefines every domain the daemon still has (a test
// that leaves one fails: Stop returns an error naming them), stops libvirtd
// and virtlogd (SIGTERM, then SIGKILL), kills whatever still runs in the
// daemons' mount namespace (libvirt_lxc controllers of domains libvirt
// could not destroy), by pid, and finally the namespace holder. Stop is
// idempotent.
func (l *LibvirtdServer) Stop() error {
	var errs []error
	if l.Pid() != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		left, err := l.removeAllDomains(ctx)
		cancel()
		if err != nil {
			errs = append(errs, err)
		}
		if len(left) > 0 {
			errs = append(errs, fmt.Errorf("libvirtd: domains left behind (destroyed and undefined now): %s", strings.Join(left, ", ")))
		}
	}
	l.mu.Lock()
	lv, vl, h := l.libvirtd, l.virtlogd, l.holder
	l.libvirtd, l.virtlogd = nil, nil
	l.mu.Unlock()
	if err := lv.stop(libvirtdStopTimeout); err != nil {
		errs = append(errs, err)
	}
	if err := vl.stop(5 * time.Second); err != nil {
		errs = append(errs, err)
	}
	if h != nil && l.mntNS != "" {
		if pids := l.namespaceMembers(); len(pids) > 0 {
			errs = append(errs, fmt.Errorf("libvirtd namespace: processes left, killed: %v", pids))
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) && len(l.namespaceMembers()) > 0 {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	if err := h.stop(5 * time.Second); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeAllDomains destroys and undefines every domain of the daemon and
// returns their names.
func (l *LibvirtdServer) removeAllDomains(ctx context.Context) ([]string, error) {
	out, err := l.Virsh(ctx, "list", "--all", "--name")
	if err != nil {
		return nil, err
	}
	var names []string
	var errs []error
	for _, n := range strings.Fields(out) {
		names = append(names, n)
		_, _ = l.Virsh(ctx, "destroy", n) // fails for a shut-off domain
		if _, err := l.Virsh(ctx, "undefine", n); err != nil {
			errs = append(errs, err)
		}
	}
	return names, errors.Join(errs...)
}

// namespaceMembers lists the live processes in the daemons' mount
// namespace other than the holder and the daemons themselves.
func (l *LibvirtdServer) namespaceMembers() []int {
	skip := map[int]bool{os.Getpid(): true}
	for _, p := range []*proc{l.holder, l.libvirtd, l.virtlogd} {
		if p != nil && !p.exited() {
			skip[p.Pid()] = true
		}
	}
	var pids []int
	for _, st := range allStats() {
		if skip[st.pid] || st.state == "Z" || st.state == "X" {
			continue
		}
		if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", st.pid)); ns == l.mntNS {
			pids = append(pids, st.pid)
		}
	}
	return pids
}

// ensureSystemUser creates a system user (no home, no login) if missing.
func ensureSystemUser(name string) error {
	if _, err := user.Lookup(name); err == nil {
		return nil
	}
	cmd := exec.Command("/usr/sbin/useradd", "--system", "--no-create-home", "--home-dir", "/var/lib/libvirt",
		"--shell", "/usr/sbin/nologin", name)
	cmd.Env = serviceEnv(nil)
	if out, err := cmd.CombinedOutput(); err != nil {
		if _, lerr := user.Lookup(name); lerr == nil { // created meanwhile
			return nil
		}
		return fmt.Errorf("useradd %s: %v: %s", name, err, out)
	}
	return nil
}

// RootShared reports whether the root mount of this mount namespace
// propagates mounts to its peers and slaves ("shared:N" in mountinfo).
func RootShared() (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	shared, found := false, false
	for sc.Scan() {
		// id parent maj:min root mountpoint options [optional...] - fstype ...
		fs := strings.Fields(sc.Text())
		if len(fs) < 7 || fs[4] != "/" {
			continue
		}
		// Mounts stacked on "/" come later: the last line is the one in use.
		found, shared = true, false
		for _, o := range fs[6:] {
			if o == "-" {
				break
			}
			if strings.HasPrefix(o, "shared:") {
				shared = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	if !found {
		return false, errors.New("mountinfo: no root mount")
	}
	return shared, nil
}

// ensureRootShared makes "/" rshared, as systemd does at boot, unless it is
// already shared.
func ensureRootShared() error {
	ok, err := RootShared()
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	if err := syscall.Mount("", "/", "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("mount --make-rshared /: %w", err)
	}
	return nil
}

// Libvirtd starts a private libvirtd for the test under t.TempDir() and
// stops it with t.Cleanup; the daemon's log is printed when the test failed.
// A domain still defined at the end fails the test.
func Libvirtd(t testing.TB) *LibvirtdServer {
	t.Helper()
	RequireRoot(t)
	dir := t.TempDir()
	l, err := StartLibvirtd(context.Background(), dir)
	if err != nil {
		t.Fatalf("start libvirtd: %v", err)
	}
	t.Logf("libvirtd ready in %.2fs (pid %d, virtlogd %d, namespace holder %d, uri %s)",
		l.Startup.Seconds(), l.Pid(), l.VirtlogdPid(), l.NamespacePid(), l.URI())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("libvirtd log:\n%s", tailFile(l.LogFile(), 40))
		}
		if err := l.Stop(); err != nil {
			t.Errorf("stop libvirtd: %v", err)
		}
	})
	return l
}

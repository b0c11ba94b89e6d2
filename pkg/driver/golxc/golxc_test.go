package golxc_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/driver/golxc"
)

// helperEnv makes the test binary act as the forklxc helper.
const helperEnv = "GOLXC_TEST_FORKLXC"

const (
	bootLine     = "lxc-agent-test-boot-ok"
	shutdownLine = "lxc-agent-test-bye"
	markerText   = "rootfs marker, must survive Destroy\n"
)

// testRoot holds the shared lxcpath; TestMain checks it for leftovers.
var testRoot string

// createdIDs are the containers the tests defined; TestMain looks for
// cgroups left behind for them.
var (
	idsMu      sync.Mutex
	createdIDs []string
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		// Re-executed by testHelper: os.Args = [exe, "forklxc", "start", ...].
		if len(os.Args) < 2 || os.Args[1] != golxc.HelperSubcommand {
			fmt.Fprintln(os.Stderr, "test helper: bad arguments", os.Args)
			os.Exit(2)
		}
		os.Exit(golxc.ForkMain(os.Args[2:]))
	}
	if f := os.Getenv(orphanSpecEnv); f != "" {
		// Re-executed by startOrphan: an "agent" that is killed with SIGKILL.
		os.Exit(orphanMain(f, os.Getenv(orphanLXCPathEnv)))
	}
	dir, err := os.MkdirTemp("", "golxc-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testRoot = dir
	// Unprivileged containers need the lxcpath searchable by their root.
	if err := os.Chmod(dir, 0o711); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if os.Geteuid() == 0 {
		if left := leftovers(filepath.Join(dir, "lxc")); left != "" {
			fmt.Fprintf(os.Stderr, "LEFTOVERS under %s:\n%s", dir, left)
			code = 1
		} else if testing.Verbose() {
			fmt.Fprintf(os.Stderr, "leftover check: lxc-ls -P %s empty, no processes\n", filepath.Join(dir, "lxc"))
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// leftovers lists containers still defined or running under lxcpath and
// processes whose command line mentions it (the "[lxc monitor] <lxcpath>
// <name>" monitors).
func leftovers(lxcpath string) string {
	var b strings.Builder
	if _, err := os.Stat(lxcpath); err == nil {
		out, err := exec.Command("lxc-ls", "-P", lxcpath, "-1").CombinedOutput()
		if err != nil {
			fmt.Fprintf(&b, "lxc-ls: %v: %s\n", err, out)
		} else if s := strings.TrimSpace(string(out)); s != "" {
			fmt.Fprintf(&b, "lxc-ls: %s\n", s)
		}
	}
	for _, p := range procsMentioning(lxcpath) {
		fmt.Fprintf(&b, "process %s\n", p)
	}
	idsMu.Lock()
	ids := slices.Clone(createdIDs)
	idsMu.Unlock()
	for _, cg := range containerCgroups(ids) {
		fmt.Fprintf(&b, "cgroup %s\n", cg)
	}
	return b.String()
}

// containerCgroups lists lxc.monitor.<id>* / lxc.payload.<id>* cgroups at the
// top of every hierarchy (where liblxc puts root's containers when init is
// in the root cgroup, as on the test host).
func containerCgroups(ids []string) []string {
	var out []string
	g1, _ := filepath.Glob("/sys/fs/cgroup/*/lxc.*")
	g2, _ := filepath.Glob("/sys/fs/cgroup/lxc.*")
	for _, p := range append(g1, g2...) {
		for _, id := range ids {
			if strings.Contains(filepath.Base(p), id) {
				out = append(out, p)
			}
		}
	}
	return out
}

func procsMentioning(s string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
		if strings.Contains(cmd, s) {
			out = append(out, e.Name()+": "+cmd)
		}
	}
	return out
}

// requireRoot fails (not skips) without root: these tests must not pass
// silently on a machine that cannot run them.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("this test runs real containers and must run as root (euid %d)", os.Geteuid())
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Fatalf("needs a static /bin/busybox (package busybox-static): %v", err)
	}
}

func testHelper() golxc.HelperCommand {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return func(ctx context.Context, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, exe, args...)
		cmd.Env = append(os.Environ(), helperEnv+"=1")
		return cmd
	}
}

type testLogWriter struct {
	mu sync.Mutex
	t  testing.TB
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newDriver(t testing.TB) *golxc.Driver {
	t.Helper()
	requireRoot(t)
	var h slog.Handler = slog.DiscardHandler
	if testing.Verbose() {
		h = slog.NewTextHandler(&testLogWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelInfo})
	}
	d, err := golxc.New(filepath.Join(testRoot, "lxc"), testHelper(), slog.New(h))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// makeRootfs builds a busybox root file system: init prints bootLine to the
// console, keeps running, and prints shutdownLine when halted.
func makeRootfs(t testing.TB) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "run", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src, err := os.Open("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(root, "bin", "busybox"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{"bin/sh": "busybox", "sbin/init": "../bin/busybox"}
	for l, target := range links {
		if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	inittab := "::sysinit:/bin/busybox echo " + bootLine + "\n" +
		"::respawn:/bin/busybox sleep 3600\n" +
		"::shutdown:/bin/busybox echo " + shutdownLine + "\n"
	files := map[string]string{"etc/inittab": inittab, "etc/marker": markerText}
	for f, s := range files {
		if err := os.WriteFile(filepath.Join(root, f), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func newSpec(t testing.TB) driver.Spec {
	id := uuid.NewString()
	inst := t.TempDir()
	return driver.Spec{
		ID:          id,
		Hostname:    "test-" + id[:8],
		InstanceDir: inst,
		Rootfs:      makeRootfs(t),
		ConsoleLog:  filepath.Join(inst, "console.log"),
		Init:        "/sbin/init",
		Limits:      driver.Limits{MemoryMB: 256, VCPUs: 2},
	}
}

// create defines spec and destroys it when the test ends.
func create(t testing.TB, d *golxc.Driver, spec driver.Spec) {
	t.Helper()
	ctx := context.Background()
	if err := d.Create(ctx, spec); err != nil {
		t.Fatalf("Create: %v", err)
	}
	idsMu.Lock()
	createdIDs = append(createdIDs, spec.ID)
	idsMu.Unlock()
	t.Cleanup(func() {
		if err := d.Destroy(context.Background(), spec.ID); err != nil {
			t.Errorf("cleanup Destroy: %v", err)
		}
	})
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fileContains(path, s string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.Contains(string(b), s)
}

func mustInfo(t testing.TB, d *golxc.Driver, id string) driver.Info {
	t.Helper()
	info, err := d.Info(context.Background(), id)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	return info
}

// cgroupDir is the directory of pid's cgroup for a controller (v1), or of
// its cgroup2 group if controller is "".
func cgroupDir(t testing.TB, pid int, controller string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		if controller == "" && f[0] == "0" {
			if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
				return filepath.Join("/sys/fs/cgroup", f[2])
			}
			return filepath.Join("/sys/fs/cgroup/unified", f[2])
		}
		if controller != "" && slices.Contains(strings.Split(f[1], ","), controller) {
			mp := filepath.Join("/sys/fs/cgroup", f[1])
			return filepath.Join(mp, f[2])
		}
	}
	t.Fatalf("pid %d: no cgroup for %q in\n%s", pid, controller, b)
	return ""
}

func readTrim(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func unifiedHost() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return err == nil
}

func TestLifecycle(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 3*time.Minute)
	spec := newSpec(t)
	id := spec.ID
	create(t, d, spec)

	if err := d.Create(ctx, spec); !errors.Is(err, driver.ErrAlreadyExists) {
		t.Fatalf("second Create: %v, want ErrAlreadyExists", err)
	}
	cfg := readTrim(t, d.ConfigPath(id))
	t.Logf("config:\n%s", cfg)
	for _, want := range []string{
		"lxc.rootfs.path = dir:" + spec.Rootfs,
		"lxc.rootfs.managed = 0",
		"lxc.console.logfile = " + spec.ConsoleLog,
		"lxc.uts.name = " + spec.Hostname,
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q", want)
		}
	}
	if strings.Contains(cfg, "lxcbr0") || strings.Contains(cfg, "veth") {
		t.Errorf("config picked up the default veth network:\n%s", cfg)
	}
	if info := mustInfo(t, d, id); info.State != driver.Shutdown || info.InitPID != 0 || info.ID != id {
		t.Fatalf("after Create: %+v, want Shutdown without pid", info)
	}
	ids, err := d.List(ctx)
	if err != nil || !slices.Contains(ids, id) {
		t.Fatalf("List = %v, %v; want it to contain %s", ids, err, id)
	}
	if s, err := d.Stats(ctx, id); err != nil || s.MemoryLimit != 256<<20 || s.CPUTime != 0 {
		t.Fatalf("Stats of stopped container = %+v, %v", s, err)
	}

	// Start.
	t0 := time.Now()
	if err := d.Start(ctx, id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("Start took %v", time.Since(t0))
	info := mustInfo(t, d, id)
	if info.State != driver.Running || info.InitPID <= 0 {
		t.Fatalf("after Start: %+v", info)
	}
	pid := info.InitPID
	if err := d.Start(ctx, id); err != nil {
		t.Fatalf("Start of a running container: %v", err)
	}

	// Root file system, hostname, network namespace.
	a, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid), "root", "etc", "marker"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.Stat(filepath.Join(spec.Rootfs, "etc", "marker"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(a, b) {
		t.Errorf("/proc/%d/root/etc/marker is not the rootfs' file", pid)
	}
	if out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-u", "cat", "/proc/sys/kernel/hostname").Output(); err != nil || strings.TrimSpace(string(out)) != spec.Hostname {
		t.Errorf("hostname = %q, %v; want %q", out, err, spec.Hostname)
	}
	self, _ := os.Readlink("/proc/self/ns/net")
	theirs, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if self == theirs || theirs == "" {
		t.Errorf("container without NICs shares the host network namespace (%s)", theirs)
	}
	if self, theirs := nsLink("self", "pid"), nsLink(strconv.Itoa(pid), "pid"); self == theirs {
		t.Errorf("container shares the host pid namespace")
	}

	// The monitor was forked by the helper: own session, nothing leaked.
	mon := monitorPID(t, d.LXCPath(), id)
	if mon == 0 {
		t.Errorf("no [lxc monitor] process for %s", id)
	} else {
		if statField(t, mon, 6) == statField(t, os.Getpid(), 6) {
			t.Errorf("monitor %d is in the test's session", mon)
		}
		if ppid := statField(t, mon, 4); ppid == strconv.Itoa(os.Getpid()) {
			t.Errorf("monitor %d is a child of the test process", mon)
		}
		var fds []string
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", mon))
		for _, e := range ents {
			l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", mon, e.Name()))
			fds = append(fds, e.Name()+"->"+l)
			if strings.HasPrefix(l, "pipe:") {
				t.Errorf("monitor holds a pipe (fd %s -> %s)", e.Name(), l)
			}
		}
		t.Logf("monitor %d fds: %s", mon, strings.Join(fds, " "))
	}

	// Console output reaches the log file.
	waitFor(t, "boot line in console log", 10*time.Second, func() bool { return fileContains(spec.ConsoleLog, bootLine) })

	// Cgroup limits applied before init.
	if unifiedHost() {
		cg := cgroupDir(t, pid, "")
		if got := readTrim(t, filepath.Join(cg, "memory.max")); got != strconv.Itoa(256<<20) {
			t.Errorf("memory.max = %s", got)
		}
		if got := readTrim(t, filepath.Join(cg, "cpu.max")); got != "200000 100000" {
			t.Errorf("cpu.max = %s", got)
		}
	} else {
		mem := cgroupDir(t, pid, "memory")
		t.Logf("memory cgroup %s", mem)
		if got := readTrim(t, filepath.Join(mem, "memory.limit_in_bytes")); got != strconv.Itoa(256<<20) {
			t.Errorf("memory.limit_in_bytes = %s, want %d", got, 256<<20)
		}
		if _, err := os.Stat(filepath.Join(mem, "memory.memsw.limit_in_bytes")); err == nil {
			if got := readTrim(t, filepath.Join(mem, "memory.memsw.limit_in_bytes")); got != strconv.Itoa(256<<20) {
				t.Errorf("memory.memsw.limit_in_bytes = %s", got)
			}
		}
		cpu := cgroupDir(t, pid, "cpu")
		for f, want := range map[string]string{"cpu.cfs_quota_us": "200000", "cpu.cfs_period_us": "100000", "cpu.shares": "2048"} {
			if got := readTrim(t, filepath.Join(cpu, f)); got != want {
				t.Errorf("%s = %s, want %s", f, got, want)
			}
		}
	}

	// Stats.
	st, err := d.Stats(ctx, id)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	t.Logf("stats: %+v", st)
	if st.MemoryLimit != 256<<20 || st.MemoryBytes == 0 || st.CPUTime <= 0 || st.UptimeSeconds < 0 || st.UptimeSeconds > 60 {
		t.Errorf("Stats = %+v", st)
	}

	// Pause / Unpause.
	if err := d.Pause(ctx, id); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if info := mustInfo(t, d, id); info.State != driver.Paused || info.InitPID != pid {
		t.Errorf("after Pause: %+v", info)
	}
	if err := d.Pause(ctx, id); err != nil {
		t.Errorf("second Pause: %v", err)
	}
	if err := d.Unpause(ctx, id); err != nil {
		t.Fatalf("Unpause: %v", err)
	}
	if info := mustInfo(t, d, id); info.State != driver.Running {
		t.Errorf("after Unpause: %+v", info)
	}

	// Graceful stop: init gets the halt signal and runs its shutdown actions.
	t0 = time.Now()
	if err := d.Stop(ctx, id, 20*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	took := time.Since(t0)
	t.Logf("graceful Stop took %v", took)
	if took > 15*time.Second {
		t.Errorf("graceful stop took %v: halt signal ignored, container killed at the timeout?", took)
	}
	if info := mustInfo(t, d, id); info.State != driver.Shutdown || info.InitPID != 0 {
		t.Fatalf("after Stop: %+v", info)
	}
	if !fileContains(spec.ConsoleLog, shutdownLine) {
		t.Errorf("console log lacks the shutdown line %q", shutdownLine)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Errorf("old init pid %d still exists", pid)
	}
	if err := d.Stop(ctx, id, time.Second); err != nil {
		t.Errorf("Stop of a stopped container: %v", err)
	}
	if err := d.Pause(ctx, id); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("Pause of a stopped container: %v, want ErrInvalidState", err)
	}

	// Start again, then kill (timeout 0).
	if err := d.Start(ctx, id); err != nil {
		t.Fatalf("second Start: %v", err)
	}
	info = mustInfo(t, d, id)
	if info.State != driver.Running || info.InitPID <= 0 || info.InitPID == pid {
		t.Fatalf("after second Start: %+v (old pid %d)", info, pid)
	}
	waitFor(t, "second boot line", 10*time.Second, func() bool {
		b, _ := os.ReadFile(spec.ConsoleLog)
		return strings.Count(string(b), bootLine) == 2
	})
	t0 = time.Now()
	if err := d.Stop(ctx, id, 0); err != nil {
		t.Fatalf("Stop(0): %v", err)
	}
	t.Logf("Stop(0) took %v", time.Since(t0))
	if info := mustInfo(t, d, id); info.State != driver.Shutdown {
		t.Fatalf("after kill: %+v", info)
	}

	if b, err := os.ReadFile(filepath.Join(d.LXCPath(), id, "lxc.log")); err == nil {
		t.Logf("lxc.log:\n%s", b)
	}

	// Destroy leaves the rootfs alone.
	if err := d.Destroy(ctx, id); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if _, err := d.Info(ctx, id); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("Info after Destroy: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(filepath.Join(d.LXCPath(), id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("container directory still there: %v", err)
	}
	checkRootfsIntact(t, spec.Rootfs)
	if !fileContains(spec.ConsoleLog, bootLine) {
		t.Errorf("console log gone or emptied by Destroy")
	}
	if err := d.Destroy(ctx, id); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
	ids, _ = d.List(ctx)
	if slices.Contains(ids, id) {
		t.Errorf("List after Destroy still has %s", id)
	}
}

// monitorPID finds the "[lxc monitor] <lxcpath> <name>" process.
func monitorPID(t testing.TB, lxcpath, name string) int {
	t.Helper()
	for _, p := range procsMentioning(lxcpath + " " + name) {
		pid, _, _ := strings.Cut(p, ":")
		if strings.Contains(p, "[lxc monitor]") {
			n, _ := strconv.Atoi(pid)
			return n
		}
	}
	return 0
}

// statField returns field n (1-based, as in proc(5)) of /proc/<pid>/stat.
func statField(t testing.TB, pid, n int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return f[n-3]
}

func nsLink(pid, ns string) string {
	s, _ := os.Readlink(filepath.Join("/proc", pid, "ns", ns))
	return s
}

func checkRootfsIntact(t testing.TB, root string) {
	t.Helper()
	if got, err := os.ReadFile(filepath.Join(root, "etc", "marker")); err != nil || string(got) != markerText {
		t.Errorf("rootfs marker after Destroy: %q, %v", got, err)
	}
	var got []string
	filepath.WalkDir(root, func(p string, _ os.DirEntry, err error) error {
		if err == nil && p != root {
			rel, _ := filepath.Rel(root, p)
			got = append(got, rel)
		}
		return nil
	})
	want := []string{"bin", "bin/busybox", "bin/sh", "dev", "etc", "etc/inittab", "etc/marker",
		"proc", "root", "run", "sbin", "sbin/init", "sys", "tmp"}
	if !slices.Equal(got, want) {
		t.Errorf("rootfs content changed:\n got %v\nwant %v", got, want)
	}
}

// The production helper (re-exec of /proc/self/exe) works when the binary
// dispatches the forklxc subcommand, as TestMain does with helperEnv set.
func TestSelfExecHelper(t *testing.T) {
	requireRoot(t)
	t.Setenv(helperEnv, "1") // inherited by /proc/self/exe
	d, err := golxc.New(filepath.Join(testRoot, "lxc"), golxc.SelfExecHelper(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, time.Minute)
	spec := newSpec(t)
	create(t, d, spec)
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if info := mustInfo(t, d, spec.ID); info.State != driver.Running {
		t.Fatalf("after Start: %+v", info)
	}
	if err := d.Destroy(ctx, spec.ID); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
}

func TestForkMainUsage(t *testing.T) {
	if code := golxc.ForkMain(nil); code != 2 {
		t.Errorf("ForkMain(nil) = %d", code)
	}
	if code := golxc.ForkMain([]string{"stop", "x"}); code != 2 {
		t.Errorf("ForkMain(stop) = %d", code)
	}
	if err := golxc.ForkStart([]string{"x"}); err == nil {
		t.Errorf("ForkStart with one argument succeeded")
	}
	dir := t.TempDir()
	err := golxc.ForkStart([]string{"nope", dir, filepath.Join(dir, "nope", "config")})
	if err == nil || !strings.Contains(err.Error(), "not defined") {
		t.Errorf("ForkStart of an undefined container: %v", err)
	}
}

// An init that ignores the halt signal is killed when the timeout expires.
func TestStopTimeout(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 2*time.Minute)
	spec := newSpec(t)
	// A pid namespace's init only gets signals it handles: sleep ignores SIGPWR.
	spec.Init = "/bin/busybox sleep 3600"
	create(t, d, spec)
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t0 := time.Now()
	if err := d.Stop(ctx, spec.ID, 1500*time.Millisecond); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	took := time.Since(t0)
	t.Logf("Stop with a 1.5s timeout of an init ignoring SIGPWR took %v", took)
	if took < 1500*time.Millisecond || took > 5*time.Second {
		t.Errorf("Stop took %v, want just over the 1.5s timeout", took)
	}
	if info := mustInfo(t, d, spec.ID); info.State != driver.Shutdown {
		t.Errorf("after Stop: %+v", info)
	}

	// A context that ends before the timeout stops the wait, not the kill.
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("Start: %v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := d.Stop(cctx, spec.ID, time.Minute); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop with an expiring context: %v", err)
	}
	if info := mustInfo(t, d, spec.ID); info.State != driver.Running {
		t.Errorf("after an abandoned Stop: %+v", info)
	}
}

// A running container is killed by Destroy; the rootfs survives.
func TestDestroyRunning(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 2*time.Minute)
	spec := newSpec(t)
	create(t, d, spec)
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := mustInfo(t, d, spec.ID).InitPID
	if err := d.Pause(ctx, spec.ID); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	t0 := time.Now()
	if err := d.Destroy(ctx, spec.ID); err != nil {
		t.Fatalf("Destroy of a frozen container: %v", err)
	}
	t.Logf("Destroy of a frozen container took %v", time.Since(t0))
	if _, err := d.Info(ctx, spec.ID); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("Info after Destroy: %v", err)
	}
	waitFor(t, "init to go away", 10*time.Second, func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return err != nil
	})
	checkRootfsIntact(t, spec.Rootfs)
}

// Start failures carry liblxc's error lines and leave the container
// stopped and destroyable.
func TestStartFailure(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 2*time.Minute)

	t.Run("missing rootfs", func(t *testing.T) {
		spec := newSpec(t)
		spec.Rootfs = filepath.Join(t.TempDir(), "does-not-exist")
		create(t, d, spec)
		err := d.Start(ctx, spec.ID)
		if err == nil {
			t.Fatal("Start succeeded without a rootfs")
		}
		t.Logf("Start error: %v", err)
		if !strings.Contains(err.Error(), "ERROR") {
			t.Errorf("error lacks liblxc ERROR lines: %v", err)
		}
		if info := mustInfo(t, d, spec.ID); info.State != driver.Shutdown {
			t.Errorf("after failed Start: %+v", info)
		}
		if cg := containerCgroups([]string{spec.ID}); len(cg) > 0 {
			t.Errorf("failed Start left cgroups: %v", cg)
		}
	})
	t.Run("missing init", func(t *testing.T) {
		spec := newSpec(t)
		spec.Init = "/sbin/no-such-init"
		create(t, d, spec)
		err := d.Start(ctx, spec.ID)
		if err == nil {
			t.Fatal("Start succeeded without init")
		}
		t.Logf("Start error: %v", err)
		if info := mustInfo(t, d, spec.ID); info.State != driver.Shutdown {
			t.Errorf("after failed Start: %+v", info)
		}
		if cg := containerCgroups([]string{spec.ID}); len(cg) > 0 {
			t.Errorf("failed Start left cgroups: %v", cg)
		}
		// A second failing start must not leave lxc.monitor.<id>-1 either.
		if err := d.Start(ctx, spec.ID); err == nil {
			t.Fatal("second Start succeeded without init")
		}
		if cg := containerCgroups([]string{spec.ID}); len(cg) > 0 {
			t.Errorf("second failed Start left cgroups: %v", cg)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		spec := newSpec(t)
		create(t, d, spec)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := d.Start(cctx, spec.ID); !errors.Is(err, context.Canceled) {
			t.Errorf("Start with a cancelled context: %v", err)
		}
	})
}

func TestNotFound(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, time.Minute)
	for _, id := range []string{uuid.NewString(), "", "..", "a/b"} {
		if _, err := d.Info(ctx, id); !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("Info(%q): %v", id, err)
		}
		if err := d.Start(ctx, id); !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("Start(%q): %v", id, err)
		}
		if err := d.Stop(ctx, id, time.Second); !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("Stop(%q): %v", id, err)
		}
		if _, err := d.Stats(ctx, id); !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("Stats(%q): %v", id, err)
		}
		if err := d.Pause(ctx, id); !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("Pause(%q): %v", id, err)
		}
		if err := d.Destroy(ctx, id); err != nil {
			t.Errorf("Destroy(%q): %v", id, err)
		}
	}
	bad := newSpec(t)
	bad.ID = "../escape"
	if err := d.Create(ctx, bad); err == nil {
		t.Errorf("Create accepted id %q", bad.ID)
	}
	bad = newSpec(t)
	bad.Rootfs = "relative/rootfs"
	if err := d.Create(ctx, bad); err == nil {
		t.Errorf("Create accepted a relative rootfs")
	}
	if _, err := os.Stat(filepath.Join(d.LXCPath(), bad.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed Create left %s behind", bad.ID)
	}
}

// Several containers started and stopped at once.
func TestParallel(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 3*time.Minute)
	const n = 4
	specs := make([]driver.Spec, n)
	for i := range specs {
		specs[i] = newSpec(t)
		specs[i].MemoryMB = 64
		specs[i].VCPUs = 1
		create(t, d, specs[i])
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	t0 := time.Now()
	for i := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.Start(ctx, specs[i].ID)
		}()
	}
	wg.Wait()
	t.Logf("%d parallel starts took %v", n, time.Since(t0))
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Start %d: %v", i, err)
		}
	}
	pids := map[int]bool{}
	for _, s := range specs {
		info := mustInfo(t, d, s.ID)
		if info.State != driver.Running || pids[info.InitPID] {
			t.Fatalf("%s: %+v", s.ID, info)
		}
		pids[info.InitPID] = true
	}
	t0 = time.Now()
	for i := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.Stop(ctx, specs[i].ID, 20*time.Second)
		}()
	}
	wg.Wait()
	t.Logf("%d parallel graceful stops took %v", n, time.Since(t0))
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Stop %d: %v", i, err)
		}
	}
	for _, s := range specs {
		if info := mustInfo(t, d, s.ID); info.State != driver.Shutdown {
			t.Fatalf("%s: %+v", s.ID, info)
		}
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func linkExists(name string) bool {
	return exec.Command("ip", "link", "show", "dev", name).Run() == nil
}

func TestNIC(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 3*time.Minute)
	suffix := randHex(4)
	tin, tap := "tin"+suffix, "tap"+suffix
	run(t, "ip", "link", "add", tin, "type", "veth", "peer", "name", tap)
	t.Cleanup(func() {
		// Deleting either end removes the pair.
		if linkExists(tap) {
			exec.Command("ip", "link", "del", tap).Run()
		}
		if linkExists(tin) {
			exec.Command("ip", "link", "del", tin).Run()
		}
		if linkExists(tin) || linkExists(tap) {
			t.Errorf("could not remove %s/%s", tin, tap)
		}
	})
	run(t, "ip", "link", "set", tap, "up")
	origMAC := readTrim(t, "/sys/class/net/"+tin+"/address")

	spec := newSpec(t)
	const mac = "02:00:5e:10:20:30"
	spec.NICs = []driver.NIC{{
		HostDev:  tin,
		Tap:      tap,
		Name:     "eth0",
		MAC:      mac,
		MTU:      1400,
		Addrs:    []netip.Prefix{netip.MustParsePrefix("192.0.2.10/24"), netip.MustParsePrefix("2001:db8::10/64")},
		Gateway4: netip.MustParseAddr("192.0.2.1"),
	}}
	create(t, d, spec)
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := strconv.Itoa(mustInfo(t, d, spec.ID).InitPID)
	if linkExists(tin) {
		t.Errorf("%s still in the host namespace after Start", tin)
	}
	link := run(t, "nsenter", "-t", pid, "-n", "ip", "-o", "link", "show", "dev", "eth0")
	addr := run(t, "nsenter", "-t", pid, "-n", "ip", "-o", "addr", "show", "dev", "eth0")
	route := run(t, "nsenter", "-t", pid, "-n", "ip", "route", "show")
	t.Logf("inside:\n%s%s%s", link, addr, route)
	for _, want := range []string{"link/ether " + mac, "mtu 1400", "UP"} {
		if !strings.Contains(link, want) {
			t.Errorf("eth0 link lacks %q", want)
		}
	}
	for _, want := range []string{"inet 192.0.2.10/24", "inet6 2001:db8::10/64"} {
		if !strings.Contains(addr, want) {
			t.Errorf("eth0 lacks %q", want)
		}
	}
	if !strings.Contains(route, "default via 192.0.2.1 dev eth0") {
		t.Errorf("no default route via 192.0.2.1")
	}
	// Traffic through the pair shows up in the stats, seen from inside.
	exec.Command("nsenter", "-t", pid, "-n", "/bin/busybox", "ping", "-c", "2", "-W", "1", "192.0.2.1").Run()
	st, err := d.Stats(ctx, spec.ID)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if len(st.NICs) != 1 || st.NICs[0].MAC != mac || st.NICs[0].TxPackets == 0 {
		t.Errorf("NIC stats = %+v, want tx packets from the pings", st.NICs)
	}
	t.Logf("nic stats: %+v", st.NICs)

	if err := d.Stop(ctx, spec.ID, 0); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if linkExists(tin) {
		after := run(t, "ip", "-o", "link", "show", "dev", tin)
		addrs := run(t, "ip", "-o", "addr", "show", "dev", tin)
		t.Logf("after Stop %s is back on the host (original MAC %s):\n%s%s", tin, origMAC, after, addrs)
	} else {
		t.Errorf("after Stop %s is not on the host (links: %s)", tin, run(t, "ip", "-o", "link"))
	}
	// Restart: the device must be usable again.
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("restart with the NIC: %v", err)
	}
	pid = strconv.Itoa(mustInfo(t, d, spec.ID).InitPID)
	if addr := run(t, "nsenter", "-t", pid, "-n", "ip", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(addr, "192.0.2.10/24") {
		t.Errorf("after restart eth0: %s", addr)
	}
	if err := d.Destroy(ctx, spec.ID); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if linkExists(tin) {
		t.Logf("after Destroy %s is back on the host: %s", tin, run(t, "ip", "-o", "link", "show", "dev", tin))
	} else {
		t.Logf("after Destroy %s is gone (tap exists: %v)", tin, linkExists(tap))
	}
}

// BenchmarkStartStop measures Start (helper + liblxc + busybox init up)
// and a kill (Stop with timeout 0) of one container.
func BenchmarkStartStop(b *testing.B) {
	d := newDriver(b)
	ctx := context.Background()
	spec := newSpec(b)
	create(b, d, spec)
	var start, stop time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := d.Start(ctx, spec.ID); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := d.Stop(ctx, spec.ID, 0); err != nil {
			b.Fatal(err)
		}
		start += t1.Sub(t0)
		stop += time.Since(t1)
	}
	b.ReportMetric(float64(start.Milliseconds())/float64(b.N), "start-ms/op")
	b.ReportMetric(float64(stop.Milliseconds())/float64(b.N), "kill-ms/op")
}

// BenchmarkShutdown measures a graceful Stop (halt signal to busybox init).
func BenchmarkShutdown(b *testing.B) {
	d := newDriver(b)
	ctx := context.Background()
	spec := newSpec(b)
	create(b, d, spec)
	var stop time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := d.Start(ctx, spec.ID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if err := d.Stop(ctx, spec.ID, 30*time.Second); err != nil {
			b.Fatal(err)
		}
		stop += time.Since(t0)
	}
	b.ReportMetric(float64(stop.Milliseconds())/float64(b.N), "shutdown-ms/op")
}

package libvirtlxc_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"libvirt.org/go/libvirtxml"

	"github.com/lxc-agent/lxc-agent/internal/testenv"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/driver/libvirtlxc"
)

const (
	bootLine     = "lxc-agent-test-boot-ok"
	shutdownLine = "lxc-agent-test-bye"
	markerText   = "rootfs marker, must survive Destroy\n"
	// Test bridges and taps: brqlt…, taplt… (cleaned up; TestMain checks).
	bridgePrefix = "brqlt"
	tapPrefix    = "taplt"
)

// inittab prints bootLine to the console, keeps a second process, and
// prints shutdownLine when halted.
const inittab = "::sysinit:/bin/echo " + bootLine + "\n" +
	"::respawn:/bin/sleep 1000000\n" +
	"::shutdown:/bin/echo " + shutdownLine + "\n"

// lv is the libvirtd every test of the package uses (started by TestMain).
var lv *testenv.LibvirtdServer

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Geteuid() != 0 {
		// The tests fail through requireRoot; the XML tests still run.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "libvirtlxc-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	t0 := time.Now()
	lv, err = testenv.StartLibvirtd(context.Background(), filepath.Join(dir, "libvirtd"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "start libvirtd:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "libvirtd ready in %v: %s (pid %d)\n", time.Since(t0).Round(time.Millisecond), lv.URI(), lv.Pid())
	}
	code := m.Run()
	var left []string
	if out, err := lv.Virsh(context.Background(), "list", "--all", "--name"); err == nil && strings.TrimSpace(out) != "" {
		left = append(left, "domains: "+strings.Join(strings.Fields(out), " "))
	}
	if err := lv.Stop(); err != nil {
		left = append(left, "stop libvirtd: "+err.Error())
	}
	for _, p := range []string{bridgePrefix, tapPrefix} {
		if l, _ := testenv.LinksWithPrefix(p); len(l) > 0 {
			left = append(left, "links: "+strings.Join(l, " "))
			for _, n := range l {
				exec.Command("ip", "link", "del", n).Run()
			}
		}
	}
	if m, _ := testenv.MountsUnder(dir); len(m) > 0 {
		left = append(left, "mounts: "+strings.Join(m, " "))
	}
	if len(left) > 0 {
		fmt.Fprintf(os.Stderr, "LEFTOVERS:\n%s\n", strings.Join(left, "\n"))
		code = 1
	} else if testing.Verbose() {
		fmt.Fprintln(os.Stderr, "leftover check: no domains, libvirtd stopped, no test links or mounts")
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 || lv == nil {
		t.Fatalf("this test runs libvirtd and real containers and must run as root (euid %d)", os.Geteuid())
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

func newDriver(t testing.TB) *libvirtlxc.Driver {
	t.Helper()
	requireRoot(t)
	var h slog.Handler = slog.DiscardHandler
	if testing.Verbose() {
		h = slog.NewTextHandler(&testLogWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelInfo})
	}
	d, err := libvirtlxc.New(lv.URI(), slog.New(h))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func makeRootfs(t testing.TB, inittabText string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rootfs")
	testenv.BusyboxRootfs(t, root, inittabText)
	if err := os.WriteFile(filepath.Join(root, "etc", "marker"), []byte(markerText), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

var nameSeq struct {
	sync.Mutex
	n int
}

// testName is a nova-like domain name, unique in the run.
func testName() string {
	nameSeq.Lock()
	defer nameSeq.Unlock()
	nameSeq.n++
	return fmt.Sprintf("instance-%04x%04x", os.Getpid()&0xffff, nameSeq.n)
}

func newSpec(t testing.TB) driver.Spec {
	id := uuid.NewString()
	inst := t.TempDir()
	return driver.Spec{
		ID:          id,
		Name:        testName(),
		Hostname:    "test-" + id[:8],
		InstanceDir: inst,
		Rootfs:      makeRootfs(t, inittab),
		ConsoleLog:  filepath.Join(inst, "console.log"),
		Init:        "/sbin/init",
		Limits:      driver.Limits{MemoryMB: 256, VCPUs: 2, CPUShares: 2048, CPUPeriodUS: 100000, CPUQuotaUS: 150000},
	}
}

// create defines spec and destroys it when the test ends.
func create(t testing.TB, d *libvirtlxc.Driver, spec driver.Spec) {
	t.Helper()
	if err := d.Create(context.Background(), spec); err != nil {
		t.Fatalf("Create: %v", err)
	}
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

func mustInfo(t testing.TB, d *libvirtlxc.Driver, id string) driver.Info {
	t.Helper()
	info, err := d.Info(context.Background(), id)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	return info
}

func readTrim(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// cgroupDir is the v1 directory of pid's cgroup for controller, as the host
// sees it.
func cgroupDir(t testing.TB, pid int, controller string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 && slices.Contains(strings.Split(f[1], ","), controller) {
			return filepath.Join("/sys/fs/cgroup", f[1], f[2])
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if p, ok := strings.CutPrefix(l, "0::"); ok {
				return filepath.Join("/sys/fs/cgroup", p)
			}
		}
	}
	t.Fatalf("pid %d: no %s cgroup in\n%s", pid, controller, b)
	return ""
}

func unifiedHost() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return err == nil
}

// tree lists a directory's contents (relative paths).
func tree(t testing.TB, root string) []string {
	t.Helper()
	var got []string
	filepath.WalkDir(root, func(p string, _ os.DirEntry, err error) error {
		if err == nil && p != root {
			rel, _ := filepath.Rel(root, p)
			got = append(got, rel)
		}
		return nil
	})
	return got
}

func checkRootfsIntact(t testing.TB, root string, before []string) {
	t.Helper()
	if got, err := os.ReadFile(filepath.Join(root, "etc", "marker")); err != nil || string(got) != markerText {
		t.Errorf("rootfs marker after Destroy: %q, %v", got, err)
	}
	// libvirt_lxc leaves the empty directory it pivots the old root to.
	after := slices.DeleteFunc(tree(t, root), func(p string) bool { return p == ".oldroot" })
	if !slices.Equal(after, before) {
		t.Errorf("rootfs content changed:\n got %v\nwant %v", after, before)
	}
}

func TestLibvirtLifecycle(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 3*time.Minute)
	spec := newSpec(t)
	id := spec.ID
	before := tree(t, spec.Rootfs)
	create(t, d, spec)

	if d.Name() != "libvirt-lxc" {
		t.Errorf("Name = %q", d.Name())
	}
	if err := d.Create(ctx, spec); !errors.Is(err, driver.ErrAlreadyExists) {
		t.Fatalf("second Create: %v, want ErrAlreadyExists", err)
	}
	other := spec
	other.ID = uuid.NewString()
	if err := d.Create(ctx, other); !errors.Is(err, driver.ErrAlreadyExists) {
		t.Fatalf("Create with a used name: %v, want ErrAlreadyExists", err)
	}
	xml, err := lv.Virsh(ctx, "dumpxml", spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("libvirt's definition:\n%s", xml)
	for _, want := range []string{"<uuid>" + id + "</uuid>", "<type arch='x86_64'>exe</type>",
		"<initenv name='product_name'>OpenStack Nova</initenv>", "<source dir='" + spec.Rootfs + "'/>",
		"<log file='" + spec.ConsoleLog + "' append='off'/>", `xmlns:lxcagent="https://lxc-agent/instance/1"`,
		"<memory unit='KiB'>262144</memory>", "<shares>2048</shares>", "<quota>150000</quota>"} {
		if !strings.Contains(xml, want) {
			t.Errorf("definition lacks %s", want)
		}
	}
	if name, err := d.DomainName(ctx, id); err != nil || name != spec.Name {
		t.Errorf("DomainName = %q, %v", name, err)
	}
	if info := mustInfo(t, d, id); info.State != driver.Shutdown || info.InitPID != 0 || info.ID != id {
		t.Fatalf("after Create: %+v, want Shutdown without pid", info)
	}
	ids, err := d.List(ctx)
	if err != nil || !slices.Contains(ids, id) {
		t.Fatalf("List = %v, %v; want it to contain %s", ids, err, id)
	}
	if s, err := d.Stats(ctx, id); err != nil || s.MemoryLimit != 256<<20 || s.CPUTime != 0 {
		t.Fatalf("Stats of a stopped domain = %+v, %v", s, err)
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
		t.Fatalf("Start of a running domain: %v", err)
	}

	// Root file system, hostname (libvirt: the domain name), namespaces.
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
	if out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-u", "cat", "/proc/sys/kernel/hostname").Output(); err != nil || strings.TrimSpace(string(out)) != spec.Name {
		t.Errorf("hostname = %q, %v; want the domain name %q", out, err, spec.Name)
	}
	for _, ns := range []string{"pid", "net", "mnt", "uts", "ipc"} {
		self, _ := os.Readlink("/proc/self/ns/" + ns)
		theirs, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if self == theirs || theirs == "" {
			t.Errorf("container shares the host's %s namespace", ns)
		}
	}
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if !strings.Contains(string(env), "product_name=OpenStack Nova") {
		t.Errorf("init's environment lacks product_name: %q", env)
	}

	// Console output reaches the log file.
	waitFor(t, "boot line in console log", 10*time.Second, func() bool { return fileContains(spec.ConsoleLog, bootLine) })

	// Limits applied before init ran; where libvirt puts the cgroups.
	if unifiedHost() {
		cg := cgroupDir(t, pid, "memory")
		t.Logf("cgroup %s", cg)
		if got := readTrim(t, filepath.Join(cg, "memory.max")); got != strconv.Itoa(256<<20) {
			t.Errorf("memory.max = %s", got)
		}
	} else {
		mem := cgroupDir(t, pid, "memory")
		t.Logf("memory cgroup %s", mem)
		if !strings.Contains(mem, spec.Name) {
			t.Errorf("memory cgroup %s is not the domain's", mem)
		}
		if got := readTrim(t, filepath.Join(mem, "memory.limit_in_bytes")); got != strconv.Itoa(256<<20) {
			t.Errorf("memory.limit_in_bytes = %s, want %d", got, 256<<20)
		}
		cpu := cgroupDir(t, pid, "cpu")
		for f, want := range map[string]string{"cpu.cfs_quota_us": "150000", "cpu.cfs_period_us": "100000", "cpu.shares": "2048"} {
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

	// Live limits.
	if err := d.SetLimits(ctx, id, driver.Limits{MemoryMB: 128, VCPUs: 2, CPUShares: 512}); err != nil {
		t.Fatalf("SetLimits: %v", err)
	}
	if !unifiedHost() {
		if got := readTrim(t, filepath.Join(cgroupDir(t, pid, "memory"), "memory.limit_in_bytes")); got != strconv.Itoa(128<<20) {
			t.Errorf("after SetLimits memory.limit_in_bytes = %s", got)
		}
		cpu := cgroupDir(t, pid, "cpu")
		if got := readTrim(t, filepath.Join(cpu, "cpu.shares")); got != "512" {
			t.Errorf("after SetLimits cpu.shares = %s", got)
		}
		if got := readTrim(t, filepath.Join(cpu, "cpu.cfs_quota_us")); got != "-1" {
			t.Errorf("after SetLimits cpu.cfs_quota_us = %s, want -1", got)
		}
	}
	if st, err := d.Stats(ctx, id); err != nil || st.MemoryLimit != 128<<20 {
		t.Errorf("Stats after SetLimits: %+v, %v", st, err)
	}
	if xml, _ := lv.Virsh(ctx, "dumpxml", "--inactive", spec.Name); !strings.Contains(xml, "<memory unit='KiB'>131072</memory>") {
		t.Errorf("the definition keeps the old memory:\n%s", xml)
	}

	// Pause / Unpause (freezer).
	if err := d.Pause(ctx, id); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if info := mustInfo(t, d, id); info.State != driver.Paused || info.InitPID != pid {
		t.Errorf("after Pause: %+v", info)
	}
	if !unifiedHost() {
		if got := readTrim(t, filepath.Join(cgroupDir(t, pid, "freezer"), "freezer.state")); got != "FROZEN" {
			t.Errorf("freezer.state = %s", got)
		}
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
	if err := d.Unpause(ctx, id); err != nil {
		t.Errorf("Unpause of a running domain: %v", err)
	}

	// Graceful stop: init halts and runs its shutdown actions.
	t0 = time.Now()
	if err := d.Stop(ctx, id, 20*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	took := time.Since(t0)
	t.Logf("graceful Stop took %v", took)
	if took > 15*time.Second {
		t.Errorf("graceful stop took %v: halt ignored, killed at the timeout?", took)
	}
	if info := mustInfo(t, d, id); info.State != driver.Shutdown || info.InitPID != 0 {
		t.Fatalf("after Stop: %+v", info)
	}
	waitFor(t, "shutdown line in console log", 5*time.Second, func() bool { return fileContains(spec.ConsoleLog, shutdownLine) })
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Errorf("old init pid %d still exists", pid)
	}
	if err := d.Stop(ctx, id, time.Second); err != nil {
		t.Errorf("Stop of a stopped domain: %v", err)
	}
	if err := d.Pause(ctx, id); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("Pause of a stopped domain: %v, want ErrInvalidState", err)
	}
	if err := d.Unpause(ctx, id); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("Unpause of a stopped domain: %v, want ErrInvalidState", err)
	}
	if st, err := d.Stats(ctx, id); err != nil || st.MemoryLimit != 128<<20 {
		t.Errorf("Stats of the stopped domain after SetLimits: %+v, %v", st, err)
	}

	// Start again (the new limits hold), then kill (timeout 0).
	if err := d.Start(ctx, id); err != nil {
		t.Fatalf("second Start: %v", err)
	}
	info = mustInfo(t, d, id)
	if info.State != driver.Running || info.InitPID <= 0 || info.InitPID == pid {
		t.Fatalf("after second Start: %+v (old pid %d)", info, pid)
	}
	if !unifiedHost() {
		if got := readTrim(t, filepath.Join(cgroupDir(t, info.InitPID, "memory"), "memory.limit_in_bytes")); got != strconv.Itoa(128<<20) {
			t.Errorf("after restart memory.limit_in_bytes = %s", got)
		}
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
	if b, err := os.ReadFile(lv.ControllerLog(spec.Name)); err == nil {
		t.Logf("controller log:\n%s", b)
	}

	if b, err := os.ReadFile(spec.ConsoleLog); err == nil {
		t.Logf("console log: %q", b)
	}

	// Destroy leaves the rootfs and the console log alone.
	if err := d.Destroy(ctx, id); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if _, err := d.Info(ctx, id); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("Info after Destroy: %v, want ErrNotFound", err)
	}
	if _, err := lv.Virsh(ctx, "dominfo", spec.Name); err == nil {
		t.Errorf("libvirt still knows %s", spec.Name)
	}
	checkRootfsIntact(t, spec.Rootfs, before)
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

// makeBridge creates a brq… bridge (what the agent ensures for this
// backend) and deletes it when the test ends.
func makeBridge(t testing.TB) string {
	t.Helper()
	br := bridgePrefix + randHex(4)
	run(t, "ip", "link", "add", br, "type", "bridge")
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", br).Run()
		if linkExists(br) {
			t.Errorf("could not remove bridge %s", br)
		}
	})
	run(t, "ip", "link", "set", br, "up")
	return br
}

func TestLibvirtNIC(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 3*time.Minute)
	br := makeBridge(t)
	tap := tapPrefix + randHex(4)
	spec := newSpec(t)
	const mac = "fa:16:3e:10:20:30"
	spec.NICs = []driver.NIC{{
		Bridge:   br,
		Tap:      tap,
		Name:     "eth0",
		MAC:      mac,
		MTU:      1400,
		Addrs:    []netip.Prefix{netip.MustParsePrefix("192.0.2.10/24"), netip.MustParsePrefix("2001:db8::10/64")},
		Gateway4: netip.MustParseAddr("192.0.2.1"),
		Gateway6: netip.MustParseAddr("2001:db8::1"),
	}}
	create(t, d, spec)
	if linkExists(tap) {
		t.Fatalf("%s exists before Start", tap)
	}
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := strconv.Itoa(mustInfo(t, d, spec.ID).InitPID)

	// libvirt made the tap, in the bridge; the driver set the MTU.
	host := run(t, "ip", "-o", "-d", "link", "show", "dev", tap)
	t.Logf("host end: %s", host)
	for _, want := range []string{"master " + br, "mtu 1400", "veth"} {
		if !strings.Contains(host, want) {
			t.Errorf("%s lacks %q", tap, want)
		}
	}
	link := run(t, "nsenter", "-t", pid, "-n", "ip", "-o", "link", "show", "dev", "eth0")
	addr := run(t, "nsenter", "-t", pid, "-n", "ip", "-o", "addr", "show", "dev", "eth0")
	route := run(t, "nsenter", "-t", pid, "-n", "ip", "route", "show")
	route6 := run(t, "nsenter", "-t", pid, "-n", "ip", "-6", "route", "show")
	t.Logf("inside:\n%s%s%s%s", link, addr, route, route6)
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
	if !strings.Contains(route6, "default via 2001:db8::1 dev eth0") {
		t.Errorf("no IPv6 default route via 2001:db8::1")
	}
	// Traffic from the container shows in the stats (its tx).
	exec.Command("nsenter", "-t", pid, "-n", "/bin/busybox", "ping", "-c", "2", "-W", "1", "192.0.2.1").Run()
	st, err := d.Stats(ctx, spec.ID)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	t.Logf("nic stats: %+v", st.NICs)
	if len(st.NICs) != 1 || st.NICs[0].MAC != mac || st.NICs[0].TxPackets == 0 {
		t.Errorf("NIC stats = %+v, want tx packets from the pings", st.NICs)
	}
	// Bridge side counters: what the container sent, the tap received.
	rx := readTrim(t, "/sys/class/net/"+tap+"/statistics/rx_packets")
	t.Logf("tap rx_packets %s", rx)

	if err := d.Stop(ctx, spec.ID, 0); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	waitFor(t, "tap to go with the container", 5*time.Second, func() bool { return !linkExists(tap) })
	// Restart: libvirt makes the pair again.
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("restart with the NIC: %v", err)
	}
	pid = strconv.Itoa(mustInfo(t, d, spec.ID).InitPID)
	if addr := run(t, "nsenter", "-t", pid, "-n", "ip", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(addr, "192.0.2.10/24") {
		t.Errorf("after restart eth0: %s", addr)
	}
	if link := run(t, "nsenter", "-t", pid, "-n", "ip", "-o", "link", "show", "dev", "eth0"); !strings.Contains(link, "mtu 1400") {
		t.Errorf("after restart eth0: %s", link)
	}
	if err := d.Destroy(ctx, spec.ID); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	waitFor(t, "tap to go after Destroy", 5*time.Second, func() bool { return !linkExists(tap) })
	if !linkExists(br) {
		t.Errorf("Destroy removed the bridge")
	}
}

// A root filesystem mounted on the host after libvirtd started (an overlay,
// as the agent makes) propagates into libvirtd's namespace and boots.
func TestLibvirtRootfsMountedAfterLibvirtd(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 2*time.Minute)
	spec := newSpec(t)
	base := filepath.Dir(spec.Rootfs)
	upper, work, merged := filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "merged")
	for _, p := range []string{upper, work, merged, filepath.Join(upper, "etc")} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(upper, "etc", "overlay-marker"), []byte("upper\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := "lowerdir=" + spec.Rootfs + ",upperdir=" + upper + ",workdir=" + work
	if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	unmounted := false
	t.Cleanup(func() {
		if !unmounted {
			syscall.Unmount(merged, syscall.MNT_DETACH)
		}
	})
	if m, _ := testenv.MountsUnderPid(lv.Pid(), merged); len(m) != 1 {
		t.Fatalf("overlay mounted after libvirtd started is not in its namespace: %v", m)
	}
	spec.Rootfs = merged
	create(t, d, spec)
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("Start from the overlay: %v", err)
	}
	pid := mustInfo(t, d, spec.ID).InitPID
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/etc/overlay-marker", pid)); err != nil || string(b) != "upper\n" {
		t.Errorf("container does not see the overlay's upper layer: %q, %v", b, err)
	}
	waitFor(t, "boot line", 10*time.Second, func() bool { return fileContains(spec.ConsoleLog, bootLine) })
	// A file the container writes lands in the upper directory.
	if out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-m", "-r", "/bin/busybox", "touch", "/root/written").CombinedOutput(); err != nil {
		t.Fatalf("write inside: %v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(upper, "root", "written")); err != nil {
		t.Errorf("write inside the container is not in the upper dir: %v", err)
	}
	if err := d.Destroy(ctx, spec.ID); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if err := syscall.Unmount(merged, 0); err != nil {
		t.Fatalf("umount the overlay after Destroy: %v", err)
	}
	unmounted = true
	if m, _ := testenv.MountsUnderPid(lv.Pid(), base); len(m) > 0 {
		t.Errorf("mounts left in libvirtd's namespace: %v", m)
	}
	if m, _ := testenv.MountsUnderPid(lv.NamespacePid(), base); len(m) > 0 {
		t.Errorf("mounts left in the namespace holder's view: %v", m)
	}
}

// defineForeign defines spec's domain without the lxc-agent marker, as
// another tool on the same libvirtd would.
func defineForeign(t testing.TB, spec driver.Spec) {
	t.Helper()
	doc, err := libvirtlxc.DomainXML(spec, 0)
	if err != nil {
		t.Fatal(err)
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	dom.Metadata = nil
	doc, err = dom.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "foreign.xml")
	if err := os.WriteFile(f, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, time.Minute)
	if _, err := lv.Virsh(ctx, "define", f); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lv.Virsh(context.Background(), "destroy", spec.Name)
		if _, err := lv.Virsh(context.Background(), "undefine", spec.Name); err != nil {
			t.Errorf("undefine foreign domain: %v", err)
		}
	})
}

func TestLibvirtForeignDomains(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 2*time.Minute)
	foreign := newSpec(t)
	defineForeign(t, foreign)
	if _, err := lv.Virsh(ctx, "start", foreign.Name); err != nil {
		t.Fatal(err)
	}
	ours := newSpec(t)
	create(t, d, ours)

	ids, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(ids, foreign.ID) || !slices.Contains(ids, ours.ID) {
		t.Errorf("List = %v: want %s (ours) and not %s (foreign)", ids, ours.ID, foreign.ID)
	}
	if _, err := d.Info(ctx, foreign.ID); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Info of a foreign domain: %v, want ErrNotFound", err)
	}
	for name, op := range map[string]func() error{
		"Start": func() error { return d.Start(ctx, foreign.ID) },
		"Stop":  func() error { return d.Stop(ctx, foreign.ID, 0) },
		"Pause": func() error { return d.Pause(ctx, foreign.ID) },
		"SetLimits": func() error {
			return d.SetLimits(ctx, foreign.ID, driver.Limits{MemoryMB: 64})
		},
		"Stats": func() error { _, err := d.Stats(ctx, foreign.ID); return err },
	} {
		if err := op(); !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("%s of a foreign domain: %v, want ErrNotFound", name, err)
		}
	}
	if err := d.Destroy(ctx, foreign.ID); err != nil {
		t.Errorf("Destroy of a foreign domain: %v", err)
	}
	if out, err := lv.Virsh(ctx, "domstate", foreign.Name); err != nil || !strings.Contains(out, "running") {
		t.Errorf("the foreign domain was touched: %q, %v", out, err)
	}
	if err := d.Create(ctx, foreign); !errors.Is(err, driver.ErrAlreadyExists) {
		t.Errorf("Create over a foreign domain: %v, want ErrAlreadyExists", err)
	}
}

// An init that ignores the halt signal is destroyed when the timeout expires.
func TestLibvirtStopTimeout(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 2*time.Minute)
	spec := newSpec(t)
	// sleep as pid 1 has no handler for SIGPWR: the kernel drops it.
	if err := os.WriteFile(filepath.Join(spec.Rootfs, "sbin", "sleepinit"), []byte("#!/bin/sh\nexec /bin/sleep 3600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec.Init = "/sbin/sleepinit"
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
	if took < 1500*time.Millisecond || took > 6*time.Second {
		t.Errorf("Stop took %v, want just over the 1.5s timeout", took)
	}
	if info := mustInfo(t, d, spec.ID); info.State != driver.Shutdown {
		t.Errorf("after Stop: %+v", info)
	}

	// A context that ends before the timeout stops the wait, not the domain.
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

// A paused domain is destroyed; the rootfs survives.
func TestLibvirtDestroyPaused(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 2*time.Minute)
	spec := newSpec(t)
	before := tree(t, spec.Rootfs)
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
		t.Fatalf("Destroy of a paused domain: %v", err)
	}
	t.Logf("Destroy of a paused domain took %v", time.Since(t0))
	if _, err := d.Info(ctx, spec.ID); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("Info after Destroy: %v", err)
	}
	waitFor(t, "init to go away", 10*time.Second, func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return err != nil
	})
	checkRootfsIntact(t, spec.Rootfs, before)
}

// A paused domain stopped with a grace period is thawed and halts cleanly.
func TestLibvirtStopPaused(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 2*time.Minute)
	spec := newSpec(t)
	create(t, d, spec)
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("Start: %v", err)
	}
	waitFor(t, "boot line", 10*time.Second, func() bool { return fileContains(spec.ConsoleLog, bootLine) })
	if err := d.Pause(ctx, spec.ID); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if err := d.Stop(ctx, spec.ID, 20*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if info := mustInfo(t, d, spec.ID); info.State != driver.Shutdown {
		t.Fatalf("after Stop: %+v", info)
	}
	waitFor(t, "shutdown line", 5*time.Second, func() bool { return fileContains(spec.ConsoleLog, shutdownLine) })
}

// Start failures carry libvirt's message and leave the domain shut off and
// destroyable.
func TestLibvirtStartFailure(t *testing.T) {
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
		if strings.Contains(err.Error(), "virError(") {
			t.Errorf("error shows libvirt's raw error struct: %v", err)
		}
		if info := mustInfo(t, d, spec.ID); info.State != driver.Shutdown {
			t.Errorf("after failed Start: %+v", info)
		}
	})
	t.Run("missing init", func(t *testing.T) {
		spec := newSpec(t)
		spec.Init = "/sbin/no-such-init"
		create(t, d, spec)
		err := d.Start(ctx, spec.ID)
		t.Logf("Start error: %v", err)
		if err == nil {
			// libvirt may report the exec failure only after the start.
			waitFor(t, "domain to stop", 10*time.Second, func() bool {
				return mustInfo(t, d, spec.ID).State == driver.Shutdown
			})
		}
		if info := mustInfo(t, d, spec.ID); info.State != driver.Shutdown {
			t.Errorf("after failed Start: %+v", info)
		}
	})
	t.Run("init exits at once", func(t *testing.T) {
		spec := newSpec(t)
		spec.Init = "/bin/true"
		create(t, d, spec)
		t0 := time.Now()
		err := d.Start(ctx, spec.ID)
		t.Logf("Start error after %v: %v", time.Since(t0), err)
		waitFor(t, "domain to be shut off", 10*time.Second, func() bool {
			return mustInfo(t, d, spec.ID).State == driver.Shutdown
		})
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

func TestLibvirtNotFound(t *testing.T) {
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
		if err := d.SetLimits(ctx, id, driver.Limits{MemoryMB: 64}); !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("SetLimits(%q): %v", id, err)
		}
		if err := d.Destroy(ctx, id); err != nil {
			t.Errorf("Destroy(%q): %v", id, err)
		}
	}
	_, err := d.Info(ctx, uuid.NewString())
	t.Logf("not found error: %v", err)
	bad := newSpec(t)
	bad.ID = "../escape"
	if err := d.Create(ctx, bad); err == nil {
		t.Errorf("Create accepted id %q", bad.ID)
	}
}

// The driver reconnects when libvirtd restarts; running domains keep
// running and are still managed.
func TestLibvirtReconnect(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 2*time.Minute)
	spec := newSpec(t)
	create(t, d, spec)
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := mustInfo(t, d, spec.ID).InitPID
	old := lv.Pid()
	if err := lv.RestartDaemon(ctx); err != nil {
		t.Fatalf("restart libvirtd: %v", err)
	}
	t.Logf("libvirtd restarted: pid %d -> %d", old, lv.Pid())
	info, err := d.Info(ctx, spec.ID)
	if err != nil {
		t.Fatalf("Info after the restart: %v", err)
	}
	if info.State != driver.Running || info.InitPID != pid {
		t.Errorf("after the restart: %+v (init was %d)", info, pid)
	}
	if err := d.Stop(ctx, spec.ID, 20*time.Second); err != nil {
		t.Fatalf("Stop after the restart: %v", err)
	}
	if info := mustInfo(t, d, spec.ID); info.State != driver.Shutdown {
		t.Errorf("after Stop: %+v", info)
	}
}

// A new driver (an agent restart) logs the console of a domain that was
// started by an earlier one.
func TestLibvirtConsoleAdopted(t *testing.T) {
	requireRoot(t)
	ctx := ctxT(t, 2*time.Minute)
	d1, err := libvirtlxc.New(lv.URI(), nil)
	if err != nil {
		t.Fatal(err)
	}
	spec := newSpec(t)
	// A line on the console every 200 ms.
	tick := "::sysinit:/bin/echo " + bootLine + "\n::respawn:/bin/sh -c 'echo tick; exec sleep 0.2'\n"
	if err := os.WriteFile(filepath.Join(spec.Rootfs, "etc", "inittab"), []byte(tick), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d1.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d, err := libvirtlxc.New(lv.URI(), nil)
		if err != nil {
			t.Error(err)
			return
		}
		defer d.Close()
		if err := d.Destroy(context.Background(), spec.ID); err != nil {
			t.Errorf("cleanup Destroy: %v", err)
		}
	})
	if err := d1.Start(ctx, spec.ID); err != nil {
		t.Fatalf("Start: %v", err)
	}
	waitFor(t, "ticks", 10*time.Second, func() bool { return fileContains(spec.ConsoleLog, "tick") })
	d1.Close()
	time.Sleep(300 * time.Millisecond)
	b, _ := os.ReadFile(spec.ConsoleLog)
	n := strings.Count(string(b), "tick")
	time.Sleep(time.Second)
	if b, _ := os.ReadFile(spec.ConsoleLog); strings.Count(string(b), "tick") != n {
		t.Errorf("console still logged after Close")
	}
	d2 := newDriver(t)
	waitFor(t, "new ticks after the second driver started", 10*time.Second, func() bool {
		b, _ := os.ReadFile(spec.ConsoleLog)
		return strings.Count(string(b), "tick") > n+2
	})
	if err := d2.Destroy(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
}

// An unprivileged container: uid/gid maps from Spec.IDMaps.
func TestLibvirtIDMap(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 2*time.Minute)
	spec := newSpec(t)
	const base = 200000
	run(t, "chown", "-R", "-h", fmt.Sprintf("%d:%d", base, base), spec.Rootfs)
	// The mapped root must reach the rootfs: t.TempDir() makes 0700 dirs.
	for p := filepath.Dir(spec.Rootfs); p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	spec.IDMaps = []driver.IDMap{{Kind: 'u', ContainerID: 0, HostID: base, Count: 65536}, {Kind: 'g', ContainerID: 0, HostID: base, Count: 65536}}
	create(t, d, spec)
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := mustInfo(t, d, spec.ID).InitPID
	um := strings.Fields(readTrim(t, fmt.Sprintf("/proc/%d/uid_map", pid)))
	if !slices.Equal(um, []string{"0", strconv.Itoa(base), "65536"}) {
		t.Errorf("uid_map = %v", um)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d", pid), &st); err != nil || st.Uid != base {
		t.Errorf("init runs as host uid %d (%v), want %d", st.Uid, err, base)
	}
	waitFor(t, "boot line", 10*time.Second, func() bool { return fileContains(spec.ConsoleLog, bootLine) })
	if err := d.Stop(ctx, spec.ID, 20*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

// Several domains started and stopped at once.
func TestLibvirtParallel(t *testing.T) {
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
}

// BenchmarkLibvirtStartStop measures Start (controller, init running, MTU
// and console set up) and a kill (Stop with timeout 0) of one domain.
func BenchmarkLibvirtStartStop(b *testing.B) {
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
	b.ReportMetric(float64(start.Microseconds())/1000/float64(b.N), "start-ms/op")
	b.ReportMetric(float64(stop.Microseconds())/1000/float64(b.N), "kill-ms/op")
}

// BenchmarkLibvirtShutdown measures a graceful Stop (SIGPWR to busybox init).
func BenchmarkLibvirtShutdown(b *testing.B) {
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
	b.ReportMetric(float64(stop.Microseconds())/1000/float64(b.N), "shutdown-ms/op")
}

// BenchmarkLibvirtCreateStartDestroy measures a whole instance life:
// define, start, destroy (kill + undefine).
func BenchmarkLibvirtCreateStartDestroy(b *testing.B) {
	d := newDriver(b)
	ctx := context.Background()
	spec := newSpec(b)
	var create, start, destroy time.Duration
	for i := 0; i < b.N; i++ {
		spec.ID, spec.Name = uuid.NewString(), testName()
		t0 := time.Now()
		if err := d.Create(ctx, spec); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := d.Start(ctx, spec.ID); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if err := d.Destroy(ctx, spec.ID); err != nil {
			b.Fatal(err)
		}
		create += t1.Sub(t0)
		start += t2.Sub(t1)
		destroy += time.Since(t2)
	}
	b.ReportMetric(float64(create.Microseconds())/1000/float64(b.N), "create-ms/op")
	b.ReportMetric(float64(start.Microseconds())/1000/float64(b.N), "start-ms/op")
	b.ReportMetric(float64(destroy.Microseconds())/1000/float64(b.N), "destroy-ms/op")
}

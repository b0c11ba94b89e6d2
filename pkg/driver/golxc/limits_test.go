package golxc_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/driver/drivertest"
)

// liblxc 5.0 applies lxc.cgroup2.* keys only on a pure cgroup2 host and
// lxc.cgroup.* keys only elsewhere; a key for the other layout is ignored
// with a WARN, and a lxc.cgroup.* file that does not exist fails the
// start. This is why the driver picks the key per controller and probes
// the I/O weight file.
func TestLiblxcCgroupKeys(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 2*time.Minute)
	unified := unifiedHost()
	wrong, right := "lxc.cgroup2.pids.max", "lxc.cgroup.pids.max"
	if unified {
		wrong, right = right, wrong
	}

	spec := newSpec(t)
	create(t, d, spec)
	appendConfig(t, d.ConfigPath(spec.ID), wrong+" = 10")
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("Start with %s: %v", wrong, err)
	}
	ctrl := "pids"
	if unified {
		ctrl = "" // cgroupDir's name for the cgroup2 group
	}
	pids := cgroupDir(t, mustInfo(t, d, spec.ID).InitPID, ctrl)
	got := readTrim(t, filepath.Join(pids, "pids.max"))
	t.Logf("%s = 10 on this host (unified %v): pids.max = %s", wrong, unified, got)
	if got != "max" {
		t.Errorf("the wrong-layout key %s was applied (pids.max %s): liblxc changed, revisit cgroupKey", wrong, got)
	}
	if err := d.Stop(ctx, spec.ID, 0); err != nil {
		t.Fatal(err)
	}
	appendConfig(t, d.ConfigPath(spec.ID), right+" = 10")
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatalf("Start with %s: %v", right, err)
	}
	pids = cgroupDir(t, mustInfo(t, d, spec.ID).InitPID, ctrl)
	if got := readTrim(t, filepath.Join(pids, "pids.max")); got != "10" {
		t.Errorf("%s = 10: pids.max = %s", right, got)
	}
	if err := d.Stop(ctx, spec.ID, 0); err != nil {
		t.Fatal(err)
	}

	if unified {
		return
	}
	// A v1 file the kernel does not have: the start fails.
	missing := ""
	for _, f := range []string{"blkio.weight", "blkio.bfq.weight"} {
		if g, _ := filepath.Glob("/sys/fs/cgroup/blkio/*/" + f); len(g) == 0 {
			missing = f
			break
		}
	}
	if missing == "" {
		t.Skip("this host has every blkio weight file")
	}
	spec2 := newSpec(t)
	create(t, d, spec2)
	appendConfig(t, d.ConfigPath(spec2.ID), "lxc.cgroup."+missing+" = 100")
	err := d.Start(ctx, spec2.ID)
	t.Logf("Start with lxc.cgroup.%s (absent on this host): %v", missing, err)
	if err == nil {
		t.Errorf("Start succeeded with a missing cgroup file")
	}
	if info := mustInfo(t, d, spec2.ID); info.State != driver.Shutdown {
		t.Errorf("after the failed start: %+v", info)
	}
}

func appendConfig(t *testing.T, path, line string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// A live change the kernel refuses (a memory limit below unreclaimable
// usage) leaves the running limits, the spec and the config as they were.
func TestSetLimitsRefused(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, 2*time.Minute)
	spec := newSpec(t)
	spec.Limits = driver.Limits{MemoryMB: 128, VCPUs: 1, Pids: 100}
	create(t, d, spec)
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	cfgBefore := readTrim(t, d.ConfigPath(spec.ID))
	pid := mustInfo(t, d, spec.ID).InitPID

	// 48 MiB in a tmpfs of the container: charged to it and, with memsw
	// limited to the memory limit (or no swap), not reclaimable.
	out, err := drivertest.Nsenter(ctx, pid, "/bin/busybox", "sh", "-c",
		"mount -t tmpfs -o size=100m ballast /tmp && dd if=/dev/zero of=/tmp/ballast bs=1M count=48")
	if err != nil {
		t.Fatalf("fill tmpfs: %v: %s", err, out)
	}
	st, _ := d.Stats(ctx, spec.ID)
	t.Logf("usage with the ballast: %d MiB", st.MemoryBytes>>20)

	err = d.SetLimits(ctx, spec.ID, driver.Limits{MemoryMB: 16, VCPUs: 2, Pids: 20})
	t.Logf("SetLimits below usage: %v", err)
	if err == nil {
		t.Fatalf("SetLimits to 16 MiB under 48 MiB of tmpfs succeeded")
	}
	if got, _ := d.Spec(spec.ID); got.Limits != spec.Limits {
		t.Errorf("spec limits changed to %+v", got.Limits)
	}
	if got := readTrim(t, d.ConfigPath(spec.ID)); got != cfgBefore {
		t.Errorf("config changed:\n%s", got)
	}
	if st, err := d.Stats(ctx, spec.ID); err != nil || st.MemoryLimit != 128<<20 {
		t.Errorf("memory limit after the refused change: %+v, %v", st, err)
	}
	if got := readTrim(t, filepath.Join(cgroupDir(t, pid, "pids"), "pids.max")); !unifiedHost() && got != "100" {
		t.Errorf("pids.max after the refused change = %s, want 100 (restored)", got)
	}
	if info := mustInfo(t, d, spec.ID); info.State != driver.Running || info.InitPID != pid {
		t.Errorf("after the refused change: %+v", info)
	}

	// Invalid limits are refused before anything is touched.
	for _, l := range []driver.Limits{{MemoryMB: -1}, {CPUQuotaUS: 10}, {IOWeight: 5000}} {
		if err := d.SetLimits(ctx, spec.ID, l); err == nil || errors.Is(err, driver.ErrNotFound) {
			t.Errorf("SetLimits(%+v): %v", l, err)
		}
	}
}

// drivertest.Nsenter runs a command as a process of the container: in its
// namespaces and in init's cgroups in every hierarchy.
func TestNsenter(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, time.Minute)
	spec := newSpec(t)
	create(t, d, spec)
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	pid := mustInfo(t, d, spec.ID).InitPID
	out, err := drivertest.Nsenter(ctx, pid, "/bin/busybox", "sh", "-c", "hostname; cat /proc/self/cgroup; echo pid=$$")
	if err != nil {
		t.Fatalf("Nsenter: %v: %s", err, out)
	}
	t.Logf("inside:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if lines[0] != spec.Hostname {
		t.Errorf("hostname %q, want %q", lines[0], spec.Hostname)
	}
	// In the container's cgroup namespace its own cgroups are "/".
	for _, l := range lines[1 : len(lines)-1] {
		if f := strings.SplitN(l, ":", 3); len(f) != 3 || f[2] != "/" {
			t.Errorf("not in init's cgroup: %s", l)
		}
	}
	// The pid namespace is the container's: a small pid.
	if n, _ := strconv.Atoi(strings.TrimPrefix(lines[len(lines)-1], "pid=")); n <= 0 || n > 1000 {
		t.Errorf("pid inside = %q", lines[len(lines)-1])
	}
	dir, err := drivertest.InitCgroupDir(pid, "memory")
	if err != nil {
		t.Fatal(err)
	}
	if want := cgroupDir(t, pid, "memory"); dir != want && !unifiedHost() {
		t.Errorf("InitCgroupDir = %s, want %s", dir, want)
	}
	t.Logf("memory cgroup %s", dir)
}

// SetLimits re-renders the config the way Create wrote it: only the limit
// keys differ.
func TestSetLimitsConfig(t *testing.T) {
	d := newDriver(t)
	ctx := ctxT(t, time.Minute)
	spec := newSpec(t)
	create(t, d, spec)
	before := readTrim(t, d.ConfigPath(spec.ID))
	if err := d.SetLimits(ctx, spec.ID, spec.Limits); err != nil {
		t.Fatal(err)
	}
	if got := readTrim(t, d.ConfigPath(spec.ID)); got != before {
		t.Errorf("same limits, different config:\n%s\nwas\n%s", got, before)
	}
	l := driver.Limits{MemoryMB: 100, Pids: 30}
	if err := d.SetLimits(ctx, spec.ID, l); err != nil {
		t.Fatal(err)
	}
	after := readTrim(t, d.ConfigPath(spec.ID))
	strip := func(s string) []string {
		var out []string
		for _, line := range strings.Split(s, "\n") {
			if !strings.HasPrefix(line, "lxc.cgroup") {
				out = append(out, line)
			}
		}
		return out
	}
	if a, b := strings.Join(strip(after), "\n"), strings.Join(strip(before), "\n"); a != b {
		t.Errorf("non-limit keys changed:\n%s\nwas\n%s", a, b)
	}
	for _, want := range []string{"memory.limit_in_bytes = 104857600", "pids.max = 30"} {
		if !strings.Contains(after, want) {
			t.Errorf("config lacks %q:\n%s", want, after)
		}
	}
	if strings.Contains(after, "cpu.") {
		t.Errorf("CPU limits kept after SetLimits without VCPUs:\n%s", after)
	}
	if _, err := os.Stat(d.ConfigPath(spec.ID) + ".new"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary config left behind: %v", err)
	}
	if got, err := d.Spec(spec.ID); err != nil || got.Limits != l {
		t.Errorf("Spec = %+v, %v", got.Limits, err)
	}
	t.Logf("config after SetLimits:\n%s", after)
}

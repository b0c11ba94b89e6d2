// Package drivertest is the conformance suite of the driver contract
// (pkg/driver): every backend runs the same subtests from its own test
// files through Run, with a Harness that says how to make a driver and a
// bootable spec and which kernel-level checks apply.
//
//	func TestConformance(t *testing.T) {
//		drivertest.Run(t, drivertest.Harness{
//			New:  func(t *testing.T) driver.Driver { return newDriver(t) },
//			Spec: drivertest.BusyboxSpec,
//			Real: true,
//		})
//	}
//
// Subtests (each creates its own containers with fresh uuids and destroys
// them in a Cleanup):
//
//   - Lifecycle: Create → Shutdown, Create again → ErrAlreadyExists, Start →
//     Running with an init pid, Start again → nil, Pause → Paused / Unpause
//     (Pauser), Pause of a stopped container → ErrInvalidState, Stop with a
//     grace period → Shutdown with init's shutdown line in the console,
//     Stop again → nil, Start again, Stop(0) kills, Destroy → ErrNotFound,
//     Destroy again → nil.
//   - ConsoleLog: the boot line reaches Spec.ConsoleLog.
//   - NotFound: every operation on an unknown id → ErrNotFound (Destroy nil).
//   - List: exactly the ids created, before and after a Destroy.
//   - Limits (Real): each Limits field in the container's cgroup files.
//   - PidsLimit (Real): a fork bomb is capped at Limits.Pids.
//   - MemoryLimit (Real): a memory hog is OOM-killed at Limits.MemoryMB,
//     init survives.
//   - SetLimits (LimitSetter): live changes in the cgroup files and in
//     Stats, kept across a restart, applied to a stopped container at its
//     next start.
//   - Stats (StatsReader): CPU time, memory use and limit.
//   - Adopt (Real): a container outlives the driver (or the process) that
//     started it; a new driver sees it running with the same init and can
//     stop and destroy it.
//   - Unprivileged (Real or Unprivileged): from a busybox image (ext4 and
//     root tarball) prepared by pkg/rootfs for UnprivilegedMaps
//     (0:100000:65536), a container runs in a user namespace: init's
//     uid_map/gid_map and Uid/Gid from the host, root owning the image's
//     files inside, a file it creates in / stored in the overlay's upper
//     dir as host 100000, the base on disk unchanged, a privileged
//     container of the same image next to it, start latency of both, and
//     no mount left once destroyed and released.
package drivertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/lxc-agent/lxc-agent/internal/procfs"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// Harness describes the backend under test.
type Harness struct {
	// New returns a fresh driver value. Successive values must manage the
	// same containers (same lxcpath, same hypervisor connection): Adopt
	// and the Cleanup functions rely on it. Required.
	New func(t *testing.T) driver.Driver
	// Spec returns a bootable spec for id, without limits: init prints
	// BootLine to the console, keeps running, and prints ShutdownLine
	// when it halts. The Real subtests run busybox applets inside (sh,
	// sleep, head, tail). nil = BusyboxSpec.
	Spec func(t *testing.T, id string) driver.Spec
	// Real: the backend runs real containers on this kernel, so the
	// kernel-level subtests run (cgroup files, fork bomb, memory hog,
	// adoption, processes).
	Real bool
	// BootLine and ShutdownLine are the console lines of a boot and of a
	// clean halt; "" = the package constants.
	BootLine, ShutdownLine string
	// CgroupPath returns the host directory of container id's cgroup for
	// a controller named as in cgroup v1 ("memory", "cpu", "pids",
	// "blkio"); on cgroup2 the same directory for all of them.
	// nil = InitCgroupDir of the init pid from Info.
	CgroupPath func(t *testing.T, d driver.Driver, id, controller string) string
	// InContainer runs cmd inside the running container id, in its
	// namespaces and cgroups, and returns the combined output.
	// nil = Nsenter on the init pid from Info.
	InContainer func(t *testing.T, d driver.Driver, id string, cmd ...string) (string, error)
	// StartOrphan, if set, creates and starts spec from another process
	// that stands in for the agent, kills that process with SIGKILL once
	// the container runs, and returns the container's init pid. Adopt
	// then checks that a driver from New takes the container over. nil =
	// the container is started by a driver value of this process that is
	// then dropped.
	StartOrphan func(t *testing.T, spec driver.Spec) int
	// Unprivileged: the backend runs containers in user namespaces from
	// Spec.IDMaps, so the Unprivileged subtest runs although the backend is
	// not Real (a Real backend runs it anyway). The host must be ready for
	// UnprivilegedMaps (go-lxc: /etc/subuid and /etc/subgid ranges for root).
	Unprivileged bool
	// CPUWeight is the cgroup v2 cpu.weight the backend writes for v1
	// shares; nil = SharesToWeight.
	CPUWeight func(shares int) int
	// Timeout bounds each subtest; 0 = 3 minutes.
	Timeout time.Duration
}

type suite struct{ h Harness }

// Run runs the conformance subtests against the harness's backend.
func Run(t *testing.T, h Harness) {
	if h.New == nil {
		t.Fatal("drivertest: Harness.New is required")
	}
	if h.Spec == nil {
		h.Spec = func(t *testing.T, id string) driver.Spec { return BusyboxSpec(t, id) }
	}
	if h.BootLine == "" {
		h.BootLine = BootLine
	}
	if h.ShutdownLine == "" {
		h.ShutdownLine = ShutdownLine
	}
	if h.CPUWeight == nil {
		h.CPUWeight = SharesToWeight
	}
	if h.Timeout == 0 {
		h.Timeout = 3 * time.Minute
	}
	if h.Real && os.Geteuid() != 0 {
		t.Fatalf("drivertest: a Real backend must run as root (euid %d)", os.Geteuid())
	}
	s := &suite{h: h}
	t.Run("Lifecycle", s.lifecycle)
	t.Run("ConsoleLog", s.consoleLog)
	t.Run("NotFound", s.notFound)
	t.Run("List", s.list)
	t.Run("Limits", s.limits)
	t.Run("PidsLimit", s.pidsLimit)
	t.Run("MemoryLimit", s.memoryLimit)
	t.Run("SetLimits", s.setLimits)
	t.Run("Stats", s.stats)
	t.Run("Adopt", s.adopt)
	t.Run("Unprivileged", s.unprivileged)
	t.Run("HotplugNIC", s.hotplugNIC)
}

// --- helpers ---------------------------------------------------------------

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.h.Timeout)
	t.Cleanup(cancel)
	return ctx
}

func (s *suite) requireReal(t *testing.T) {
	t.Helper()
	if !s.h.Real {
		t.Skip("kernel-level check: the backend is not Real")
	}
}

// spec returns a fresh spec with a new uuid and the given limits.
func (s *suite) spec(t *testing.T, l driver.Limits) driver.Spec {
	t.Helper()
	sp := s.h.Spec(t, uuid.NewString())
	sp.Limits = l
	return sp
}

// create defines spec on d and destroys it (through a fresh driver if d
// is nil at that point) when the test ends.
func (s *suite) create(t *testing.T, d driver.Driver, spec driver.Spec) {
	t.Helper()
	if err := d.Create(s.ctx(t), spec); err != nil {
		t.Fatalf("Create %s: %v", spec.ID, err)
	}
	s.destroyAtEnd(t, d, spec.ID)
}

func (s *suite) destroyAtEnd(t *testing.T, d driver.Driver, id string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var pid int
		if info, err := d.Info(ctx, id); err == nil {
			pid = info.InitPID
		}
		if err := d.Destroy(ctx, id); err != nil {
			t.Errorf("cleanup: Destroy %s: %v", id, err)
			return
		}
		if _, err := d.Info(ctx, id); !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("cleanup: Info after Destroy %s: %v, want ErrNotFound", id, err)
		}
		if s.h.Real && pid > 0 {
			waitGone(t, pid, 30*time.Second)
		}
	})
}

func (s *suite) info(t *testing.T, d driver.Driver, id string) driver.Info {
	t.Helper()
	info, err := d.Info(s.ctx(t), id)
	if err != nil {
		t.Fatalf("Info %s: %v", id, err)
	}
	if info.ID != id {
		t.Errorf("Info(%s).ID = %q", id, info.ID)
	}
	return info
}

func (s *suite) start(t *testing.T, d driver.Driver, id string) driver.Info {
	t.Helper()
	t0 := time.Now()
	if err := d.Start(s.ctx(t), id); err != nil {
		t.Fatalf("Start %s: %v", id, err)
	}
	info := s.info(t, d, id)
	if info.State != driver.Running || info.InitPID <= 0 {
		t.Fatalf("after Start: %+v, want running with an init pid", info)
	}
	if s.h.Real && !pidAlive(info.InitPID) {
		t.Fatalf("after Start: init pid %d does not exist", info.InitPID)
	}
	t.Logf("Start took %v (init pid %d)", time.Since(t0).Round(time.Millisecond), info.InitPID)
	return info
}

func (s *suite) wantState(t *testing.T, d driver.Driver, id string, want driver.PowerState) driver.Info {
	t.Helper()
	info := s.info(t, d, id)
	if info.State != want {
		t.Fatalf("state = %s (%+v), want %s", info.State, info, want)
	}
	if want == driver.Shutdown && info.InitPID != 0 {
		t.Errorf("stopped container reports init pid %d", info.InitPID)
	}
	return info
}

func (s *suite) cgroupDir(t *testing.T, d driver.Driver, id, controller string) string {
	t.Helper()
	if s.h.CgroupPath != nil {
		return s.h.CgroupPath(t, d, id, controller)
	}
	dir, err := InitCgroupDir(s.info(t, d, id).InitPID, controller)
	if err != nil {
		t.Fatalf("cgroup of %s: %v", id, err)
	}
	return dir
}

func (s *suite) inContainer(t *testing.T, d driver.Driver, id string, cmd ...string) (string, error) {
	t.Helper()
	if s.h.InContainer != nil {
		return s.h.InContainer(t, d, id, cmd...)
	}
	return Nsenter(s.ctx(t), s.info(t, d, id).InitPID, cmd...)
}

func countIn(path, line string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), line)
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pidAlive(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

func waitGone(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for pidAlive(pid) {
		if time.Now().After(deadline) {
			t.Errorf("init pid %d still exists %v after Stop/Destroy", pid, timeout)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hostFine checks that the host still forks and execs promptly.
func hostFine(t *testing.T) time.Duration {
	t.Helper()
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "/bin/sh", "-c", "echo ok").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Errorf("host cannot run /bin/sh: %v: %s", err, out)
	}
	took := time.Since(t0)
	if took > 5*time.Second {
		t.Errorf("host fork+exec took %v", took)
	}
	return took
}

// --- lifecycle -------------------------------------------------------------

func (s *suite) lifecycle(t *testing.T) {
	ctx := s.ctx(t)
	d := s.h.New(t)
	spec := s.spec(t, driver.Limits{})
	id := spec.ID
	s.create(t, d, spec)

	s.wantState(t, d, id, driver.Shutdown)
	if err := d.Create(ctx, spec); !errors.Is(err, driver.ErrAlreadyExists) {
		t.Fatalf("second Create: %v, want ErrAlreadyExists", err)
	}
	s.wantState(t, d, id, driver.Shutdown)

	info := s.start(t, d, id)
	pid := info.InitPID
	if err := d.Start(ctx, id); err != nil {
		t.Fatalf("Start of a running container: %v", err)
	}
	if again := s.wantState(t, d, id, driver.Running); again.InitPID != pid {
		t.Errorf("Start of a running container changed init pid %d → %d", pid, again.InitPID)
	}
	waitFor(t, "the boot line in the console log", 15*time.Second, func() bool { return countIn(spec.ConsoleLog, s.h.BootLine) >= 1 })

	if p, ok := d.(driver.Pauser); ok {
		if err := p.Pause(ctx, id); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		if got := s.wantState(t, d, id, driver.Paused); got.InitPID != pid {
			t.Errorf("paused: init pid %d, want %d", got.InitPID, pid)
		}
		if err := p.Pause(ctx, id); err != nil {
			t.Errorf("Pause of a paused container: %v", err)
		}
		if err := p.Unpause(ctx, id); err != nil {
			t.Fatalf("Unpause: %v", err)
		}
		if got := s.wantState(t, d, id, driver.Running); got.InitPID != pid {
			t.Errorf("unpaused: init pid %d, want %d", got.InitPID, pid)
		}
		if err := p.Unpause(ctx, id); err != nil {
			t.Errorf("Unpause of a running container: %v", err)
		}
	} else {
		t.Logf("%s does not implement driver.Pauser", d.Name())
	}

	// Graceful stop: init handles the halt signal and runs its shutdown
	// actions well before the grace period ends.
	const grace = 30 * time.Second
	t0 := time.Now()
	if err := d.Stop(ctx, id, grace); err != nil {
		t.Fatalf("Stop(%v): %v", grace, err)
	}
	took := time.Since(t0)
	t.Logf("graceful Stop took %v", took.Round(time.Millisecond))
	s.wantState(t, d, id, driver.Shutdown)
	if took > grace/2 {
		t.Errorf("graceful Stop took %v: was init killed at the end of the grace period?", took)
	}
	if countIn(spec.ConsoleLog, s.h.ShutdownLine) < 1 {
		t.Errorf("console log lacks init's shutdown line %q", s.h.ShutdownLine)
	}
	if s.h.Real {
		waitGone(t, pid, 10*time.Second)
	}
	if err := d.Stop(ctx, id, time.Second); err != nil {
		t.Errorf("Stop of a stopped container: %v", err)
	}
	if p, ok := d.(driver.Pauser); ok {
		if err := p.Pause(ctx, id); !errors.Is(err, driver.ErrInvalidState) {
			t.Errorf("Pause of a stopped container: %v, want ErrInvalidState", err)
		}
		s.wantState(t, d, id, driver.Shutdown)
	}

	// Start again, then kill.
	info = s.start(t, d, id)
	if s.h.Real && info.InitPID == pid {
		t.Errorf("restart kept init pid %d", pid)
	}
	waitFor(t, "the second boot line", 15*time.Second, func() bool { return countIn(spec.ConsoleLog, s.h.BootLine) >= 2 })
	t0 = time.Now()
	if err := d.Stop(ctx, id, 0); err != nil {
		t.Fatalf("Stop(0): %v", err)
	}
	t.Logf("Stop(0) took %v", time.Since(t0).Round(time.Millisecond))
	s.wantState(t, d, id, driver.Shutdown)
	if s.h.Real {
		waitGone(t, info.InitPID, 10*time.Second)
	}
	if n := countIn(spec.ConsoleLog, s.h.ShutdownLine); n != 1 {
		t.Errorf("console log has %d shutdown lines after a kill, want 1 (from the graceful stop)", n)
	}

	if err := d.Destroy(ctx, id); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if _, err := d.Info(ctx, id); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("Info after Destroy: %v, want ErrNotFound", err)
	}
	if err := d.Destroy(ctx, id); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
	if ids, err := d.List(ctx); err != nil || slices.Contains(ids, id) {
		t.Errorf("List after Destroy = %v, %v", ids, err)
	}

	// A running container is destroyed too.
	spec2 := s.spec(t, driver.Limits{})
	s.create(t, d, spec2)
	pid2 := s.start(t, d, spec2.ID).InitPID
	if err := d.Destroy(ctx, spec2.ID); err != nil {
		t.Fatalf("Destroy of a running container: %v", err)
	}
	if _, err := d.Info(ctx, spec2.ID); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("Info after Destroy of a running container: %v", err)
	}
	if s.h.Real {
		waitGone(t, pid2, 10*time.Second)
	}
}

func (s *suite) consoleLog(t *testing.T) {
	d := s.h.New(t)
	spec := s.spec(t, driver.Limits{})
	s.create(t, d, spec)
	s.start(t, d, spec.ID)
	waitFor(t, "the boot line in "+spec.ConsoleLog, 15*time.Second, func() bool { return countIn(spec.ConsoleLog, s.h.BootLine) == 1 })
	b, _ := os.ReadFile(spec.ConsoleLog)
	t.Logf("console log:\n%s", b)
}

func (s *suite) notFound(t *testing.T) {
	ctx := s.ctx(t)
	d := s.h.New(t)
	id := uuid.NewString()
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("%s of a missing container: %v, want ErrNotFound", op, err)
		}
	}
	check("Start", d.Start(ctx, id))
	check("Stop", d.Stop(ctx, id, time.Second))
	check("Stop(0)", d.Stop(ctx, id, 0))
	_, err := d.Info(ctx, id)
	check("Info", err)
	if p, ok := d.(driver.Pauser); ok {
		check("Pause", p.Pause(ctx, id))
		check("Unpause", p.Unpause(ctx, id))
	}
	if sr, ok := d.(driver.StatsReader); ok {
		_, err := sr.Stats(ctx, id)
		check("Stats", err)
	}
	if ls, ok := d.(driver.LimitSetter); ok {
		check("SetLimits", ls.SetLimits(ctx, id, driver.Limits{MemoryMB: 64}))
	}
	if err := d.Destroy(ctx, id); err != nil {
		t.Errorf("Destroy of a missing container: %v, want nil", err)
	}
	if ids, err := d.List(ctx); err != nil || slices.Contains(ids, id) {
		t.Errorf("List = %v, %v", ids, err)
	}
}

func (s *suite) list(t *testing.T) {
	ctx := s.ctx(t)
	d := s.h.New(t)
	before, err := d.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	want := slices.Clone(before)
	var ids []string
	for range 3 {
		spec := s.spec(t, driver.Limits{})
		s.create(t, d, spec)
		ids = append(ids, spec.ID)
		want = append(want, spec.ID)
	}
	s.start(t, d, ids[1]) // running and stopped containers alike
	sameSet := func(what string, want []string) {
		t.Helper()
		got, err := d.List(ctx)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		g, w := slices.Clone(got), slices.Clone(want)
		slices.Sort(g)
		slices.Sort(w)
		if !slices.Equal(g, w) {
			t.Errorf("List %s = %v, want %v", what, got, want)
		}
	}
	sameSet("after 3 Creates", want)
	if err := d.Destroy(ctx, ids[0]); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	sameSet("after a Destroy", slices.DeleteFunc(want, func(id string) bool { return id == ids[0] }))
	if s.h.Real {
		// Another driver value sees the same containers.
		sameSet("of a new driver", append(slices.Clone(before), ids[1], ids[2]))
	}
}

// --- limits ----------------------------------------------------------------

// expectLimits checks l in the cgroup files of running container id.
func (s *suite) expectLimits(t *testing.T, d driver.Driver, id string, l driver.Limits) {
	t.Helper()
	mib := func(n int) string { return strconv.FormatInt(int64(n)<<20, 10) }

	// Memory and swap.
	mem := s.cgroupDir(t, d, id, "memory")
	if _, v1, _ := readCgroupFile(mem, "memory.limit_in_bytes"); v1 {
		want := mib(l.MemoryMB)
		expectFile(t, mem, "memory.limit_in_bytes", func(got string) bool {
			if l.MemoryMB == 0 {
				n, _ := strconv.ParseUint(got, 10, 64)
				return n >= 1<<62
			}
			return got == want
		}, want)
		if _, ok, _ := readCgroupFile(mem, "memory.memsw.limit_in_bytes"); ok && l.MemoryMB > 0 {
			expectFile(t, mem, "memory.memsw.limit_in_bytes", eq(mib(l.MemoryMB+l.SwapMB)), "")
		} else if !ok && l.SwapMB > 0 {
			t.Logf("swap: no memory.memsw.limit_in_bytes on this host (swap accounting off), not checked")
		}
	} else {
		want := "max"
		if l.MemoryMB > 0 {
			want = mib(l.MemoryMB)
		}
		expectFile(t, mem, "memory.max", eq(want), "")
		if _, ok, _ := readCgroupFile(mem, "memory.swap.max"); ok {
			want := "max"
			if l.MemoryMB > 0 || l.SwapMB > 0 {
				want = mib(l.SwapMB)
			}
			expectFile(t, mem, "memory.swap.max", eq(want), "")
		} else if l.SwapMB > 0 {
			t.Logf("swap: no memory.swap.max on this host, not checked")
		}
	}

	// CPU weight and bandwidth.
	shares := l.CPUShares
	if shares == 0 {
		shares = 1024 * max(l.VCPUs, 1)
	}
	period := l.CPUPeriodUS
	if period == 0 {
		period = 100000
	}
	quota := int64(-1)
	if l.CPUQuotaUS > 0 {
		quota = int64(l.CPUQuotaUS)
	} else if l.CPUQuotaUS == 0 && l.VCPUs > 0 {
		quota = int64(l.VCPUs) * int64(period)
	}
	cpu := s.cgroupDir(t, d, id, "cpu")
	if _, v1, _ := readCgroupFile(cpu, "cpu.shares"); v1 {
		expectFile(t, cpu, "cpu.shares", eq(strconv.Itoa(shares)), "")
		expectFile(t, cpu, "cpu.cfs_period_us", eq(strconv.Itoa(period)), "")
		expectFile(t, cpu, "cpu.cfs_quota_us", eq(strconv.FormatInt(quota, 10)), "")
	} else {
		q := "max"
		if quota > 0 {
			q = strconv.FormatInt(quota, 10)
		}
		expectFile(t, cpu, "cpu.max", eq(q+" "+strconv.Itoa(period)), "")
		expectFile(t, cpu, "cpu.weight", eq(strconv.Itoa(s.h.CPUWeight(shares))), "")
	}

	// Tasks.
	want := "max"
	if l.Pids > 0 {
		want = strconv.Itoa(l.Pids)
	}
	expectFile(t, s.cgroupDir(t, d, id, "pids"), "pids.max", eq(want), "")

	// Block I/O weight, where the host has a weight file.
	if l.IOWeight > 0 {
		t.Run("IOWeight", func(t *testing.T) {
			dir := s.cgroupDir(t, d, id, "blkio")
			for _, f := range []string{"blkio.bfq.weight", "blkio.weight", "io.bfq.weight", "io.weight"} {
				got, ok, err := readCgroupFile(dir, f)
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					continue
				}
				// "100", "default 100" or "default 100\n8:0 200".
				first := strings.Fields(strings.SplitN(got, "\n", 2)[0])
				if len(first) == 0 || first[len(first)-1] != strconv.Itoa(l.IOWeight) {
					t.Errorf("%s/%s = %q, want %d", dir, f, got, l.IOWeight)
				} else {
					t.Logf("%s = %q", f, got)
				}
				return
			}
			t.Skipf("no blkio.bfq.weight, blkio.weight, io.bfq.weight or io.weight in %s: the kernel has neither BFQ nor CFQ/iocost weights", dir)
		})
	}
}

func eq(want string) func(string) bool { return func(got string) bool { return got == want } }

func expectFile(t *testing.T, dir, file string, ok func(string) bool, want string) {
	t.Helper()
	got, exists, err := readCgroupFile(dir, file)
	switch {
	case err != nil:
		t.Errorf("%s: %v", file, err)
	case !exists:
		t.Errorf("%s/%s does not exist", dir, file)
	case !ok(got):
		if want != "" {
			t.Errorf("%s/%s = %s, want %s", dir, file, got, want)
		} else {
			t.Errorf("%s/%s = %s", dir, file, got)
		}
	default:
		t.Logf("%s = %s", file, got)
	}
}

func (s *suite) limits(t *testing.T) {
	s.requireReal(t)
	for _, c := range []struct {
		name string
		l    driver.Limits
	}{
		{"all", driver.Limits{MemoryMB: 96, SwapMB: 32, VCPUs: 1, CPUShares: 512, CPUQuotaUS: 50000, CPUPeriodUS: 200000, Pids: 100, IOWeight: 300}},
		{"vcpus", driver.Limits{MemoryMB: 128, VCPUs: 2}},
		{"unlimited-quota", driver.Limits{VCPUs: 1, CPUQuotaUS: -1, Pids: 1000}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := s.h.New(t)
			spec := s.spec(t, c.l)
			s.create(t, d, spec)
			s.start(t, d, spec.ID)
			s.expectLimits(t, d, spec.ID, c.l)
			if sr, ok := d.(driver.StatsReader); ok {
				st, err := sr.Stats(s.ctx(t), spec.ID)
				if err != nil {
					t.Fatalf("Stats: %v", err)
				}
				if st.MemoryLimit != uint64(c.l.MemoryMB)<<20 {
					t.Errorf("Stats.MemoryLimit = %d, want %d", st.MemoryLimit, uint64(c.l.MemoryMB)<<20)
				}
			}
		})
	}
}

// sampler polls a cgroup file holding a number and keeps the maximum.
type sampler struct {
	mu   sync.Mutex
	max  int64
	n    int
	stop chan struct{}
	done chan struct{}
}

func sample(path string, every time.Duration) *sampler {
	sm := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(sm.done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			if b, err := os.ReadFile(path); err == nil {
				if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
					sm.mu.Lock()
					sm.max, sm.n = max(sm.max, v), sm.n+1
					sm.mu.Unlock()
				}
			}
			select {
			case <-sm.stop:
				return
			case <-tk.C:
			}
		}
	}()
	return sm
}

func (sm *sampler) result() (maxSeen int64, samples int) {
	close(sm.stop)
	<-sm.done
	sm.mu.Lock()
	defer sm.mu.Unlock()
	return sm.max, sm.n
}

func (s *suite) pidsLimit(t *testing.T) {
	s.requireReal(t)
	const limit = 64
	d := s.h.New(t)
	// Half a CPU keeps the bomb from starving the host.
	spec := s.spec(t, driver.Limits{MemoryMB: 256, VCPUs: 1, CPUQuotaUS: 50000, Pids: limit})
	s.create(t, d, spec)
	s.start(t, d, spec.ID)
	dir := s.cgroupDir(t, d, spec.ID, "pids")
	expectFile(t, dir, "pids.max", eq(strconv.Itoa(limit)), "")
	events := func() int64 {
		v, _, _ := readCgroupFile(dir, "pids.events")
		return keyedValue(v, "max")
	}
	current := func() string { v, _, _ := readCgroupFile(dir, "pids.current"); return v }

	// 1. 500 background sleeps: forks beyond the limit fail.
	sm := sample(dir+"/pids.current", 5*time.Millisecond)
	t0 := time.Now()
	out, err := s.inContainer(t, d, spec.ID, "/bin/sh", "-c",
		`i=0; while [ $i -lt 500 ]; do sleep 60 </dev/null >/dev/null 2>&1 & i=$((i+1)); done; echo spawned=$i`)
	peak, n := sm.result()
	t.Logf("sleep loop: %v, err %v, output:\n%s", time.Since(t0).Round(time.Millisecond), err, firstLines(out, 5))
	cur := current()
	t.Logf("sleep loop: pids.current %s, max sampled %d over %d samples, pids.events max %d", cur, peak, n, events())
	if strings.Contains(out, "spawned=500") {
		t.Errorf("all 500 sleeps started under pids.max %d", limit)
	}
	if peak > limit {
		t.Errorf("pids.current reached %d > pids.max %d", peak, limit)
	}
	if c, _ := strconv.Atoi(cur); c > limit || c < limit/2 {
		t.Errorf("pids.current after the loop = %s, want near the limit %d", cur, limit)
	}
	if e := events(); e == 0 {
		t.Errorf("pids.events max = 0: no fork was refused")
	}
	if p, ok, _ := readCgroupFile(dir, "pids.peak"); ok {
		t.Logf("pids.peak = %s", p)
		if v, _ := strconv.Atoi(p); v > limit {
			t.Errorf("pids.peak %d > pids.max %d", v, limit)
		}
	}
	t.Logf("host fork+exec with the container full: %v", hostFine(t).Round(time.Millisecond))
	s.wantState(t, d, spec.ID, driver.Running)
	t0 = time.Now()
	if err := d.Stop(s.ctx(t), spec.ID, 0); err != nil {
		t.Fatalf("Stop(0) of a full container: %v", err)
	}
	t.Logf("Stop(0) with %s tasks took %v", cur, time.Since(t0).Round(time.Millisecond))
	s.wantState(t, d, spec.ID, driver.Shutdown)

	// 2. A real fork bomb, left to run for 3 seconds.
	s.start(t, d, spec.ID)
	dir = s.cgroupDir(t, d, spec.ID, "pids")
	before := events()
	sm = sample(dir+"/pids.current", 2*time.Millisecond)
	out, err = s.inContainer(t, d, spec.ID, "/bin/sh", "-c",
		`exec >/dev/null 2>&1 </dev/null; b() { b | b & }; b`)
	if err != nil {
		t.Logf("bomb launcher: %v: %s", err, out)
	}
	time.Sleep(3 * time.Second)
	hostTook := hostFine(t)
	peak, n = sm.result()
	refused := events() - before
	t.Logf("fork bomb: max pids.current %d over %d samples (pids.max %d), %d forks refused, host fork+exec %v",
		peak, n, limit, refused, hostTook.Round(time.Millisecond))
	if peak > limit {
		t.Errorf("fork bomb reached %d tasks > pids.max %d", peak, limit)
	}
	if peak < limit/2 {
		t.Errorf("fork bomb peaked at %d tasks: did it run?", peak)
	}
	if before >= 0 && refused <= 0 {
		t.Errorf("pids.events max did not grow: no fork refused")
	}
	t0 = time.Now()
	if err := d.Stop(s.ctx(t), spec.ID, 0); err != nil {
		t.Fatalf("Stop(0) after the bomb: %v", err)
	}
	t.Logf("Stop(0) after the bomb took %v", time.Since(t0).Round(time.Millisecond))
	s.wantState(t, d, spec.ID, driver.Shutdown)
}

func firstLines(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		return strings.Join(lines[:n], "") + fmt.Sprintf("… (%d more lines)\n", len(lines)-n)
	}
	return s
}

func (s *suite) memoryLimit(t *testing.T) {
	s.requireReal(t)
	const limitMB = 64
	d := s.h.New(t)
	spec := s.spec(t, driver.Limits{MemoryMB: limitMB, VCPUs: 1})
	s.create(t, d, spec)
	pid := s.start(t, d, spec.ID).InitPID
	dir := s.cgroupDir(t, d, spec.ID, "memory")
	_, v1, _ := readCgroupFile(dir, "memory.limit_in_bytes")
	ooms := func() int64 {
		if v1 {
			v, _, _ := readCgroupFile(dir, "memory.oom_control")
			return keyedValue(v, "oom_kill")
		}
		v, _, _ := readCgroupFile(dir, "memory.events")
		return keyedValue(v, "oom_kill")
	}
	before := ooms()

	// busybox tail keeps the last 10 lines; /dev/zero has no newline, so
	// it buffers all 200 MiB in its heap.
	t0 := time.Now()
	out, err := s.inContainer(t, d, spec.ID, "/bin/sh", "-c",
		`head -c 200m /dev/zero | tail >/dev/null; echo hog-exit=$?`)
	t.Logf("memory hog: %v, err %v, output: %s", time.Since(t0).Round(time.Millisecond), err, strings.TrimSpace(out))
	after := ooms()
	var peak, failcnt string
	if v1 {
		peak, _, _ = readCgroupFile(dir, "memory.max_usage_in_bytes")
		failcnt, _, _ = readCgroupFile(dir, "memory.failcnt")
	} else {
		peak, _, _ = readCgroupFile(dir, "memory.peak")
	}
	t.Logf("memory cgroup: oom_kill %d → %d, peak usage %s (limit %d), failcnt %q", before, after, peak, limitMB<<20, failcnt)
	switch {
	case after > before:
	case after < 0 && v1 && failcnt != "" && failcnt != "0":
		t.Logf("no oom_kill counter on this kernel; memory.failcnt = %s", failcnt)
	default:
		t.Errorf("no OOM kill recorded in the container's memory cgroup (oom_kill %d → %d)", before, after)
	}
	if strings.Contains(out, "hog-exit=0") {
		t.Errorf("the memory hog completed under a %d MiB limit", limitMB)
	} else if !strings.Contains(out, "hog-exit=137") {
		t.Logf("hog exit status not 137 (SIGKILL): %q", out)
	}
	if p, err := strconv.ParseUint(peak, 10, 64); err == nil && p > limitMB<<20 {
		t.Errorf("peak memory usage %d > limit %d", p, limitMB<<20)
	}
	// init survived and the container still works.
	if info := s.wantState(t, d, spec.ID, driver.Running); info.InitPID != pid {
		t.Errorf("init pid changed %d → %d: init was killed", pid, info.InitPID)
	}
	if out, err := s.inContainer(t, d, spec.ID, "/bin/sh", "-c", "echo still-alive"); err != nil || !strings.Contains(out, "still-alive") {
		t.Errorf("container unusable after the OOM kill: %v: %s", err, out)
	}
	hostFine(t)
}

func (s *suite) setLimits(t *testing.T) {
	d := s.h.New(t)
	ls, ok := d.(driver.LimitSetter)
	if !ok {
		t.Skipf("%s does not implement driver.LimitSetter", d.Name())
	}
	sr, _ := d.(driver.StatsReader)
	ctx := s.ctx(t)
	spec := s.spec(t, driver.Limits{MemoryMB: 64, VCPUs: 1, Pids: 100})
	s.create(t, d, spec)
	s.start(t, d, spec.ID)
	id := spec.ID

	check := func(what string, l driver.Limits) {
		t.Helper()
		t.Logf("-- %s: %+v", what, l)
		if s.h.Real {
			s.expectLimits(t, d, id, l)
		}
		if sr != nil {
			st, err := sr.Stats(ctx, id)
			if err != nil {
				t.Fatalf("Stats: %v", err)
			}
			if st.MemoryLimit != uint64(l.MemoryMB)<<20 {
				t.Errorf("%s: Stats.MemoryLimit = %d, want %d", what, st.MemoryLimit, uint64(l.MemoryMB)<<20)
			}
		}
	}
	set := func(l driver.Limits) {
		t.Helper()
		if err := ls.SetLimits(ctx, id, l); err != nil {
			t.Fatalf("SetLimits(%+v): %v", l, err)
		}
	}
	check("initial", spec.Limits)

	raise := driver.Limits{MemoryMB: 128, SwapMB: 64, VCPUs: 1, Pids: 200}
	set(raise)
	check("raised live", raise)

	lower := driver.Limits{MemoryMB: 96, VCPUs: 2, CPUShares: 300, Pids: 50}
	set(lower)
	check("lowered live", lower)

	if err := d.Stop(ctx, id, 0); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	s.start(t, d, id)
	check("after a restart", lower)

	if err := d.Stop(ctx, id, 0); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	stopped := driver.Limits{MemoryMB: 80, VCPUs: 1, Pids: 70}
	set(stopped)
	s.wantState(t, d, id, driver.Shutdown)
	s.start(t, d, id)
	check("set while stopped, then started", stopped)

	set(driver.Limits{})
	check("all reset to defaults live", driver.Limits{})
	s.wantState(t, d, id, driver.Running)
}

func (s *suite) stats(t *testing.T) {
	d := s.h.New(t)
	sr, ok := d.(driver.StatsReader)
	if !ok {
		t.Skipf("%s does not implement driver.StatsReader", d.Name())
	}
	ctx := s.ctx(t)
	spec := s.spec(t, driver.Limits{MemoryMB: 128, VCPUs: 1})
	s.create(t, d, spec)
	if st, err := sr.Stats(ctx, spec.ID); err != nil {
		t.Errorf("Stats of a stopped container: %v", err)
	} else {
		t.Logf("stopped: %+v", st)
	}
	s.start(t, d, spec.ID)
	if s.h.Real {
		out, err := s.inContainer(t, d, spec.ID, "/bin/sh", "-c",
			`i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo loops=$i`)
		if err != nil || !strings.Contains(out, "loops=200000") {
			t.Fatalf("CPU work in the container: %v: %s", err, out)
		}
	} else {
		time.Sleep(50 * time.Millisecond)
	}
	st, err := sr.Stats(ctx, spec.ID)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	t.Logf("running: %+v", st)
	if st.CPUTime <= 0 {
		t.Errorf("CPUTime = %v after work", st.CPUTime)
	}
	if s.h.Real && st.CPUTime < 10*time.Millisecond {
		t.Errorf("CPUTime = %v after a 200000-iteration shell loop", st.CPUTime)
	}
	if st.MemoryBytes == 0 {
		t.Errorf("MemoryBytes = 0")
	}
	if st.MemoryLimit != 128<<20 {
		t.Errorf("MemoryLimit = %d, want %d", st.MemoryLimit, 128<<20)
	}
	if st.MemoryBytes > st.MemoryLimit {
		t.Errorf("MemoryBytes %d above the limit %d", st.MemoryBytes, st.MemoryLimit)
	}
	if st.UptimeSeconds < 0 || st.UptimeSeconds > 120 {
		t.Errorf("UptimeSeconds = %d", st.UptimeSeconds)
	}
}

// --- adoption --------------------------------------------------------------

func (s *suite) adopt(t *testing.T) {
	s.requireReal(t)
	ctx := s.ctx(t)
	spec := s.spec(t, driver.Limits{MemoryMB: 64, VCPUs: 1, Pids: 100})
	var pid int
	if s.h.StartOrphan != nil {
		pid = s.h.StartOrphan(t, spec)
		t.Logf("started by another process, killed with SIGKILL: init pid %d", pid)
		s.destroyAtEnd(t, s.h.New(t), spec.ID)
	} else {
		s.destroyAtEnd(t, s.h.New(t), spec.ID)
		func() {
			d1 := s.h.New(t)
			if err := d1.Create(ctx, spec); err != nil {
				t.Fatalf("Create: %v", err)
			}
			pid = s.start(t, d1, spec.ID).InitPID
		}()
		runtime.GC() // the first driver value is gone
		t.Logf("started by a dropped driver value: init pid %d", pid)
	}
	if pid <= 0 || !pidAlive(pid) {
		t.Fatalf("init pid %d does not exist after its starter went away", pid)
	}
	st := startTime(pid)
	waitFor(t, "the boot line", 15*time.Second, func() bool { return countIn(spec.ConsoleLog, s.h.BootLine) >= 1 })
	time.Sleep(500 * time.Millisecond) // still running a moment later?

	d := s.h.New(t)
	ids, err := d.List(ctx)
	if err != nil || !slices.Contains(ids, spec.ID) {
		t.Fatalf("new driver: List = %v, %v; want it to contain %s", ids, err, spec.ID)
	}
	info := s.wantState(t, d, spec.ID, driver.Running)
	if info.InitPID != pid || startTime(pid) != st {
		t.Fatalf("new driver: init pid %d (start %s), want the original %d (start %s)", info.InitPID, startTime(info.InitPID), pid, st)
	}
	if out, err := s.inContainer(t, d, spec.ID, "/bin/sh", "-c", "echo adopted"); err != nil || !strings.Contains(out, "adopted") {
		t.Errorf("adopted container: run a command: %v: %s", err, out)
	}
	if sr, ok := d.(driver.StatsReader); ok {
		if st, err := sr.Stats(ctx, spec.ID); err != nil || st.MemoryLimit != 64<<20 {
			t.Errorf("adopted container: Stats = %+v, %v", st, err)
		}
	}
	if err := d.Stop(ctx, spec.ID, 30*time.Second); err != nil {
		t.Fatalf("new driver: Stop: %v", err)
	}
	s.wantState(t, d, spec.ID, driver.Shutdown)
	if countIn(spec.ConsoleLog, s.h.ShutdownLine) < 1 {
		t.Errorf("adopted container: no shutdown line after a graceful Stop")
	}
	waitGone(t, pid, 10*time.Second)
	if err := d.Destroy(ctx, spec.ID); err != nil {
		t.Fatalf("new driver: Destroy: %v", err)
	}
	if _, err := d.Info(ctx, spec.ID); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("Info after Destroy: %v", err)
	}
}

// startTime identifies process pid across pid reuse ("" if it is gone).
func startTime(pid int) string {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return ""
	}
	return strconv.FormatUint(st.StartTicks, 10)
}

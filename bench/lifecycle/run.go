package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
	lxc "github.com/lxc/go-lxc"
	"golang.org/x/sys/unix"
	"libvirt.org/go/libvirt"

	"github.com/lxc-agent/lxc-agent/internal/procfs"
	"github.com/lxc-agent/lxc-agent/internal/testenv"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/driver/golxc"
	"github.com/lxc-agent/lxc-agent/pkg/driver/libvirtlxc"
)

// Backend names (driver.Driver.Name()).
const (
	BackendLXC     = "lxc"
	BackendLibvirt = "libvirt-lxc"
)

// Console lines of the benchmark's busybox init.
const (
	BootLine = "lifecycle-bench: init up"
	HaltLine = "lifecycle-bench: init halting"
)

// Inittab: BootLine once init has set up its signal handling and runs its
// sysinit action, a second process (the anchor's busybox init + sleep),
// HaltLine when init handles the halt signal.
const Inittab = "::sysinit:/bin/echo " + BootLine + "\n" +
	"::respawn:/bin/sleep 1000000\n" +
	"::shutdown:/bin/echo " + HaltLine + "\n"

// Config is one benchmark run.
type Config struct {
	WorkDir  string
	N        int
	MemN     int // containers in the memory phase (at least N; 0 = N)
	Backends []string
	Grace    time.Duration // timeout of the clean stops
	Settle   time.Duration // idle time before the memory is measured
	// Helper is the binary golxc runs as "<Helper> forklxc start ..." (its
	// fork becomes the container's monitor); "" = this binary.
	Helper   string
	Progress io.Writer
}

// DefaultConfig is what bench/lifecycle.sh runs.
func DefaultConfig() Config {
	return Config{N: 10, Backends: []string{BackendLXC, BackendLibvirt}, Grace: 30 * time.Second, Settle: 15 * time.Second}
}

// Operation names, in report order.
const (
	OpCreate      = "create"
	OpFirstStart  = "start (first boot)"
	OpCreateStart = "create + start"
	OpStopClean   = "stop, clean"
	OpStart       = "start (stopped container)"
	OpStopKill    = "stop, kill (timeout 0)"
	OpRebootSoft  = "reboot soft (clean stop + start)"
	OpRebootHard  = "reboot hard (kill + start)"
	OpDestroy     = "destroy (running)"
)

// Ops is the report order of the operations.
var Ops = []string{OpCreate, OpFirstStart, OpCreateStart, OpStopClean, OpStart, OpStopKill, OpRebootSoft, OpRebootHard, OpDestroy}

// Result is one backend's figures.
type Result struct {
	Backend string
	Version string // liblxc's or libvirt's version
	Helper  string // lxc: the forklxc helper whose fork is the monitor
	// Samples are the latencies per operation, one per container, in the
	// order the containers were handled.
	Samples map[string][]time.Duration
	// CleanHalts counts the clean stops (of both kinds: stop and soft
	// reboot) after which init had printed HaltLine, of CleanStops.
	CleanHalts, CleanStops int
	// Memory with the N containers running and idle.
	// Cycles are the stopped → running → stopped readings of MemAvailable
	// (see MemCycle); the report uses the one with the smallest noise.
	Cycles     []MemCycle
	Containers []ContainerMem
	// Daemons is the RSS/PSS of the shared daemons (libvirtd + virtlogd)
	// before the first create and while loaded; zero for lxc.
	DaemonsBefore, DaemonsLoaded ProcMem
	Daemons                      string
	// Others are the other processes whose command line names the
	// backend's directory (lxc-monitord, say), while loaded.
	Others []string
	Settle time.Duration
}

// Machine are the host facts printed with the results.
type Machine struct {
	Nproc, CPU, MemTotal, Kernel, Cgroups, Packages, LoadStart, LoadEnd string
}

// Report is the whole run.
type Report struct {
	N, MemN int
	Grace   time.Duration
	Machine Machine
	Results []*Result
	Took    time.Duration
}

type bench struct {
	cfg      Config
	work     string
	log      io.Writer
	statePth string
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "[lifecycle %s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// Run measures every backend of cfg in turn.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root")
	}
	if cfg.N < 1 {
		return nil, fmt.Errorf("n = %d: want at least 1", cfg.N)
	}
	if cfg.MemN == 0 {
		cfg.MemN = cfg.N
	}
	if cfg.MemN < cfg.N {
		return nil, fmt.Errorf("mem-n = %d: want at least n = %d", cfg.MemN, cfg.N)
	}
	if cfg.Grace <= 0 {
		return nil, fmt.Errorf("grace %v: want a positive duration", cfg.Grace)
	}
	if len(cfg.Backends) == 0 {
		return nil, errors.New("no backends")
	}
	for _, be := range cfg.Backends {
		if be != BackendLXC && be != BackendLibvirt {
			return nil, fmt.Errorf("unknown backend %q (want %s or %s)", be, BackendLXC, BackendLibvirt)
		}
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	if cfg.Helper != "" {
		abs, err := filepath.Abs(cfg.Helper)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("helper: %w", err)
		}
		cfg.Helper = abs
	}
	work, err := filepath.Abs(cfg.WorkDir)
	if err != nil {
		return nil, err
	}
	if work, err = filepath.EvalSymlinks(work); err != nil {
		return nil, err
	}
	b := &bench{cfg: cfg, work: work, log: cfg.Progress, statePth: filepath.Join(work, "state.txt")}
	rep := &Report{N: cfg.N, MemN: cfg.MemN, Grace: cfg.Grace, Machine: machine()}
	lower := filepath.Join(work, "rootfs")
	if err := buildRootfs(lower); err != nil {
		return nil, fmt.Errorf("busybox rootfs: %w", err)
	}
	for _, be := range cfg.Backends {
		b.logf("%s: %d containers", be, cfg.N)
		r, err := b.runBackend(ctx, be, lower)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", be, err)
		}
		rep.Results = append(rep.Results, r)
	}
	rep.Machine.LoadEnd = loadavg()
	return rep, nil
}

// buildRootfs builds the busybox tree every container's overlay shares.
func buildRootfs(dir string) error { return testenv.BuildBusyboxRootfs(dir, Inittab) }

// instance is one benchmark container.
type instance struct {
	spec    driver.Spec
	mounted bool
	created bool
	boots   int // BootLines seen so far in its console log
}

// runBackend does the whole measurement for one backend; everything it
// made is released before it returns.
func (b *bench) runBackend(ctx context.Context, backend, lower string) (res *Result, err error) {
	dir := filepath.Join(b.work, backend)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(b.work, backend+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	logger := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	res = &Result{Backend: backend, Samples: map[string][]time.Duration{}, Settle: b.cfg.Settle}

	var drv driver.Driver
	var lv *testenv.LibvirtdServer
	var cleanups []func() error
	defer func() {
		// Last in, first out: containers, mounts, driver, libvirtd.
		var errs []error
		for i := len(cleanups) - 1; i >= 0; i-- {
			if cerr := cleanups[i](); cerr != nil {
				errs = append(errs, cerr)
			}
		}
		if cerr := errors.Join(errs...); cerr != nil {
			if err == nil {
				err = fmt.Errorf("cleanup: %w", cerr)
			} else {
				b.logf("cleanup: %v", cerr)
			}
		}
		if err != nil {
			res = nil
		}
	}()

	tag := randomHex(3)
	switch backend {
	case BackendLXC:
		lxcpath := filepath.Join(dir, "lxc")
		if err := b.appendState("lxcpath %s", lxcpath); err != nil {
			return nil, err
		}
		helper := golxc.SelfExecHelper()
		res.Helper = "this benchmark's binary (`lifecycle forklxc start`)"
		if b.cfg.Helper != "" {
			bin := b.cfg.Helper
			helper = func(ctx context.Context, args ...string) *exec.Cmd { return exec.CommandContext(ctx, bin, args...) }
			res.Helper = fmt.Sprintf("`%s forklxc start`", filepath.Base(bin))
		}
		d, err := golxc.New(lxcpath, helper, logger)
		if err != nil {
			return nil, err
		}
		drv = d
		res.Version = "liblxc " + lxc.Version()
	case BackendLibvirt:
		t0 := time.Now()
		lv, err = testenv.StartLibvirtd(ctx, filepath.Join(dir, "libvirtd"))
		if err != nil {
			return nil, err
		}
		cleanups = append(cleanups, lv.Stop)
		// pid:start-ticks, so that the script's sweep never signals a
		// reused pid.
		if err := b.appendState("libvirt %s %s %s %s", pidTicks(lv.NamespacePid()), pidTicks(lv.Pid()),
			pidTicks(lv.VirtlogdPid()), lv.URI()); err != nil {
			return nil, err
		}
		b.logf("libvirtd ready in %.1f s (pid %d)", time.Since(t0).Seconds(), lv.Pid())
		d, err := libvirtlxc.New(lv.URI(), logger)
		if err != nil {
			return nil, err
		}
		cleanups = append(cleanups, d.Close)
		drv = d
		if v, err := libvirt.GetVersion(); err == nil {
			res.Version = fmt.Sprintf("libvirt %d.%d.%d", v/1000000, v/1000%1000, v%1000)
		}
		res.Daemons = "libvirtd + virtlogd"
	}

	// One overlay of the busybox tree per container. The first N go
	// through the timed lifecycle; the memory phase runs max(N, MemN).
	insts := make([]*instance, max(b.cfg.N, b.cfg.MemN))
	lat, extra := insts[:b.cfg.N], insts[b.cfg.N:]
	for i := range insts {
		id := uuid.NewString()
		idir := filepath.Join(dir, "inst", fmt.Sprintf("%02d", i))
		inst := &instance{spec: driver.Spec{
			ID:          id,
			Name:        fmt.Sprintf("lcbench%s%02d", tag, i),
			Hostname:    fmt.Sprintf("lcbench%02d", i),
			InstanceDir: idir,
			Rootfs:      filepath.Join(idir, "rootfs"),
			ConsoleLog:  filepath.Join(idir, "console.log"),
			Init:        "/sbin/init",
		}}
		insts[i] = inst
		if err := b.appendState("id %s %s", id, inst.spec.Name); err != nil {
			return nil, err
		}
	}
	cleanups = append(cleanups, func() error { return b.release(drv, insts) })
	for _, inst := range insts {
		if err := mountOverlay(lower, inst.spec.InstanceDir); err != nil {
			return nil, err
		}
		inst.mounted = true
	}

	daemons := func() ProcMem {
		var m ProcMem
		if lv == nil {
			return m
		}
		for _, pid := range []int{lv.Pid(), lv.VirtlogdPid()} {
			if pm, err := procMem(pid); err == nil {
				m.Rss += pm.Rss
				m.Pss += pm.Pss
				m.Uss += pm.Uss
			}
		}
		return m
	}

	// Create + start: a new container's first boot.
	err = b.each(ctx, lat, "create + start", func(inst *instance) error {
		t0 := time.Now()
		if err := drv.Create(ctx, inst.spec); err != nil {
			return err
		}
		inst.created = true
		t1 := time.Now()
		if err := drv.Start(ctx, inst.spec.ID); err != nil {
			return err
		}
		t2 := time.Now()
		res.add(OpCreate, t1.Sub(t0))
		res.add(OpFirstStart, t2.Sub(t1))
		res.add(OpCreateStart, t2.Sub(t0))
		return b.waitBoot(ctx, inst)
	})
	if err != nil {
		return nil, err
	}
	stopClean := func(inst *instance) (time.Duration, error) {
		halts := countLines(inst.spec.ConsoleLog, HaltLine)
		t0 := time.Now()
		if err := drv.Stop(ctx, inst.spec.ID, b.cfg.Grace); err != nil {
			return 0, err
		}
		took := time.Since(t0)
		res.CleanStops++
		if b.waitLines(ctx, inst.spec.ConsoleLog, HaltLine, halts+1, 2*time.Second) {
			res.CleanHalts++
		}
		return took, nil
	}
	start := func(inst *instance) (time.Duration, error) {
		t0 := time.Now()
		if err := drv.Start(ctx, inst.spec.ID); err != nil {
			return 0, err
		}
		return time.Since(t0), nil
	}
	timed := func(op string, fn func(*instance) (time.Duration, error)) func(*instance) error {
		return func(inst *instance) error {
			d, err := fn(inst)
			if err != nil {
				return err
			}
			res.add(op, d)
			return nil
		}
	}
	steps := []struct {
		what string
		fn   func(*instance) error
	}{
		{"clean stop", timed(OpStopClean, stopClean)},
		{"start", func(inst *instance) error {
			if err := timed(OpStart, start)(inst); err != nil {
				return err
			}
			return b.waitBoot(ctx, inst)
		}},
		{"kill", timed(OpStopKill, func(inst *instance) (time.Duration, error) {
			t0 := time.Now()
			err := drv.Stop(ctx, inst.spec.ID, 0)
			return time.Since(t0), err
		})},
		{"start again (not timed)", func(inst *instance) error {
			if _, err := start(inst); err != nil {
				return err
			}
			return b.waitBoot(ctx, inst)
		}},
		{"soft reboot", func(inst *instance) error {
			d1, err := stopClean(inst)
			if err != nil {
				return err
			}
			d2, err := start(inst)
			if err != nil {
				return err
			}
			res.add(OpRebootSoft, d1+d2)
			return b.waitBoot(ctx, inst)
		}},
		{"hard reboot", func(inst *instance) error {
			t0 := time.Now()
			if err := drv.Stop(ctx, inst.spec.ID, 0); err != nil {
				return err
			}
			if err := drv.Start(ctx, inst.spec.ID); err != nil {
				return err
			}
			res.add(OpRebootHard, time.Since(t0))
			return b.waitBoot(ctx, inst)
		}},
	}
	for _, s := range steps {
		if err := b.each(ctx, lat, s.what, s.fn); err != nil {
			return nil, err
		}
	}

	// Memory: all N stopped (defined), then running and idle, then
	// stopped again, so that MemAvailable is compared over a short window.
	kill := func(inst *instance) error { return drv.Stop(ctx, inst.spec.ID, 0) }
	startBoot := func(inst *instance) error {
		if _, err := start(inst); err != nil {
			return err
		}
		return b.waitBoot(ctx, inst)
	}
	if err := b.each(ctx, extra, "create + start for the memory phase (not timed)", func(inst *instance) error {
		if err := drv.Create(ctx, inst.spec); err != nil {
			return err
		}
		inst.created = true
		return startBoot(inst)
	}); err != nil {
		return nil, err
	}
	// Stopped → running → stopped, repeated (shorter settle) while the two
	// stopped readings disagree by more than the noise allowance: other
	// activity on the host moves MemAvailable by tens of MiB.
	if err := b.each(ctx, insts, "kill (not timed)", kill); err != nil {
		return nil, err
	}
	b.logf("%s: memory with the containers stopped", backend)
	stopped, err := b.memSettled(ctx)
	if err != nil {
		return nil, err
	}
	res.DaemonsBefore = daemons()
	for cycle := 1; ; cycle++ {
		if err := b.each(ctx, insts, "start (not timed)", startBoot); err != nil {
			return nil, err
		}
		settle := b.cfg.Settle
		if cycle > 1 {
			settle = min(settle, repeatSettle)
		}
		b.logf("%s: %d containers running, idle for %v", backend, len(insts), settle)
		if err := sleepCtx(ctx, settle); err != nil {
			return nil, err
		}
		c := MemCycle{Before: stopped}
		if c.Loaded, err = b.memSettled(ctx); err != nil {
			return nil, err
		}
		if cycle == 1 {
			res.DaemonsLoaded = daemons()
			if err := b.measureContainers(ctx, drv, dir, lv, insts, res); err != nil {
				return nil, err
			}
		}
		if err := b.each(ctx, insts, "kill (not timed)", kill); err != nil {
			return nil, err
		}
		if c.After, err = b.memSettled(ctx); err != nil {
			return nil, err
		}
		stopped = c.After
		res.Cycles = append(res.Cycles, c)
		b.logf("%s: cycle %d: MemAvailable drop %s per container, stopped readings %s apart",
			backend, cycle, mib(c.Drop()/int64(len(insts))), mib(c.Noise()))
		if c.Acceptable() || cycle == maxMemCycles {
			break
		}
	}
	if err := b.each(ctx, insts, "start (not timed)", startBoot); err != nil {
		return nil, err
	}

	if err := b.each(ctx, extra, "destroy (not timed)", func(inst *instance) error {
		if err := drv.Destroy(ctx, inst.spec.ID); err != nil {
			return err
		}
		inst.created = false
		return nil
	}); err != nil {
		return nil, err
	}
	if err := b.each(ctx, lat, "destroy", func(inst *instance) error {
		t0 := time.Now()
		if err := drv.Destroy(ctx, inst.spec.ID); err != nil {
			return err
		}
		res.add(OpDestroy, time.Since(t0))
		inst.created = false
		return nil
	}); err != nil {
		return nil, err
	}
	if err := b.release(drv, insts); err != nil {
		return nil, err
	}
	if err := b.leftovers(ctx, backend, dir, lv, insts); err != nil {
		return nil, err
	}
	return res, nil
}

func (r *Result) add(op string, d time.Duration) { r.Samples[op] = append(r.Samples[op], d) }

// each runs fn on every instance in turn, logging progress.
func (b *bench) each(ctx context.Context, insts []*instance, what string, fn func(*instance) error) error {
	if len(insts) == 0 {
		return nil
	}
	t0 := time.Now()
	for _, inst := range insts {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(inst); err != nil {
			return fmt.Errorf("%s %s: %w", what, inst.spec.ID, err)
		}
	}
	b.logf("  %s x%d: %.1f s", what, len(insts), time.Since(t0).Seconds())
	return nil
}

// waitBoot waits until the container's init printed one more BootLine: it
// has set up its signal handling and would act on a halt signal.
func (b *bench) waitBoot(ctx context.Context, inst *instance) error {
	if !b.waitLines(ctx, inst.spec.ConsoleLog, BootLine, inst.boots+1, 30*time.Second) {
		if err := ctx.Err(); err != nil {
			return err
		}
		return fmt.Errorf("init did not print %q within 30 s (console log %s)", BootLine, inst.spec.ConsoleLog)
	}
	inst.boots = countLines(inst.spec.ConsoleLog, BootLine)
	return nil
}

// waitLines waits up to timeout until file holds at least n lines
// containing s.
func (b *bench) waitLines(ctx context.Context, file, s string, n int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if countLines(file, s) >= n {
			return true
		}
		if time.Now().After(deadline) || sleepCtx(ctx, 5*time.Millisecond) != nil {
			return false
		}
	}
}

func countLines(file, s string) int {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	n := 0
	for line := range strings.Lines(string(data)) {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// release destroys the instances still defined and unmounts their
// overlays; it is idempotent.
func (b *bench) release(drv driver.Driver, insts []*instance) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	for _, inst := range insts {
		if inst == nil {
			continue
		}
		if inst.created && drv != nil {
			if err := drv.Destroy(ctx, inst.spec.ID); err != nil {
				errs = append(errs, err)
			} else {
				inst.created = false
			}
		}
		if inst.mounted {
			if err := unmount(inst.spec.Rootfs); err != nil {
				errs = append(errs, err)
			} else {
				inst.mounted = false
			}
		}
	}
	return errors.Join(errs...)
}

// leftovers checks that nothing of the backend's containers remains.
func (b *bench) leftovers(ctx context.Context, backend, dir string, lv *testenv.LibvirtdServer, insts []*instance) error {
	var bad []string
	if m, err := testenv.MountsUnder(dir); err != nil {
		return err
	} else if len(m) > 0 {
		bad = append(bad, "mounts: "+strings.Join(m, " "))
	}
	t := snapshotProcs()
	for pid := range t.children {
		for _, c := range t.children[pid] {
			cmd := cmdline(c)
			for _, inst := range insts {
				if strings.Contains(cmd, inst.spec.ID) || strings.Contains(cmd, inst.spec.Name) {
					bad = append(bad, fmt.Sprintf("process %d: %s", c, cmd))
				}
			}
		}
	}
	switch backend {
	case BackendLXC:
		if names := lxc.DefinedContainerNames(filepath.Join(dir, "lxc")); len(names) > 0 {
			bad = append(bad, "defined: "+strings.Join(names, " "))
		}
		for _, p := range cgroupsNamed(insts) {
			bad = append(bad, "cgroup "+p)
		}
	case BackendLibvirt:
		out, err := lv.Virsh(ctx, "list", "--all", "--name")
		if err != nil {
			return err
		}
		if s := strings.TrimSpace(out); s != "" {
			bad = append(bad, "domains: "+s)
		}
		if m, err := testenv.MountsUnderPid(lv.NamespacePid(), dir); err == nil && len(m) > 0 {
			bad = append(bad, "mounts in libvirtd's namespace: "+strings.Join(m, " "))
		}
		for _, p := range cgroupsNamed(insts) {
			bad = append(bad, "cgroup "+p)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("left behind: %s", strings.Join(bad, "; "))
	}
	return nil
}

// measureContainers reads what every running container costs.
func (b *bench) measureContainers(ctx context.Context, drv driver.Driver, dir string, lv *testenv.LibvirtdServer, insts []*instance, res *Result) error {
	t := snapshotProcs()
	for _, inst := range insts {
		info, err := drv.Info(ctx, inst.spec.ID)
		if err != nil {
			return err
		}
		if info.State != driver.Running || info.InitPID <= 0 {
			return fmt.Errorf("container %s: %s, init pid %d: want running", inst.spec.ID, info.State, info.InitPID)
		}
		id, name := inst.spec.ID, inst.spec.Name
		cm, err := measureContainer(t, info.InitPID, []string{id, name}, func(c string) bool {
			return strings.Contains(c, id) || strings.Contains(c, name)
		})
		if err != nil {
			return fmt.Errorf("container %s: %w", id, err)
		}
		res.Containers = append(res.Containers, cm)
	}
	res.Others = otherProcs(t, dir, res.Containers, lv)
	return nil
}

// otherProcs lists the processes naming dir in their command line that are
// neither a container's (monitor, container processes) nor the daemons.
func otherProcs(t procTable, dir string, cms []ContainerMem, lv *testenv.LibvirtdServer) []string {
	known := map[int]bool{os.Getpid(): true}
	for _, cm := range cms {
		known[cm.MonitorPID] = true
		for _, pid := range t.tree(cm.InitPID) {
			known[pid] = true
		}
	}
	if lv != nil {
		known[lv.Pid()], known[lv.VirtlogdPid()], known[lv.NamespacePid()] = true, true, true
	}
	var out []string
	for _, pids := range t.children {
		for _, pid := range pids {
			if c := cmdline(pid); !known[pid] && strings.Contains(c, dir) {
				out = append(out, fmt.Sprintf("%d: %s", pid, c))
			}
		}
	}
	slices.Sort(out)
	return out
}

// cgroupsNamed lists cgroup directories (at any depth) named after one of
// the instances.
func cgroupsNamed(insts []*instance) []string {
	var out []string
	_ = filepath.WalkDir("/sys/fs/cgroup", func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		base := d.Name()
		for _, inst := range insts {
			if strings.Contains(base, inst.spec.ID) || strings.Contains(base, inst.spec.Name) {
				out = append(out, p)
				return filepath.SkipDir
			}
		}
		return nil
	})
	return out
}

// mountOverlay mounts a fresh overlay of lower at instDir/rootfs, with its
// upper and work directories in instDir/overlay.
func mountOverlay(lower, instDir string) error {
	upper, wk, root := filepath.Join(instDir, "overlay", "upper"), filepath.Join(instDir, "overlay", "work"), filepath.Join(instDir, "rootfs")
	for _, d := range []string{upper, wk, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, wk)
	if err := unix.Mount("overlay", root, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay on %s: %w", root, err)
	}
	return nil
}

// unmount unmounts p, retrying while it is busy (a container that just
// stopped), and detaches it lazily as a last resort (reported as an error).
func unmount(p string) error {
	var err error
	for range 50 {
		if err = unix.Unmount(p, 0); err == nil || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if derr := unix.Unmount(p, unix.MNT_DETACH); derr != nil && !errors.Is(derr, syscall.EINVAL) {
		return fmt.Errorf("unmount %s: %w; lazily: %w", p, err, derr)
	}
	return fmt.Errorf("unmount %s: %w (detached lazily)", p, err)
}

// appendState adds a line to state.txt, which bench/lifecycle.sh reads to
// sweep up after a crash.
func (b *bench) appendState(format string, args ...any) error {
	f, err := os.OpenFile(b.statePth, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, format+"\n", args...)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// pidTicks is "pid:start time" (/proc/<pid>/stat field 22).
func pidTicks(pid int) string {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return "0:0"
	}
	return fmt.Sprintf("%d:%d", pid, st.StartTicks)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// machine collects the host facts printed with the results.
func machine() Machine {
	m := Machine{LoadStart: loadavg()}
	if out, err := exec.Command("nproc").Output(); err == nil {
		m.Nproc = strings.TrimSpace(string(out))
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && k == "MemTotal" {
				m.MemTotal = strings.TrimSpace(v)
			}
		}
	}
	switch {
	case fileExists("/sys/fs/cgroup/cgroup.controllers"):
		m.Cgroups = "cgroup2 only"
	case fileExists("/sys/fs/cgroup/unified"):
		m.Cgroups = "hybrid (v1 controllers + cgroup2 at /sys/fs/cgroup/unified)"
	default:
		m.Cgroups = "cgroup v1"
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Package} ${Version}\\n",
		"liblxc1", "libvirt-daemon", "libvirt-daemon-driver-lxc", "busybox-static").Output(); err == nil {
		m.Packages = strings.Join(slices.Collect(func(yield func(string) bool) {
			for l := range strings.Lines(string(out)) {
				if !yield(strings.TrimSpace(l)) {
					return
				}
			}
		}), ", ")
	}
	return m
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

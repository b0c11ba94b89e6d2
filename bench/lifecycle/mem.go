package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lxc-agent/lxc-agent/bench/imagebench"
	"github.com/lxc-agent/lxc-agent/internal/procfs"
)

// ProcMem is the memory of one process from /proc/<pid>/smaps_rollup, in
// bytes. Uss is its private memory (Private_Clean + Private_Dirty): what
// the host gets back when the process exits.
type ProcMem struct {
	Rss, Pss, Uss int64
}

// ParseSmapsRollup reads Rss, Pss, Private_Clean and Private_Dirty from
// /proc/<pid>/smaps_rollup's format.
func ParseSmapsRollup(r io.Reader) (ProcMem, error) {
	var m ProcMem
	var privClean, privDirty int64
	seen := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch name {
		case "Rss":
			dst = &m.Rss
		case "Pss":
			dst = &m.Pss
		case "Private_Clean":
			dst = &privClean
		case "Private_Dirty":
			dst = &privDirty
		default:
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("smaps_rollup: cannot parse %q", sc.Text())
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("smaps_rollup: %q: %w", sc.Text(), err)
		}
		*dst = v << 10
		seen++
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	if seen != 4 {
		return m, fmt.Errorf("smaps_rollup: Rss, Pss, Private_Clean or Private_Dirty missing")
	}
	m.Uss = privClean + privDirty
	return m, nil
}

// procMem reads the smaps_rollup of pid (zero for a kernel thread).
func procMem(pid int) (ProcMem, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return ProcMem{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return ProcMem{}, err
	}
	if len(b) == 0 { // kernel thread or a zombie
		return ProcMem{}, nil
	}
	return ParseSmapsRollup(bytes.NewReader(b))
}

// procTable is a snapshot of every process's parent.
type procTable struct {
	children map[int][]int
}

func snapshotProcs() procTable {
	t := procTable{children: map[int][]int{}}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := procfs.ReadStat(pid)
		if err != nil || st.State == 'Z' || st.State == 'X' {
			continue
		}
		t.children[st.PPID] = append(t.children[st.PPID], pid)
	}
	return t
}

// tree returns pid and all its descendants, pid first.
func (t procTable) tree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, t.children[out[i]]...)
	}
	return out
}

func cmdline(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// ParseCgroupFile returns the memory controller's cgroup path from
// /proc/<pid>/cgroup: the v1 line naming "memory", else the v2 line
// ("0::/path"); v2 reports whether it came from the v2 line.
func ParseCgroupFile(r io.Reader) (path string, v2 bool, err error) {
	var unified string
	haveUnified := false
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			unified, haveUnified = f[2], true
			continue
		}
		if slices.Contains(strings.Split(f[1], ","), "memory") {
			return f[2], false, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", false, err
	}
	if haveUnified {
		return unified, true, nil
	}
	return "", false, fmt.Errorf("no memory cgroup")
}

// memCgroup is one memory cgroup and its usage (v1 memory.usage_in_bytes,
// v2 memory.current) in bytes, and of that the kernel memory (v1
// memory.kmem.usage_in_bytes, v2 memory.stat's kernel; -1 if unknown).
type memCgroup struct {
	Path  string
	Usage int64
	Kmem  int64
}

// memCgroupOf finds the memory cgroup of pid and reads its usage.
func memCgroupOf(pid int) (memCgroup, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return memCgroup{}, err
	}
	p, v2, err := ParseCgroupFile(f)
	f.Close()
	if err != nil {
		return memCgroup{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	dir := filepath.Join("/sys/fs/cgroup/memory", p)
	usage, kmem := "memory.usage_in_bytes", "memory.kmem.usage_in_bytes"
	if v2 {
		dir, usage, kmem = filepath.Join(cgroup2Mount(), p), "memory.current", ""
	}
	cg := memCgroup{Path: p, Kmem: -1}
	if cg.Usage, err = readInt(filepath.Join(dir, usage)); err != nil {
		return cg, err
	}
	if kmem != "" {
		if v, err := readInt(filepath.Join(dir, kmem)); err == nil {
			cg.Kmem = v
		}
	} else if b, err := os.ReadFile(filepath.Join(dir, "memory.stat")); err == nil {
		for line := range strings.Lines(string(b)) {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "kernel" {
				if v, err := strconv.ParseInt(f[1], 10, 64); err == nil {
					cg.Kmem = v
				}
			}
		}
	}
	return cg, nil
}

func readInt(file string) (int64, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", file, err)
	}
	return v, nil
}

// cgroup2Mount is where the cgroup2 hierarchy is mounted: /sys/fs/cgroup
// on a pure v2 host, /sys/fs/cgroup/unified on a hybrid one.
func cgroup2Mount() string {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return "/sys/fs/cgroup"
	}
	return "/sys/fs/cgroup/unified"
}

// ContainerMem is what one running container costs, as seen from the host.
type ContainerMem struct {
	// Keys name the container in paths and command lines (id, libvirt name).
	Keys       []string
	InitPID    int
	MonitorPID int
	Monitor    string // the monitor's command line
	// Procs are the container's processes (init and its descendants).
	Procs                     int
	ProcRSS, ProcPSS, ProcUSS int64
	MonRSS, MonPSS, MonUSS    int64
	// Cgroup is the memory cgroup of init, MonCgroup that of the monitor
	// when it is another one named after the container (liblxc's
	// lxc.monitor.<name>); "" otherwise (libvirt_lxc runs in the
	// container's cgroup).
	Cgroup, MonCgroup           string
	CgroupUsage, MonCgroupUsage int64
	CgroupKmem, MonCgroupKmem   int64 // kernel memory in the usage, -1 if unknown
	// Extra are other processes naming the container (or the lxcpath) in
	// their command line: forklxc helpers or lxc-attach left running.
	Extra              []string
	ExtraRSS, ExtraPSS int64
}

// measureContainer reads the memory of the container whose init is
// initPID. names are strings that identify the container in a command
// line (its id, its libvirt name); extraMatch adds other processes that
// belong to it (e.g. forklxc helpers).
func measureContainer(t procTable, initPID int, names []string, extraMatch func(cmd string) bool) (ContainerMem, error) {
	cm := ContainerMem{Keys: names, InitPID: initPID}
	st, err := procfs.ReadStat(initPID)
	if err != nil {
		return cm, fmt.Errorf("init %d: %w", initPID, err)
	}
	cm.MonitorPID = st.PPID
	cm.Monitor = cmdline(cm.MonitorPID)
	if cm.Monitor == "" {
		cm.Monitor = comm(cm.MonitorPID)
	}
	if !slices.ContainsFunc(names, func(n string) bool { return strings.Contains(cm.Monitor, n) }) &&
		comm(cm.MonitorPID) != "libvirt_lxc" {
		return cm, fmt.Errorf("parent %d of init %d is not its monitor: %q", cm.MonitorPID, initPID, cm.Monitor)
	}
	for _, pid := range t.tree(initPID) {
		m, err := procMem(pid)
		if err != nil {
			continue // exited meanwhile
		}
		cm.Procs++
		cm.ProcRSS += m.Rss
		cm.ProcPSS += m.Pss
		cm.ProcUSS += m.Uss
	}
	m, err := procMem(cm.MonitorPID)
	if err != nil {
		return cm, fmt.Errorf("monitor %d: %w", cm.MonitorPID, err)
	}
	cm.MonRSS, cm.MonPSS, cm.MonUSS = m.Rss, m.Pss, m.Uss
	cg, err := memCgroupOf(initPID)
	if err != nil {
		return cm, err
	}
	cm.Cgroup, cm.CgroupUsage, cm.CgroupKmem = cg.Path, cg.Usage, cg.Kmem
	if mcg, err := memCgroupOf(cm.MonitorPID); err == nil && mcg.Path != cg.Path &&
		slices.ContainsFunc(names, func(n string) bool { return strings.Contains(mcg.Path, n) }) {
		cm.MonCgroup, cm.MonCgroupUsage, cm.MonCgroupKmem = mcg.Path, mcg.Usage, mcg.Kmem
	}
	inTree := map[int]bool{cm.MonitorPID: true}
	for _, pid := range t.tree(cm.MonitorPID) {
		inTree[pid] = true
	}
	for _, pids := range t.children {
		for _, pid := range pids {
			if inTree[pid] || pid == os.Getpid() {
				continue
			}
			c := cmdline(pid)
			if c == "" || !extraMatch(c) {
				continue
			}
			m, err := procMem(pid)
			if err != nil {
				continue
			}
			cm.Extra = append(cm.Extra, fmt.Sprintf("%d: %s", pid, c))
			cm.ExtraRSS += m.Rss
			cm.ExtraPSS += m.Pss
		}
	}
	slices.Sort(cm.Extra)
	return cm, nil
}

// MemState is MemAvailable (and the kernel's slab and per-CPU memory) at one
// point, the median of a few snapshots, with their spread.
type MemState struct {
	imagebench.Meminfo
	// Spread is max - min of MemAvailable among the snapshots.
	Spread int64
}

// memSnapshot reads /proc/meminfo after collecting this process's garbage
// and folding the per-CPU vmstat counters into the global ones.
func memSnapshot() (imagebench.Meminfo, error) {
	runtime.GC()
	debug.FreeOSMemory()
	_ = os.WriteFile("/proc/sys/vm/stat_refresh", []byte("1\n"), 0o200)
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return imagebench.Meminfo{}, err
	}
	defer f.Close()
	return imagebench.ParseMeminfo(f)
}

const (
	memStep          = 250 * time.Millisecond
	memStableBand    = 1 << 20
	memStableWindow  = 5 // snapshots (1 s)
	memStableTimeout = 5 * time.Second
	memSnapshots     = 5
)

// memSettled waits (at most memStableTimeout) until MemAvailable moved less
// than memStableBand over the last second, then returns the median of
// memSnapshots snapshots.
func (b *bench) memSettled(ctx context.Context) (MemState, error) {
	var hist []int64
	start := time.Now()
	for {
		m, err := memSnapshot()
		if err != nil {
			return MemState{}, err
		}
		hist = append(hist, m.MemAvailable)
		if n := len(hist); n >= memStableWindow {
			w := hist[n-memStableWindow:]
			if slices.Max(w)-slices.Min(w) < memStableBand {
				break
			}
		}
		if time.Since(start) > memStableTimeout {
			b.logf("MemAvailable still moving after %.0f s: measuring anyway", memStableTimeout.Seconds())
			break
		}
		if err := sleepCtx(ctx, memStep); err != nil {
			return MemState{}, err
		}
	}
	var avail, slab, percpu []int64
	for i := range memSnapshots {
		if i > 0 {
			if err := sleepCtx(ctx, memStep); err != nil {
				return MemState{}, err
			}
		}
		m, err := memSnapshot()
		if err != nil {
			return MemState{}, err
		}
		avail, slab, percpu = append(avail, m.MemAvailable), append(slab, m.Slab), append(percpu, m.Percpu)
	}
	return MemState{
		Meminfo: imagebench.Meminfo{MemAvailable: imagebench.MedianInt64(avail),
			Slab: imagebench.MedianInt64(slab), Percpu: imagebench.MedianInt64(percpu)},
		Spread: slices.Max(avail) - slices.Min(avail),
	}, nil
}

// MemCycle is one stopped → running → stopped cycle of the memory phase:
// MemAvailable with the containers defined but stopped (Before), running
// and idle (Loaded), stopped again (After).
type MemCycle struct {
	Before, Loaded, After MemState
}

// Drop is how much less memory was available with the containers running
// than with them stopped (the mean of the two stopped readings).
func (c MemCycle) Drop() int64 {
	return (c.Before.MemAvailable+c.After.MemAvailable)/2 - c.Loaded.MemAvailable
}

// Noise is how far the two stopped readings (and the snapshots within each
// reading) disagree: what the rest of the host moved meanwhile.
func (c MemCycle) Noise() int64 {
	d := c.After.MemAvailable - c.Before.MemAvailable
	if d < 0 {
		d = -d
	}
	return max(d, c.Before.Spread, c.Loaded.Spread, c.After.Spread)
}

// Acceptable: the noise is at most a fifth of the drop plus 2 MiB.
func (c MemCycle) Acceptable() bool {
	return c.Noise() <= max(c.Drop(), 0)/5+2<<20
}

// BestCycle is the index of the cycle with the smallest noise, -1 if none.
func BestCycle(cs []MemCycle) int {
	best := -1
	for i, c := range cs {
		if best < 0 || c.Noise() < cs[best].Noise() {
			best = i
		}
	}
	return best
}

const (
	// maxMemCycles bounds the stopped → running → stopped cycles.
	maxMemCycles = 2
	// repeatSettle is the idle time of the repeated cycles.
	repeatSettle = 5 * time.Second
)

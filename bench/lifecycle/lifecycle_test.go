package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lxc-agent/lxc-agent/bench/imagebench"
)

func TestParseSmapsRollup(t *testing.T) {
	in := `55d0c0a3e000-7ffd4a9f7000 ---p 00000000 00:00 0                          [rollup]
Rss:                6528 kB
Pss:                3990 kB
Pss_Dirty:           640 kB
Pss_Anon:            600 kB
Pss_File:           3390 kB
Shared_Clean:       4000 kB
Private_Clean:       360 kB
Private_Dirty:       640 kB
`
	m, err := ParseSmapsRollup(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if m.Rss != 6528<<10 || m.Pss != 3990<<10 || m.Uss != 1000<<10 {
		t.Errorf("got %+v", m)
	}
	if _, err := ParseSmapsRollup(strings.NewReader("Rss: 1 kB\nPrivate_Clean: 0 kB\nPrivate_Dirty: 0 kB\n")); err == nil {
		t.Error("no Pss: want an error")
	}
	if _, err := ParseSmapsRollup(strings.NewReader("Rss: 1 MB\nPss: 1 kB\nPrivate_Clean: 0 kB\nPrivate_Dirty: 0 kB\n")); err == nil {
		t.Error("bad unit: want an error")
	}
}

func TestParseCgroupFile(t *testing.T) {
	hybrid := "9:name=systemd:/\n4:memory:/lxc.payload.x\n1:cpu,cpuacct:/lxc.payload.x\n0::/\n"
	p, v2, err := ParseCgroupFile(strings.NewReader(hybrid))
	if err != nil || p != "/lxc.payload.x" || v2 {
		t.Errorf("hybrid: %q %v %v", p, v2, err)
	}
	p, v2, err = ParseCgroupFile(strings.NewReader("0::/machine.slice/x.scope\n"))
	if err != nil || p != "/machine.slice/x.scope" || !v2 {
		t.Errorf("v2: %q %v %v", p, v2, err)
	}
	if _, _, err := ParseCgroupFile(strings.NewReader("3:cpu:/\n")); err == nil {
		t.Error("no memory controller: want an error")
	}
}

func TestProcTree(t *testing.T) {
	pt := procTable{children: map[int][]int{1: {10, 20}, 10: {11}, 11: {12}, 20: {21}}}
	got := pt.tree(10)
	if len(got) != 3 || got[0] != 10 || got[1] != 11 || got[2] != 12 {
		t.Errorf("tree(10) = %v", got)
	}
}

func TestMeasureSelf(t *testing.T) {
	// This process as "init" and its parent as the "monitor".
	pt := snapshotProcs()
	parent := os.Getppid()
	cm, err := measureContainer(pt, os.Getpid(), []string{"no-such-name"}, func(string) bool { return false })
	if err == nil || !strings.Contains(err.Error(), "not its monitor") {
		t.Fatalf("want a not-its-monitor error, got %v (monitor %d)", err, parent)
	}
	if cm.MonitorPID != parent {
		t.Errorf("monitor pid %d, want %d", cm.MonitorPID, parent)
	}
	m, err := procMem(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.Rss <= 0 || m.Pss <= 0 || m.Pss > m.Rss || m.Uss <= 0 || m.Uss > m.Pss {
		t.Errorf("own memory %+v", m)
	}
}

func TestSummarize(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 10; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	s := Summarize(ds)
	if s.N != 10 || s.Median != 5500*time.Microsecond || s.P90 != 9*time.Millisecond ||
		s.Min != time.Millisecond || s.Max != 10*time.Millisecond {
		t.Errorf("got %+v", s)
	}
	if (Summarize(nil) != Summary{}) {
		t.Error("empty: want zero")
	}
}

func TestShapeCmd(t *testing.T) {
	keys := []string{"uuid-1", "lcbench01", "uuid-2", "lcbench02"}
	got := shapeCmd("libvirt_lxc --name lcbench02 x uuid-1", keys)
	if got != "libvirt_lxc --name <name> x <id>" {
		t.Errorf("got %q", got)
	}
}

func TestInittab(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rootfs")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox (busybox-static)")
	}
	if err := buildRootfs(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "etc", "inittab"))
	if err != nil || string(b) != Inittab {
		t.Fatalf("inittab %q, %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "sbin", "init")); err != nil {
		t.Fatal(err)
	}
}

func TestReportFormat(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	mk := func(backend string, scale int, mon string) *Result {
		r := &Result{Backend: backend, Version: "v", Samples: map[string][]time.Duration{}, Settle: 15 * time.Second,
			CleanHalts: 4, CleanStops: 4,
			Cycles: []MemCycle{{
				Before: MemState{Meminfo: imagebench.Meminfo{MemAvailable: 1000 << 20}},
				Loaded: MemState{Meminfo: imagebench.Meminfo{MemAvailable: 980 << 20}},
				After:  MemState{Meminfo: imagebench.Meminfo{MemAvailable: 1000 << 20}}}}}
		for _, op := range Ops {
			r.Samples[op] = ms(10*scale, 20*scale)
		}
		for i := range 2 {
			r.Containers = append(r.Containers, ContainerMem{Keys: []string{"id" + string(rune('a'+i)), "name"},
				Monitor: mon, Procs: 2, ProcRSS: 3 << 20, ProcPSS: 1 << 20, ProcUSS: 200 << 10,
				MonRSS: 6 << 20, MonPSS: 4 << 20, MonUSS: 1 << 20,
				Cgroup: "/lxc.payload.id" + string(rune('a'+i)), CgroupUsage: 300 << 10, CgroupKmem: 100 << 10, MonCgroupKmem: -1})
		}
		return r
	}
	rep := &Report{N: 2, MemN: 2, Grace: 30 * time.Second, Results: []*Result{
		mk(BackendLXC, 1, "[lxc monitor] /x ida"), mk(BackendLibvirt, 2, "/usr/lib/libvirt/libvirt_lxc --name name")}}
	var buf bytes.Buffer
	rep.Format(&buf, "bench/lifecycle.sh")
	out := buf.String()
	for _, want := range []string{
		"Command: `bench/lifecycle.sh`",
		"| create + start | 15 ms | 20 ms | 10 ms–20 ms | 30 ms | 40 ms | 20 ms–40 ms | 2.00× |",
		"| **host MemAvailable drop / N** (± noise / N) | **10.0 MiB** (± 0 KiB) | **10.0 MiB** (± 0 KiB) |",
		"| monitor process | `[lxc monitor]` | `libvirt_lxc` |",
		"| **container + monitor RSS** | **9.0 MiB** | **9.0 MiB** |",
		"memory cgroup of init `/lxc.payload.<id>`",
		"| container processes: RSS / PSS / USS | 3.0 MiB / 1.0 MiB / 200 KiB |",
		"| memory cgroup of init: usage (of which kernel) | 300 KiB (kernel 100 KiB) |",
		"| **private estimate: USS + kernel memory of the cgroups** | **1.3 MiB** |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

func TestMemCycle(t *testing.T) {
	st := func(avail, spread int64) MemState {
		return MemState{Meminfo: imagebench.Meminfo{MemAvailable: avail << 20}, Spread: spread << 20}
	}
	clean := MemCycle{Before: st(1000, 0), Loaded: st(950, 1), After: st(1002, 0)}
	if clean.Drop() != 51<<20 || clean.Noise() != 2<<20 || !clean.Acceptable() {
		t.Errorf("clean: drop %d noise %d acceptable %v", clean.Drop()>>20, clean.Noise()>>20, clean.Acceptable())
	}
	noisy := MemCycle{Before: st(1000, 0), Loaded: st(950, 1), After: st(1300, 0)}
	if noisy.Noise() != 300<<20 || noisy.Acceptable() {
		t.Errorf("noisy: noise %d acceptable %v", noisy.Noise()>>20, noisy.Acceptable())
	}
	if got := BestCycle([]MemCycle{noisy, clean, noisy}); got != 1 {
		t.Errorf("best cycle %d, want 1", got)
	}
	if BestCycle(nil) != -1 {
		t.Error("no cycles: want -1")
	}
}

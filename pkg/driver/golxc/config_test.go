package golxc

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

func items(c []configItem) []string {
	var out []string
	for _, it := range c {
		out = append(out, it.Key+" = "+it.Value)
	}
	return out
}

func has(t *testing.T, got []string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("missing %q in\n%s", w, strings.Join(got, "\n"))
		}
	}
}

func hasNoPrefix(t *testing.T, got []string, prefix string) {
	t.Helper()
	for _, g := range got {
		if strings.HasPrefix(g, prefix) {
			t.Errorf("unexpected %q", g)
		}
	}
}

func testSpec() driver.Spec {
	return driver.Spec{ID: "6f1c0c52-0d1e-4d55-a3a5-1b2a3c4d5e6f", Hostname: "vm1", Rootfs: "/srv/i/rootfs",
		ConsoleLog: "/srv/i/console.log", Limits: driver.Limits{MemoryMB: 512, VCPUs: 2}}
}

func TestBuildConfigV1(t *testing.T) {
	h := hostInfo{CommonConf: commonConf, Cgroup: cgroupLayout{MemoryV1: true, CPUV1: true, MemswV1: true}}
	got := items(buildConfig(testSpec(), h, "/l/x/lxc.log"))
	if got[0] != "lxc.include = "+commonConf {
		t.Errorf("include must come first: %v", got[0])
	}
	has(t, got,
		"lxc.uts.name = vm1",
		"lxc.rootfs.path = dir:/srv/i/rootfs",
		"lxc.rootfs.managed = 0",
		"lxc.init.cmd = /sbin/init",
		"lxc.console.logfile = /srv/i/console.log",
		"lxc.log.file = /l/x/lxc.log",
		"lxc.log.level = WARN",
		"lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed",
		"lxc.apparmor.profile = unconfined",
		"lxc.tty.max = 1", "lxc.pty.max = 16", "lxc.autodev = 1",
		"lxc.cgroup.memory.limit_in_bytes = 536870912",
		"lxc.cgroup.memory.memsw.limit_in_bytes = 536870912",
		"lxc.cgroup.cpu.cfs_period_us = 100000",
		"lxc.cgroup.cpu.cfs_quota_us = 200000",
		"lxc.cgroup.cpu.shares = 2048",
	)
	hasNoPrefix(t, got, "lxc.cgroup2.")
	hasNoPrefix(t, got, "lxc.net.")
	// memory before memsw: the kernel rejects memsw < memory.
	if slices.Index(got, "lxc.cgroup.memory.limit_in_bytes = 536870912") > slices.Index(got, "lxc.cgroup.memory.memsw.limit_in_bytes = 536870912") {
		t.Errorf("memsw set before memory")
	}

	h.Cgroup.MemswV1 = false
	h.AppArmor = true
	h.CommonConf = ""
	got = items(buildConfig(testSpec(), h, "/l/x/lxc.log"))
	hasNoPrefix(t, got, "lxc.cgroup.memory.memsw")
	hasNoPrefix(t, got, "lxc.include")
	has(t, got, "lxc.apparmor.profile = generated")
}

func TestBuildConfigV2(t *testing.T) {
	h := hostInfo{Cgroup: cgroupLayout{Unified: true, MemoryV2: true, CPUV2: true, SwapV2: true}}
	got := items(buildConfig(testSpec(), h, "/l/x/lxc.log"))
	has(t, got,
		"lxc.cgroup2.memory.max = 536870912",
		"lxc.cgroup2.memory.swap.max = 0",
		"lxc.cgroup2.cpu.max = 200000 100000",
		"lxc.cgroup2.cpu.weight = 200",
	)
	hasNoPrefix(t, got, "lxc.cgroup.")

	// No limits requested, none set.
	s := testSpec()
	s.MemoryMB, s.VCPUs = 0, 0
	got = items(buildConfig(s, h, "/l/x/lxc.log"))
	hasNoPrefix(t, got, "lxc.cgroup")

	// Defaults: hostname from the id, /sbin/init, no console log.
	s = testSpec()
	s.Hostname, s.Init, s.ConsoleLog = "", "", ""
	got = items(buildConfig(s, h, "/l/x/lxc.log"))
	has(t, got, "lxc.uts.name = "+s.ID, "lxc.init.cmd = /sbin/init")
	hasNoPrefix(t, got, "lxc.console")
}

func TestBuildConfigNICs(t *testing.T) {
	s := testSpec()
	s.NICs = []driver.NIC{
		{HostDev: "tin1", Name: "eth0", MAC: "FA:16:3E:00:00:01", MTU: 1450,
			Addrs:    []netip.Prefix{netip.MustParsePrefix("10.0.0.5/24"), netip.MustParsePrefix("2001:db8::5/64"), netip.MustParsePrefix("192.0.2.7/32")},
			Gateway4: netip.MustParseAddr("10.0.0.1"), Gateway6: netip.MustParseAddr("2001:db8::1")},
		{HostDev: "tin2"},
	}
	got := items(buildConfig(s, hostInfo{}, "/l/x/lxc.log"))
	has(t, got,
		"lxc.net.0.type = phys", "lxc.net.0.link = tin1", "lxc.net.0.name = eth0",
		"lxc.net.0.hwaddr = fa:16:3e:00:00:01", "lxc.net.0.mtu = 1450", "lxc.net.0.flags = up",
		"lxc.net.0.ipv4.address = 10.0.0.5/24 10.0.0.255",
		"lxc.net.0.ipv4.address = 192.0.2.7/32 0.0.0.0",
		"lxc.net.0.ipv6.address = 2001:db8::5/64",
		"lxc.net.0.ipv4.gateway = 10.0.0.1", "lxc.net.0.ipv6.gateway = 2001:db8::1",
		"lxc.net.1.type = phys", "lxc.net.1.link = tin2", "lxc.net.1.name = eth1", "lxc.net.1.flags = up",
	)
	hasNoPrefix(t, got, "lxc.net.1.mtu")
	hasNoPrefix(t, got, "lxc.net.1.hwaddr")
	hasNoPrefix(t, got, "lxc.net.1.ipv")
}

func TestIPv4Address(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.10/24":        "192.0.2.10/24 192.0.2.255",
		"10.1.2.3/8":           "10.1.2.3/8 10.255.255.255",
		"172.16.5.4/30":        "172.16.5.4/30 172.16.5.7",
		"172.16.5.4/31":        "172.16.5.4/31 0.0.0.0",
		"::ffff:192.0.2.1/120": "192.0.2.1/24 192.0.2.255",
	} {
		if got := ipv4Address(netip.MustParsePrefix(in)); got != want {
			t.Errorf("ipv4Address(%s) = %q, want %q", in, got, want)
		}
	}
}

func TestCheckSpec(t *testing.T) {
	good := testSpec()
	if err := checkSpec(good); err != nil {
		t.Fatalf("valid spec: %v", err)
	}
	for name, mut := range map[string]func(*driver.Spec){
		"empty id":         func(s *driver.Spec) { s.ID = "" },
		"slash id":         func(s *driver.Spec) { s.ID = "a/b" },
		"dotdot id":        func(s *driver.Spec) { s.ID = ".." },
		"space id":         func(s *driver.Spec) { s.ID = "a b" },
		"relative rootfs":  func(s *driver.Spec) { s.Rootfs = "rootfs" },
		"relative console": func(s *driver.Spec) { s.ConsoleLog = "console.log" },
		"negative memory":  func(s *driver.Spec) { s.MemoryMB = -1 },
		"nic without dev":  func(s *driver.Spec) { s.NICs = []driver.NIC{{Name: "eth0"}} },
		"duplicate nic": func(s *driver.Spec) {
			s.NICs = []driver.NIC{{HostDev: "a", Name: "eth0"}, {HostDev: "b", Name: "eth0"}}
		},
	} {
		s := good
		mut(&s)
		if err := checkSpec(s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestDetectCgroups(t *testing.T) {
	dir := t.TempDir()
	mem := filepath.Join(dir, "memory")
	uni := filepath.Join(dir, "unified")
	blkio := filepath.Join(dir, "blkio")
	for _, d := range []string{mem, uni, filepath.Join(dir, "cpu,cpuacct"), filepath.Join(dir, "pids"), filepath.Join(blkio, "system.slice")} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(filepath.Join(mem, "memory.memsw.limit_in_bytes"), nil, 0o644)
	os.WriteFile(filepath.Join(uni, "cgroup.controllers"), []byte("\n"), 0o644)
	// The root cgroup has no weight file, its children do.
	os.WriteFile(filepath.Join(blkio, "system.slice", "blkio.bfq.weight"), []byte("100\n"), 0o644)
	mi := filepath.Join(dir, "mountinfo")
	os.WriteFile(mi, []byte(strings.Join([]string{
		"30 25 0:26 / " + dir + " ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755",
		"31 30 0:27 / " + uni + " rw shared:10 - cgroup2 cgroup2 rw,nsdelegate",
		"33 30 0:29 / " + mem + " rw shared:14 - cgroup cgroup rw,memory",
		"34 30 0:30 / " + dir + "/cpu,cpuacct rw shared:15 - cgroup cgroup rw,cpu,cpuacct",
		"35 30 0:31 / " + dir + "/pids rw shared:16 - cgroup cgroup rw,pids",
		"36 30 0:32 / " + blkio + " rw shared:17 - cgroup cgroup rw,blkio",
	}, "\n")), 0o644)
	l := detectCgroups(mi, dir)
	want := cgroupLayout{MemoryV1: true, CPUV1: true, PidsV1: true, MemswV1: true, IOWeightFile: "blkio.bfq.weight"}
	if l != want {
		t.Errorf("hybrid: %+v, want %+v", l, want)
	}

	// Hybrid with memory, pids and io left to the cgroup2 mount.
	os.WriteFile(filepath.Join(uni, "cgroup.controllers"), []byte("memory pids io\n"), 0o644)
	os.MkdirAll(filepath.Join(uni, "system.slice"), 0o755)
	os.WriteFile(filepath.Join(uni, "system.slice", "io.weight"), []byte("default 100\n"), 0o644)
	os.WriteFile(filepath.Join(uni, "system.slice", "memory.swap.max"), []byte("max\n"), 0o644)
	os.WriteFile(mi, []byte(strings.Join([]string{
		"31 30 0:27 / " + uni + " rw shared:10 - cgroup2 cgroup2 rw,nsdelegate",
		"34 30 0:30 / " + dir + "/cpu,cpuacct rw shared:15 - cgroup cgroup rw,cpu,cpuacct",
	}, "\n")), 0o644)
	l = detectCgroups(mi, dir)
	want = cgroupLayout{CPUV1: true, MemoryV2: true, PidsV2: true, SwapV2: true, IOWeightFile: "io.weight"}
	if l != want {
		t.Errorf("hybrid with v2 controllers: %+v, want %+v", l, want)
	}

	// Pure cgroup2.
	dir2 := t.TempDir()
	os.WriteFile(filepath.Join(dir2, "cgroup.controllers"), []byte("cpuset cpu io memory pids\n"), 0o644)
	os.MkdirAll(filepath.Join(dir2, "init.scope"), 0o755)
	os.WriteFile(filepath.Join(dir2, "init.scope", "memory.swap.max"), []byte("max\n"), 0o644)
	mi2 := filepath.Join(dir2, "mountinfo")
	os.WriteFile(mi2, []byte("30 25 0:26 / "+dir2+" rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"), 0o644)
	l = detectCgroups(mi2, dir2)
	want = cgroupLayout{Unified: true, MemoryV2: true, CPUV2: true, PidsV2: true, SwapV2: true}
	if l != want {
		t.Errorf("unified without a weight file: %+v, want %+v", l, want)
	}
	// BFQ's weight is preferred to iocost's, as libvirt does.
	os.WriteFile(filepath.Join(dir2, "init.scope", "io.weight"), []byte("default 100\n"), 0o644)
	os.WriteFile(filepath.Join(dir2, "init.scope", "io.bfq.weight"), []byte("default 100\n"), 0o644)
	want.IOWeightFile = "io.bfq.weight"
	if l = detectCgroups(mi2, dir2); l != want {
		t.Errorf("unified: %+v, want %+v", l, want)
	}
	if ents, _ := filepath.Glob(filepath.Join(dir2, ".lxc-agent-probe-*")); len(ents) > 0 {
		t.Errorf("probe cgroup left behind: %v", ents)
	}
}

// Every Limits field on a cgroup v1 (or hybrid) host.
func TestLimitsV1(t *testing.T) {
	h := hostInfo{Cgroup: cgroupLayout{MemoryV1: true, CPUV1: true, PidsV1: true, MemswV1: true, IOWeightFile: "blkio.bfq.weight"}}
	s := testSpec()
	s.Limits = driver.Limits{MemoryMB: 512, SwapMB: 256, VCPUs: 2, CPUShares: 300, CPUQuotaUS: 50000, CPUPeriodUS: 200000, Pids: 128, IOWeight: 700}
	got := items(buildConfig(s, h, "/l/x/lxc.log"))
	has(t, got,
		"lxc.cgroup.memory.limit_in_bytes = 536870912",
		"lxc.cgroup.memory.memsw.limit_in_bytes = 805306368",
		"lxc.cgroup.cpu.cfs_period_us = 200000",
		"lxc.cgroup.cpu.cfs_quota_us = 50000",
		"lxc.cgroup.cpu.shares = 300",
		"lxc.cgroup.pids.max = 128",
		"lxc.cgroup.blkio.bfq.weight = 700",
	)
	hasNoPrefix(t, got, "lxc.cgroup2.")
	if slices.Index(got, "lxc.cgroup.cpu.cfs_period_us = 200000") > slices.Index(got, "lxc.cgroup.cpu.cfs_quota_us = 50000") {
		t.Errorf("quota set before period")
	}

	// Unlimited quota with a custom period; VCPUs give the quota and the
	// shares when not set; clamping.
	for _, c := range []struct {
		l    driver.Limits
		want []string
		not  []string
	}{
		{driver.Limits{VCPUs: 4, CPUQuotaUS: -1, CPUPeriodUS: 50000}, []string{"lxc.cgroup.cpu.cfs_period_us = 50000", "lxc.cgroup.cpu.shares = 4096"},
			[]string{"lxc.cgroup.cpu.cfs_quota_us", "lxc.cgroup.memory"}},
		{driver.Limits{VCPUs: 3, CPUPeriodUS: 50000}, []string{"lxc.cgroup.cpu.cfs_quota_us = 150000", "lxc.cgroup.cpu.cfs_period_us = 50000"}, nil},
		{driver.Limits{CPUShares: 1}, []string{"lxc.cgroup.cpu.shares = 2"}, []string{"lxc.cgroup.cpu.cfs"}},
		{driver.Limits{CPUShares: 1 << 20}, []string{"lxc.cgroup.cpu.shares = 262144"}, nil},
		{driver.Limits{MemoryMB: 64}, []string{"lxc.cgroup.memory.memsw.limit_in_bytes = 67108864"}, []string{"lxc.cgroup.pids", "lxc.cgroup.blkio", "lxc.cgroup.cpu"}},
		{driver.Limits{SwapMB: 64}, nil, []string{"lxc.cgroup.memory"}},
	} {
		s.Limits = c.l
		got := items(buildConfig(s, h, "/l/x/lxc.log"))
		has(t, got, c.want...)
		for _, n := range c.not {
			hasNoPrefix(t, got, n)
		}
	}

	// What the host cannot do is left out and reported.
	h.Cgroup = cgroupLayout{MemoryV1: true, CPUV1: true}
	s.Limits = driver.Limits{MemoryMB: 64, SwapMB: 64, Pids: 10, IOWeight: 100}
	got = items(buildConfig(s, h, "/l/x/lxc.log"))
	hasNoPrefix(t, got, "lxc.cgroup.memory.memsw")
	hasNoPrefix(t, got, "lxc.cgroup.pids")
	hasNoPrefix(t, got, "lxc.cgroup.blkio")
	_, notes := limitSettings(s.Limits, h.Cgroup)
	if len(notes) != 3 {
		t.Errorf("notes = %q, want swap, pids and I/O weight", notes)
	}
}

// Every Limits field on a pure cgroup2 host, and on a hybrid host whose
// cgroup2 mount carries controllers: there the cgroup2 file names go
// under lxc.cgroup.*, which liblxc applies on any layout but pure v2.
func TestLimitsV2(t *testing.T) {
	l := cgroupLayout{Unified: true, MemoryV2: true, CPUV2: true, PidsV2: true, SwapV2: true, IOWeightFile: "io.weight"}
	s := testSpec()
	s.Limits = driver.Limits{MemoryMB: 512, SwapMB: 256, VCPUs: 2, CPUShares: 512, CPUQuotaUS: 50000, CPUPeriodUS: 200000, Pids: 128, IOWeight: 700}
	want := []string{"memory.max = 536870912", "memory.swap.max = 268435456", "cpu.max = 50000 200000",
		"cpu.weight = 50", "pids.max = 128", "io.weight = 700"}
	got := items(buildConfig(s, hostInfo{Cgroup: l}, "/l/x/lxc.log"))
	for _, w := range want {
		has(t, got, "lxc.cgroup2."+w)
	}
	hasNoPrefix(t, got, "lxc.cgroup.")

	l.Unified = false // hybrid
	got = items(buildConfig(s, hostInfo{Cgroup: l}, "/l/x/lxc.log"))
	for _, w := range want {
		has(t, got, "lxc.cgroup."+w)
	}
	hasNoPrefix(t, got, "lxc.cgroup2.")

	l.Unified = true
	for _, c := range []struct {
		l    driver.Limits
		want []string
	}{
		{driver.Limits{VCPUs: 1, CPUQuotaUS: -1, CPUPeriodUS: 50000}, []string{"lxc.cgroup2.cpu.max = max 50000", "lxc.cgroup2.cpu.weight = 100"}},
		{driver.Limits{MemoryMB: 64}, []string{"lxc.cgroup2.memory.max = 67108864", "lxc.cgroup2.memory.swap.max = 0"}},
		{driver.Limits{SwapMB: 64}, []string{"lxc.cgroup2.memory.swap.max = 67108864"}},
		{driver.Limits{CPUShares: 2}, []string{"lxc.cgroup2.cpu.weight = 1"}},
		{driver.Limits{CPUShares: 262144}, []string{"lxc.cgroup2.cpu.weight = 10000"}},
	} {
		s.Limits = c.l
		has(t, items(buildConfig(s, hostInfo{Cgroup: l}, "/l/x/lxc.log")), c.want...)
	}
}

// Live changes write every managed file, defaults included.
func TestLimitSettingsDefaults(t *testing.T) {
	l := cgroupLayout{MemoryV1: true, CPUV1: true, PidsV1: true, MemswV1: true, IOWeightFile: "blkio.bfq.weight"}
	set, notes := limitSettings(driver.Limits{}, l)
	var got []string
	for _, s := range set {
		if !s.Default {
			t.Errorf("%s = %s is not marked default", s.File, s.Value)
		}
		got = append(got, s.File+" = "+s.Value)
	}
	want := []string{"memory.limit_in_bytes = -1", "memory.memsw.limit_in_bytes = -1", "cpu.cfs_period_us = 100000",
		"cpu.cfs_quota_us = -1", "cpu.shares = 1024", "pids.max = max", "blkio.bfq.weight = 100"}
	if !slices.Equal(got, want) || len(notes) != 0 {
		t.Errorf("defaults = %q, notes %q\nwant %q", got, notes, want)
	}
	set, _ = limitSettings(driver.Limits{}, cgroupLayout{Unified: true, MemoryV2: true, CPUV2: true, PidsV2: true, SwapV2: true, IOWeightFile: "io.weight"})
	got = nil
	for _, s := range set {
		got = append(got, s.File+" = "+s.Value)
	}
	want = []string{"memory.max = max", "memory.swap.max = max", "cpu.max = max 100000", "cpu.weight = 100", "pids.max = max", "io.weight = 100"}
	if !slices.Equal(got, want) {
		t.Errorf("v2 defaults = %q\nwant %q", got, want)
	}
}

func TestOrderMemsw(t *testing.T) {
	l := cgroupLayout{MemoryV1: true, MemswV1: true}
	files := func(set []cgSetting) string {
		var f []string
		for _, s := range set {
			f = append(f, strings.TrimPrefix(s.File, "memory."))
		}
		return strings.Join(f, ",")
	}
	cur := func(v string) func() (string, bool) { return func() (string, bool) { return v, true } }
	for _, c := range []struct {
		l    driver.Limits
		cur  string
		want string
	}{
		{driver.Limits{MemoryMB: 128}, "67108864", "memsw.limit_in_bytes,limit_in_bytes"},            // raise
		{driver.Limits{MemoryMB: 32, SwapMB: 32}, "67108864", "memsw.limit_in_bytes,limit_in_bytes"}, // memsw 64M = current
		{driver.Limits{MemoryMB: 32}, "67108864", "limit_in_bytes,memsw.limit_in_bytes"},             // lower
		{driver.Limits{}, "67108864", "memsw.limit_in_bytes,limit_in_bytes"},                         // unlimited
		{driver.Limits{MemoryMB: 32}, "9223372036854771712", "limit_in_bytes,memsw.limit_in_bytes"},  // from unlimited
	} {
		set, _ := limitSettings(c.l, l)
		if got := files(orderMemsw(set, cur(c.cur))); got != c.want {
			t.Errorf("%+v from %s: %s, want %s", c.l, c.cur, got, c.want)
		}
	}
	set, _ := limitSettings(driver.Limits{MemoryMB: 32}, cgroupLayout{MemoryV1: true})
	if got := files(orderMemsw(set, cur("1"))); got != "limit_in_bytes" {
		t.Errorf("without memsw: %s", got)
	}
}

func TestCheckLimits(t *testing.T) {
	for _, l := range []driver.Limits{
		{}, {MemoryMB: 1, SwapMB: 1, VCPUs: 1, CPUShares: 2, CPUQuotaUS: 1000, CPUPeriodUS: 1000, Pids: 1, IOWeight: 10},
		{CPUQuotaUS: -1, CPUPeriodUS: 1000000, IOWeight: 1000},
	} {
		if err := checkLimits(l); err != nil {
			t.Errorf("%+v: %v", l, err)
		}
	}
	for _, l := range []driver.Limits{
		{MemoryMB: -1}, {SwapMB: -1}, {VCPUs: -1}, {CPUShares: -1}, {Pids: -1},
		{CPUQuotaUS: -2}, {CPUQuotaUS: 999}, {CPUPeriodUS: 999}, {CPUPeriodUS: 1000001}, {IOWeight: 9}, {IOWeight: 1001},
	} {
		if err := checkLimits(l); err == nil {
			t.Errorf("%+v accepted", l)
		}
	}
}

func TestParseMountinfo(t *testing.T) {
	mnt, fstype, super, ok := parseMountinfo(`36 35 98:0 /mnt1 /mnt\040with\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue`)
	if !ok || mnt != "/mnt with space" || fstype != "ext3" || super != "rw,errors=continue" {
		t.Errorf("got %q %q %q %v", mnt, fstype, super, ok)
	}
	if _, _, _, ok := parseMountinfo("garbage"); ok {
		t.Errorf("garbage parsed")
	}
}

func TestErrorLinesSince(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lxc.log")
	old := "lxc x 20260101 ERROR    start - start.c:1 - old failure\n"
	os.WriteFile(p, []byte(old), 0o644)
	mark := logMark(p)
	f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("lxc x 20260101 WARN     cgfsng - c.c:2 - a warning\n")
	for i := 0; i < 12; i++ {
		f.WriteString("lxc-start x 20260101 ERROR    conf - conf.c:3 - new failure " + string(rune('a'+i)) + "\n")
	}
	f.Close()
	got := errorLinesSince(p, mark)
	if len(got) != maxLogLines {
		t.Fatalf("got %d lines: %v", len(got), got)
	}
	if got[0] != "ERROR    conf - conf.c:3 - new failure e" || !strings.HasSuffix(got[maxLogLines-1], "failure l") {
		t.Errorf("got %q", got)
	}
	if s := logSuffix(got[:1]); s != "; lxc log: ERROR    conf - conf.c:3 - new failure e" {
		t.Errorf("logSuffix = %q", s)
	}
	// A truncated log is read from the start.
	os.WriteFile(p, []byte(old), 0o644)
	if got := errorLinesSince(p, mark+1000); len(got) != 1 {
		t.Errorf("after truncation: %v", got)
	}
	if got := errorLinesSince(filepath.Join(t.TempDir(), "none"), 0); got != nil {
		t.Errorf("missing file: %v", got)
	}
}

func TestRemoveOneDev(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(dir, "outside")
	os.MkdirAll(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "keep"), []byte("x"), 0o644)
	c := filepath.Join(dir, "c")
	os.MkdirAll(filepath.Join(c, "sub", "deeper"), 0o755)
	os.WriteFile(filepath.Join(c, "sub", "deeper", "f"), nil, 0o644)
	os.Symlink(outside, filepath.Join(c, "link"))
	if err := removeOneDev(c); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(c); !os.IsNotExist(err) {
		t.Errorf("%s still exists", c)
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Errorf("followed the symlink: %v", err)
	}
	if err := removeOneDev(c); err != nil {
		t.Errorf("missing path: %v", err)
	}
}

func TestCapBuffer(t *testing.T) {
	b := &capBuffer{max: 5}
	n, err := b.Write([]byte("abc"))
	b.Write([]byte("defgh"))
	if n != 3 || err != nil || b.String() != "abcde" {
		t.Errorf("got %q", b.String())
	}
}

// removeOneDev must not descend into a mount point (as root only).
func TestRemoveOneDevMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatalf("needs root to mount a tmpfs")
	}
	c := filepath.Join(t.TempDir(), "c")
	mnt := filepath.Join(c, "mnt")
	os.MkdirAll(mnt, 0o755)
	os.WriteFile(filepath.Join(c, "config"), nil, 0o644)
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	os.WriteFile(filepath.Join(mnt, "precious"), []byte("x"), 0o644)
	err := removeOneDev(c)
	if err == nil || !strings.Contains(err.Error(), "another file system") {
		t.Errorf("removeOneDev over a mount point: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "precious")); err != nil {
		t.Errorf("removed a file on the mounted file system: %v", err)
	}
	if _, err := os.Stat(filepath.Join(c, "config")); !os.IsNotExist(err) {
		t.Errorf("config not removed: %v", err)
	}
}

func TestCgroupBases(t *testing.T) {
	dir := t.TempDir()
	mi := filepath.Join(dir, "mountinfo")
	os.WriteFile(mi, []byte(strings.Join([]string{
		"30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755",
		"31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate",
		"32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd",
		"33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
		"34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
		"35 24 0:31 / /proc rw - proc proc rw",
	}, "\n")), 0o644)
	p1 := filepath.Join(dir, "cgroup")
	os.WriteFile(p1, []byte("4:memory:/init.scope\n3:cpu,cpuacct:/machine\n1:name=systemd:/init.scope\n0::/init.scope\n"), 0o644)
	got := cgroupBases(mi, p1)
	want := []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup/memory",
		"/sys/fs/cgroup/cpu,cpuacct/machine", "/sys/fs/cgroup/cpu,cpuacct"}
	if !slices.Equal(got, want) {
		t.Errorf("cgroupBases = %v\nwant %v", got, want)
	}
}

func TestIsContainerCgroup(t *testing.T) {
	const id = "6f1c"
	for name, want := range map[string]bool{
		"lxc.monitor.6f1c": true, "lxc.payload.6f1c": true, "lxc.monitor.6f1c-1": true, "lxc.payload.6f1c-12": true,
		"lxc.monitor.6f1c-": false, "lxc.monitor.6f1c-x": false, "lxc.monitor.6f1c2": false,
		"lxc.pivot": false, "lxc.monitor.other": false, "6f1c": false,
	} {
		if got := isContainerCgroup(name, id); got != want {
			t.Errorf("isContainerCgroup(%q) = %v", name, got)
		}
	}
}

func TestRemoveContainerCgroups(t *testing.T) {
	base := t.TempDir()
	for _, d := range []string{"lxc.monitor.c1", "lxc.payload.c1/sub/deeper", "lxc.monitor.c1-3", "lxc.monitor.c2", "lxc.pivot"} {
		os.MkdirAll(filepath.Join(base, d), 0o755)
	}
	// A cgroup with content cannot be removed (on cgroupfs: still has tasks).
	os.MkdirAll(filepath.Join(base, "lxc.payload.c1-1"), 0o755)
	os.WriteFile(filepath.Join(base, "lxc.payload.c1-1", "tasks"), []byte("1"), 0o644)
	left := removeContainerCgroups([]string{base, filepath.Join(base, "missing")}, "c1")
	if !slices.Equal(left, []string{filepath.Join(base, "lxc.payload.c1-1")}) {
		t.Errorf("left = %v", left)
	}
	ents, _ := os.ReadDir(base)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"lxc.monitor.c2", "lxc.payload.c1-1", "lxc.pivot"}) {
		t.Errorf("remaining %v", names)
	}
}

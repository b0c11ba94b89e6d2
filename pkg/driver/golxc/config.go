package golxc

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/idmap"
)

// configItem is one liblxc configuration key and value.
type configItem struct{ Key, Value string }

const (
	cpuPeriodUS    = 100000
	defaultInit    = "/sbin/init"
	maxCPUSharesV1 = 262144
	maxCPUWeightV2 = 10000
)

// validID reports whether id is usable as a container name and a directory
// name under lxcpath.
func validID(id string) bool {
	if id == "" || id == "." || id == ".." || len(id) > 200 {
		return false
	}
	for _, r := range id {
		if r == '/' || r <= ' ' || r == 0x7f {
			return false
		}
	}
	return true
}

// checkSpec validates what buildConfig relies on.
func checkSpec(spec driver.Spec) error {
	if !validID(spec.ID) {
		return fmt.Errorf("invalid container id %q", spec.ID)
	}
	if !filepath.IsAbs(spec.Rootfs) {
		return fmt.Errorf("rootfs %q is not an absolute path", spec.Rootfs)
	}
	if spec.ConsoleLog != "" && !filepath.IsAbs(spec.ConsoleLog) {
		return fmt.Errorf("console log %q is not an absolute path", spec.ConsoleLog)
	}
	if err := checkLimits(spec.Limits); err != nil {
		return err
	}
	if len(spec.IDMaps) > 0 {
		if err := idmap.Validate(spec.IDMaps); err != nil {
			return err
		}
	}
	names := map[string]bool{}
	for i, n := range spec.NICs {
		if n.HostDev == "" {
			return fmt.Errorf("nic %d: no host device", i)
		}
		name := nicName(i, n)
		if names[name] {
			return fmt.Errorf("nic %d: duplicate name %q", i, name)
		}
		names[name] = true
		if n.MTU < 0 {
			return fmt.Errorf("nic %d: negative mtu %d", i, n.MTU)
		}
		for _, a := range n.Addrs {
			if !a.IsValid() {
				return fmt.Errorf("nic %d: invalid address %v", i, a)
			}
		}
	}
	return nil
}

func nicName(i int, n driver.NIC) string {
	if n.Name != "" {
		return n.Name
	}
	return "eth" + strconv.Itoa(i)
}

// buildConfig turns a spec into the container's liblxc configuration, in the
// order it is set. logFile is the container's liblxc log.
func buildConfig(spec driver.Spec, h hostInfo, logFile string) []configItem {
	var c []configItem
	add := func(k, v string) { c = append(c, configItem{k, v}) }

	if h.CommonConf != "" {
		add("lxc.include", h.CommonConf)
	}
	hostname := spec.Hostname
	if hostname == "" {
		hostname = spec.ID
	}
	add("lxc.uts.name", hostname)
	add("lxc.rootfs.path", "dir:"+spec.Rootfs)
	// The rootfs belongs to the caller: tell liblxc not to manage it, so that
	// no liblxc destroy (ours or a stray lxc-destroy) deletes its contents.
	add("lxc.rootfs.managed", "0")
	// Unprivileged: a user namespace with the maps. The rootfs is already
	// owned by the mapped ids (an idmapped lower layer, see pkg/rootfs);
	// lxc.rootfs.options = idmap=container cannot help here, because the
	// rootfs is an overlayfs, which cannot be idmapped itself.
	for _, m := range spec.IDMaps {
		add("lxc.idmap", fmt.Sprintf("%c %d %d %d", m.Kind, m.ContainerID, m.HostID, m.Count))
	}
	initCmd := spec.Init
	if initCmd == "" {
		initCmd = defaultInit
	}
	add("lxc.init.cmd", initCmd)
	if spec.ConsoleLog != "" {
		add("lxc.console.logfile", spec.ConsoleLog)
	}
	add("lxc.log.file", logFile)
	add("lxc.log.level", "WARN")
	add("lxc.mount.auto", "proc:mixed sys:mixed cgroup:mixed")
	if h.AppArmor {
		add("lxc.apparmor.profile", "generated")
	} else {
		add("lxc.apparmor.profile", "unconfined")
	}
	add("lxc.tty.max", "1")
	add("lxc.pty.max", "16")
	add("lxc.autodev", "1")

	c = append(c, cgroupConfig(spec, h.Cgroup)...)

	for i, n := range spec.NICs {
		p := fmt.Sprintf("lxc.net.%d.", i)
		add(p+"type", "phys")
		add(p+"link", n.HostDev)
		add(p+"name", nicName(i, n))
		if n.MAC != "" {
			add(p+"hwaddr", strings.ToLower(n.MAC))
		}
		if n.MTU > 0 {
			add(p+"mtu", strconv.Itoa(n.MTU))
		}
		add(p+"flags", "up")
		for _, a := range n.Addrs {
			if a.Addr().Unmap().Is4() {
				add(p+"ipv4.address", ipv4Address(a))
			} else {
				add(p+"ipv6.address", a.String())
			}
		}
		if n.Gateway4.IsValid() {
			add(p+"ipv4.gateway", n.Gateway4.Unmap().String())
		}
		if n.Gateway6.IsValid() {
			add(p+"ipv6.gateway", n.Gateway6.String())
		}
	}
	return c
}

// cgroupConfig returns the limits applied before init runs: the
// non-default settings of limitSettings as liblxc keys (see cgroupKey).
func cgroupConfig(spec driver.Spec, l cgroupLayout) []configItem {
	var c []configItem
	set, _ := limitSettings(spec.Limits, l)
	for _, s := range set {
		if !s.Default {
			c = append(c, configItem{cgroupKey(l, s.V2, s.File), s.Value})
		}
	}
	return c
}

// cgroupKey is the liblxc key that writes file before init runs. liblxc
// 5.0 applies lxc.cgroup2.* only on a pure cgroup2 host and silently
// ignores it elsewhere (WARN "Ignoring cgroup2 limits on legacy cgroup
// system"); lxc.cgroup.<file> is written into whichever hierarchy carries
// the controller named by the file's prefix, including the cgroup2 mount
// of a hybrid host, and fails the start when that file does not exist.
// Hence the cgroup2 file names go under lxc.cgroup.* on hybrid hosts.
func cgroupKey(l cgroupLayout, v2 bool, file string) string {
	if v2 && l.Unified {
		return "lxc.cgroup2." + file
	}
	return "lxc.cgroup." + file
}

// cgSetting is one cgroup file written for a limit.
type cgSetting struct {
	V2    bool   // the file lives in the cgroup2 hierarchy
	File  string // e.g. "memory.limit_in_bytes"
	Value string
	// Default: the value is the kernel's default (no limit). It is not
	// written at creation, only to reset a live limit.
	Default bool
}

// Units and defaults of the cgroup files.
const (
	defaultCPUSharesV1 = 1024
	defaultCPUWeightV2 = 100
	minCPUSharesV1     = 2
	minCPUPeriodUS     = 1000
	maxCPUPeriodUS     = 1000000
	minCPUQuotaUS      = 1000
	minIOWeight        = 10
	maxIOWeight        = 1000
)

// defaultIOWeight is the kernel's default of each weight file.
var defaultIOWeight = map[string]int{
	"blkio.weight": 500, "blkio.bfq.weight": 100, "io.weight": 100, "io.bfq.weight": 100,
}

// cpuWeight converts cgroup v1 CPU shares into a cgroup v2 cpu.weight the
// way systemd does (CPUShares= to CPUWeight=): the default 1024 shares map
// to the default weight 100, linearly, clamped to 1..10000.
func cpuWeight(shares int) int {
	return min(max(shares*defaultCPUWeightV2/defaultCPUSharesV1, 1), maxCPUWeightV2)
}

func mib(n int) string { return strconv.FormatInt(int64(n)<<20, 10) }

// limitSettings returns every cgroup file the driver manages for l on
// layout h, in the order they must be written (memory before memsw, the
// CFS period before the quota), each with its value or the kernel
// default, and notes on requested limits the host cannot enforce.
//
//   - memory: MemoryMB MiB (v1 memory.limit_in_bytes, v2 memory.max);
//   - swap: v1 memory.memsw.limit_in_bytes = (MemoryMB+SwapMB) MiB (needs a
//     memory limit and swap accounting), v2 memory.swap.max = SwapMB MiB
//     (0 when a memory limit is set without swap);
//   - CPU weight: CPUShares, else 1024 per vCPU (v1 cpu.shares 2..262144,
//     v2 cpu.weight through cpuWeight);
//   - CPU bandwidth: period CPUPeriodUS (default 100000 µs), quota
//     CPUQuotaUS, or VCPUs * period when 0, -1 unlimited (v1
//     cpu.cfs_period_us + cpu.cfs_quota_us, v2 cpu.max "<quota|max> <period>");
//   - pids.max = Pids;
//   - block I/O weight: IOWeight written unchanged (as libvirt does) to
//     h.IOWeightFile.
func limitSettings(lim driver.Limits, h cgroupLayout) (set []cgSetting, notes []string) {
	add := func(v2 bool, file, value string, def bool) {
		set = append(set, cgSetting{V2: v2, File: file, Value: value, Default: def})
	}
	switch {
	case h.MemoryV1 && !h.Unified:
		if lim.MemoryMB > 0 {
			add(false, "memory.limit_in_bytes", mib(lim.MemoryMB), false)
		} else {
			add(false, "memory.limit_in_bytes", "-1", true)
		}
		switch {
		case h.MemswV1 && lim.MemoryMB > 0:
			// memory+swap: with SwapMB = 0 the container cannot swap.
			add(false, "memory.memsw.limit_in_bytes", mib(lim.MemoryMB+lim.SwapMB), false)
		case h.MemswV1:
			add(false, "memory.memsw.limit_in_bytes", "-1", true)
			if lim.SwapMB > 0 {
				notes = append(notes, "swap limit ignored: cgroup v1 limits swap only together with a memory limit")
			}
		case lim.MemoryMB > 0 || lim.SwapMB > 0:
			notes = append(notes, "swap not limited: no memory.memsw.limit_in_bytes (swap accounting is off)")
		}
	case h.MemoryV2:
		if lim.MemoryMB > 0 {
			add(true, "memory.max", mib(lim.MemoryMB), false)
		} else {
			add(true, "memory.max", "max", true)
		}
		switch {
		case h.SwapV2 && (lim.MemoryMB > 0 || lim.SwapMB > 0):
			add(true, "memory.swap.max", mib(lim.SwapMB), false)
		case h.SwapV2:
			add(true, "memory.swap.max", "max", true)
		case lim.MemoryMB > 0 || lim.SwapMB > 0:
			notes = append(notes, "swap not limited: no memory.swap.max (swap accounting is off)")
		}
	default:
		if lim.MemoryMB > 0 || lim.SwapMB > 0 {
			notes = append(notes, "memory limit ignored: no memory cgroup controller")
		}
	}

	shares := lim.CPUShares
	if shares == 0 && lim.VCPUs > 0 {
		shares = defaultCPUSharesV1 * lim.VCPUs
	}
	period := lim.CPUPeriodUS
	if period == 0 {
		period = cpuPeriodUS
	}
	quota := int64(-1)
	switch {
	case lim.CPUQuotaUS > 0:
		quota = int64(lim.CPUQuotaUS)
	case lim.CPUQuotaUS == 0 && lim.VCPUs > 0:
		quota = int64(lim.VCPUs) * int64(period)
	}
	switch {
	case h.CPUV1 && !h.Unified:
		add(false, "cpu.cfs_period_us", strconv.Itoa(period), period == cpuPeriodUS && quota < 0)
		add(false, "cpu.cfs_quota_us", strconv.FormatInt(quota, 10), quota < 0)
		if shares > 0 {
			add(false, "cpu.shares", strconv.Itoa(min(max(shares, minCPUSharesV1), maxCPUSharesV1)), false)
		} else {
			add(false, "cpu.shares", strconv.Itoa(defaultCPUSharesV1), true)
		}
	case h.CPUV2:
		q := "max"
		if quota > 0 {
			q = strconv.FormatInt(quota, 10)
		}
		add(true, "cpu.max", q+" "+strconv.Itoa(period), period == cpuPeriodUS && quota < 0)
		if shares > 0 {
			add(true, "cpu.weight", strconv.Itoa(cpuWeight(shares)), false)
		} else {
			add(true, "cpu.weight", strconv.Itoa(defaultCPUWeightV2), true)
		}
	default:
		if shares > 0 || quota > 0 {
			notes = append(notes, "CPU limits ignored: no cpu cgroup controller")
		}
	}

	pids, pidsDef := "max", true
	if lim.Pids > 0 {
		pids, pidsDef = strconv.Itoa(lim.Pids), false
	}
	switch {
	case h.PidsV1 && !h.Unified:
		add(false, "pids.max", pids, pidsDef)
	case h.PidsV2:
		add(true, "pids.max", pids, pidsDef)
	case lim.Pids > 0:
		notes = append(notes, "pids limit ignored: no pids cgroup controller")
	}

	if f := h.IOWeightFile; f != "" {
		v2 := strings.HasPrefix(f, "io.")
		if lim.IOWeight > 0 {
			add(v2, f, strconv.Itoa(lim.IOWeight), false)
		} else {
			add(v2, f, strconv.Itoa(defaultIOWeight[f]), true)
		}
	} else if lim.IOWeight > 0 {
		notes = append(notes, "I/O weight ignored: no blkio.bfq.weight, blkio.weight, io.bfq.weight or io.weight on this host")
	}
	return set, notes
}

// checkLimits validates limits against the ranges the kernel accepts.
func checkLimits(l driver.Limits) error {
	switch {
	case l.MemoryMB < 0, l.SwapMB < 0, l.VCPUs < 0, l.CPUShares < 0, l.Pids < 0:
		return fmt.Errorf("negative limit in %+v", l)
	case l.CPUQuotaUS < -1 || (l.CPUQuotaUS > 0 && l.CPUQuotaUS < minCPUQuotaUS):
		return fmt.Errorf("cpu quota %d µs: want -1, 0 or at least %d", l.CPUQuotaUS, minCPUQuotaUS)
	case l.CPUPeriodUS != 0 && (l.CPUPeriodUS < minCPUPeriodUS || l.CPUPeriodUS > maxCPUPeriodUS):
		return fmt.Errorf("cpu period %d µs: want %d..%d", l.CPUPeriodUS, minCPUPeriodUS, maxCPUPeriodUS)
	case l.IOWeight != 0 && (l.IOWeight < minIOWeight || l.IOWeight > maxIOWeight):
		return fmt.Errorf("I/O weight %d: want %d..%d", l.IOWeight, minIOWeight, maxIOWeight)
	}
	return nil
}

// ipv4Address formats an IPv4 (or IPv4-mapped) prefix as
// "a.b.c.d/len broadcast". The broadcast address is always given: liblxc
// 5.0 computes a wrong one (0.0.0.255 for 192.0.2.10/24) when it is left out.
func ipv4Address(p netip.Prefix) string {
	a, bits := p.Addr(), p.Bits()
	if a.Is4In6() {
		a, bits = a.Unmap(), bits-96
	}
	if bits < 0 || bits > 32 {
		bits = 32
	}
	bcast := netip.IPv4Unspecified()
	if bits <= 30 {
		b := a.As4()
		host := ^uint32(0) >> bits
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
		bcast = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return netip.PrefixFrom(a, bits).String() + " " + bcast.String()
}

package golxc

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
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
	if spec.MemoryMB < 0 || spec.VCPUs < 0 {
		return fmt.Errorf("negative memory (%d MB) or vcpus (%d)", spec.MemoryMB, spec.VCPUs)
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

// cgroupConfig returns the limits applied before init runs.
func cgroupConfig(spec driver.Spec, l cgroupLayout) []configItem {
	var c []configItem
	add := func(k, v string) { c = append(c, configItem{k, v}) }
	if spec.MemoryMB > 0 {
		limit := strconv.FormatInt(int64(spec.MemoryMB)<<20, 10)
		switch {
		case l.MemoryV1 && !l.Unified:
			add("lxc.cgroup.memory.limit_in_bytes", limit)
			if l.MemswV1 {
				// memory+swap = memory: the container cannot swap.
				add("lxc.cgroup.memory.memsw.limit_in_bytes", limit)
			}
		case l.MemoryV2:
			add("lxc.cgroup2.memory.max", limit)
			if l.SwapV2 {
				add("lxc.cgroup2.memory.swap.max", "0")
			}
		}
	}
	if spec.VCPUs > 0 {
		quota := int64(spec.VCPUs) * cpuPeriodUS
		switch {
		case l.CPUV1 && !l.Unified:
			add("lxc.cgroup.cpu.cfs_period_us", strconv.Itoa(cpuPeriodUS))
			add("lxc.cgroup.cpu.cfs_quota_us", strconv.FormatInt(quota, 10))
			add("lxc.cgroup.cpu.shares", strconv.Itoa(min(1024*spec.VCPUs, maxCPUSharesV1)))
		case l.CPUV2:
			add("lxc.cgroup2.cpu.max", fmt.Sprintf("%d %d", quota, cpuPeriodUS))
			add("lxc.cgroup2.cpu.weight", strconv.Itoa(min(100*spec.VCPUs, maxCPUWeightV2)))
		}
	}
	return c
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

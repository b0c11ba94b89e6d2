package golxc

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	lxc "github.com/lxc/go-lxc"

	"github.com/lxc-agent/lxc-agent/internal/procfs"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// unlimitedV1 is the smallest value treated as "no limit" in cgroup v1
// (the kernel reports PAGE_COUNTER_MAX pages, ~2^63 rounded to a page).
const unlimitedV1 = 1 << 62

// Stats implements driver.StatsReader. For a stopped container only
// MemoryLimit (from the spec) is set.
func (d *Driver) Stats(ctx context.Context, id string) (driver.Stats, error) {
	var s driver.Stats
	c, err := d.open(id)
	if err != nil {
		return s, err
	}
	defer c.Release()
	spec, err := d.Spec(id)
	if err != nil {
		d.log.Warn("stats: no spec", "id", id, "err", err)
	}
	st := c.State()
	pid := 0
	if st != lxc.STOPPED {
		pid = c.InitPid()
	}
	if pid <= 0 {
		s.MemoryLimit = uint64(spec.MemoryMB) << 20
		return s, nil
	}
	mark := logMark(d.logPath(id))
	l := d.host.Cgroup
	if l.MemoryV1 && !l.Unified {
		if s.MemoryBytes, err = cgroupUint(c, "memory.usage_in_bytes"); err != nil {
			return s, d.fail("stats", id, err, mark)
		}
		if s.MemoryLimit, err = cgroupUint(c, "memory.limit_in_bytes"); err != nil {
			return s, d.fail("stats", id, err, mark)
		}
		if s.MemoryLimit >= unlimitedV1 {
			s.MemoryLimit = 0
		}
	} else if l.MemoryV2 {
		if s.MemoryBytes, err = cgroupUint(c, "memory.current"); err != nil {
			return s, d.fail("stats", id, err, mark)
		}
		if s.MemoryLimit, err = cgroupUint(c, "memory.max"); err != nil {
			return s, d.fail("stats", id, err, mark)
		}
	}
	if l.CPUV1 && !l.Unified {
		ns, err := cgroupUint(c, "cpuacct.usage")
		if err != nil {
			return s, d.fail("stats", id, err, mark)
		}
		s.CPUTime = time.Duration(min(ns, math.MaxInt64))
	} else {
		usec, err := cpuStatUsage(c)
		if err != nil {
			return s, d.fail("stats", id, err, mark)
		}
		s.CPUTime = time.Duration(min(usec, math.MaxInt64/1000)) * time.Microsecond
	}
	if up, err := procfs.Uptime(pid); err == nil {
		s.UptimeSeconds = up
	} else {
		d.log.Warn("stats: uptime", "id", id, "err", err)
	}
	for i, n := range spec.NICs {
		ns, err := nicStats(pid, nicName(i, n), n)
		if err != nil {
			d.log.Debug("stats: nic", "id", id, "nic", nicName(i, n), "err", err)
		}
		s.NICs = append(s.NICs, ns)
	}
	return s, nil
}

// cgroupUint reads a one-number cgroup file of the container ("max" = 0).
func cgroupUint(c *lxc.Container, key string) (uint64, error) {
	v := strings.TrimSpace(strings.Join(c.CgroupItem(key), "\n"))
	if v == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cgroup %s: unexpected value %q", key, v)
	}
	return n, nil
}

// cpuStatUsage returns usage_usec from the container's cgroup2 cpu.stat.
func cpuStatUsage(c *lxc.Container) (uint64, error) {
	for _, l := range c.CgroupItem("cpu.stat") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "usage_usec" {
			return strconv.ParseUint(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("cgroup cpu.stat: no usage_usec")
}

// nicStats reads one NIC's counters from the container's point of view:
// from the host end (the tap in the bridge, rx and tx swapped) when it
// exists, else from the interface inside the container's network namespace.
func nicStats(pid int, name string, n driver.NIC) (driver.NICStats, error) {
	s := driver.NICStats{MAC: n.MAC}
	if n.Tap != "" {
		dir := filepath.Join("/sys/class/net", n.Tap, "statistics")
		if _, err := os.Stat(dir); err == nil {
			rd := func(f string) uint64 {
				b, err := os.ReadFile(filepath.Join(dir, f))
				if err != nil {
					return 0
				}
				v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
				return v
			}
			s.RxOctets, s.RxPackets = rd("tx_bytes"), rd("tx_packets")
			s.RxErrors, s.RxDrop = rd("tx_errors"), rd("tx_dropped")
			s.TxOctets, s.TxPackets = rd("rx_bytes"), rd("rx_packets")
			s.TxErrors, s.TxDrop = rd("rx_errors"), rd("rx_dropped")
			return s, nil
		}
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/dev", pid))
	if err != nil {
		return s, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		dev, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(dev) != name {
			continue
		}
		v := strings.Fields(rest)
		if len(v) < 12 {
			return s, fmt.Errorf("net/dev %s: too few fields", name)
		}
		u := func(i int) uint64 { n, _ := strconv.ParseUint(v[i], 10, 64); return n }
		s.RxOctets, s.RxPackets, s.RxErrors, s.RxDrop = u(0), u(1), u(2), u(3)
		s.TxOctets, s.TxPackets, s.TxErrors, s.TxDrop = u(8), u(9), u(10), u(11)
		return s, nil
	}
	return s, fmt.Errorf("net/dev: no interface %s", name)
}

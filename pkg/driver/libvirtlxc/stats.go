package libvirtlxc

import (
	"context"
	"fmt"
	"math"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/lxc-agent/lxc-agent/internal/procfs"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// defaultCPUShares is cgroup v1's cpu.shares of a group nobody tuned, what
// a domain without <cputune><shares> gets.
const defaultCPUShares = 1024

// Stats implements driver.StatsReader. CPU time comes from libvirt's
// cpuacct figures, memory use and limit from the domain's memory cgroup
// (virDomainGetInfo, the live hard_limit), NIC counters from
// virDomainInterfaceStats on each tap (the container's view: rx is what it
// received), uptime from the start time of the container's init. For a
// shut-off domain only MemoryLimit is set.
func (d *Driver) Stats(ctx context.Context, id string) (driver.Stats, error) {
	var s driver.Stats
	err := d.onDomain(ctx, "stats", id, func(dom *libvirt.Domain) error {
		s = driver.Stats{}
		info, err := dom.GetInfo()
		if err != nil {
			return err
		}
		if !active(info.State) {
			s.MemoryLimit = configuredLimit(dom, info)
			return nil
		}
		cpu, err := dom.GetCPUStats(-1, 1, 0)
		if err != nil {
			return err
		}
		if len(cpu) > 0 && cpu[0].CpuTimeSet {
			s.CPUTime = time.Duration(min(cpu[0].CpuTime, math.MaxInt64))
		}
		s.MemoryBytes = info.Memory * 1024
		if mp, err := dom.GetMemoryParameters(libvirt.DOMAIN_AFFECT_LIVE); err == nil && mp.HardLimitSet {
			if mp.HardLimit < libvirt.DOMAIN_MEMORY_PARAM_UNLIMITED {
				s.MemoryLimit = mp.HardLimit * 1024
			}
		} else {
			s.MemoryLimit = info.MaxMem * 1024
		}
		doc, err := dom.GetXMLDesc(0)
		if err != nil {
			return err
		}
		facts, err := parseFacts(doc)
		if err != nil {
			return err
		}
		for _, n := range facts.NICs {
			ns := driver.NICStats{MAC: n.MAC}
			if n.Tap != "" {
				is, err := dom.InterfaceStats(n.Tap)
				if err != nil {
					d.log.Debug("stats: nic", "id", id, "tap", n.Tap, "err", err)
				} else {
					u := func(v int64) uint64 { return uint64(max(v, 0)) }
					ns.RxOctets, ns.RxPackets, ns.RxErrors, ns.RxDrop = u(is.RxBytes), u(is.RxPackets), u(is.RxErrs), u(is.RxDrop)
					ns.TxOctets, ns.TxPackets, ns.TxErrors, ns.TxDrop = u(is.TxBytes), u(is.TxPackets), u(is.TxErrs), u(is.TxDrop)
				}
			}
			s.NICs = append(s.NICs, ns)
		}
		if ctrl, err := dom.GetID(); err == nil {
			if pid, err := findInit(int(ctrl)); err == nil {
				if up, err := procfs.Uptime(pid); err == nil {
					s.UptimeSeconds = up
				}
			}
		}
		return nil
	})
	if err != nil {
		return driver.Stats{}, fail("stats", id, err)
	}
	return s, nil
}

// configuredLimit is the memory limit a shut-off domain will start with:
// memtune hard_limit if set, else <memory>.
func configuredLimit(dom *libvirt.Domain, info *libvirt.DomainInfo) uint64 {
	if mp, err := dom.GetMemoryParameters(libvirt.DOMAIN_AFFECT_CONFIG); err == nil && mp.HardLimitSet &&
		mp.HardLimit > 0 && mp.HardLimit < libvirt.DOMAIN_MEMORY_PARAM_UNLIMITED {
		return mp.HardLimit * 1024
	}
	return info.MaxMem * 1024
}

// SetLimits implements driver.LimitSetter. Memory and CPU limits change on
// the running domain (the memory and cpu cgroups, through libvirt) and in
// its persistent definition:
//
//   - MemoryMB > 0: <memory> (maximum and current) in the definition, and
//     memtune hard_limit (memory.limit_in_bytes) live and in the
//     definition; swap_hard_limit = MemoryMB+SwapMB when SwapMB > 0, else
//     unlimited (nova sets no memtune);
//   - cputune: shares (CPUShares, else 1024), vcpu_period (CPUPeriodUS if
//     set), vcpu_quota (CPUQuotaUS, else -1 = unlimited).
//
// VCPUs only names the vCPU count of the definition (LXC does not bind it
// to anything) and is not changed; Pids and IOWeight have no libvirt-lxc
// equivalent and are ignored (logged).
func (d *Driver) SetLimits(ctx context.Context, id string, l driver.Limits) error {
	if l.MemoryMB < 0 || l.SwapMB < 0 || l.CPUShares < 0 || l.CPUPeriodUS < 0 || l.CPUQuotaUS < -1 {
		return fmt.Errorf("libvirt-lxc: set limits %s: invalid limits %+v", id, l)
	}
	defer d.lock(id)()
	if l.Pids > 0 || l.IOWeight > 0 {
		d.log.Warn("set limits: pids and io weight are not supported by libvirt-lxc, ignored", "id", id, "pids", l.Pids, "io_weight", l.IOWeight)
	}
	err := d.onDomain(ctx, "set limits", id, func(dom *libvirt.Domain) error {
		st, _, err := dom.GetState()
		if err != nil {
			return err
		}
		impact := libvirt.DOMAIN_AFFECT_CONFIG
		if active(st) {
			impact |= libvirt.DOMAIN_AFFECT_LIVE
		}
		if l.MemoryMB > 0 {
			kib := uint64(l.MemoryMB) * 1024
			if err := dom.SetMemoryFlags(kib, libvirt.DOMAIN_MEM_MAXIMUM|libvirt.DOMAIN_MEM_CONFIG); err != nil {
				return fmt.Errorf("memory: %w", lv(err))
			}
			if err := dom.SetMemoryFlags(kib, libvirt.DOMAIN_MEM_CONFIG); err != nil {
				return fmt.Errorf("memory: %w", lv(err))
			}
			mp := &libvirt.DomainMemoryParameters{HardLimitSet: true, HardLimit: kib, SwapHardLimitSet: true,
				SwapHardLimit: libvirt.DOMAIN_MEMORY_PARAM_UNLIMITED}
			if l.SwapMB > 0 {
				mp.SwapHardLimit = kib + uint64(l.SwapMB)*1024
			}
			if err := dom.SetMemoryParameters(mp, impact); err != nil {
				return fmt.Errorf("memtune: %w", lv(err))
			}
		}
		sp := &libvirt.DomainSchedulerParameters{
			CpuSharesSet: true, CpuShares: defaultCPUShares,
			VcpuQuotaSet: true, VcpuQuota: -1,
		}
		if l.CPUShares > 0 {
			sp.CpuShares = uint64(l.CPUShares)
		}
		if l.CPUQuotaUS != 0 {
			sp.VcpuQuota = int64(l.CPUQuotaUS)
		}
		if l.CPUPeriodUS > 0 {
			sp.VcpuPeriodSet, sp.VcpuPeriod = true, uint64(l.CPUPeriodUS)
		}
		if err := dom.SetSchedulerParametersFlags(sp, impact); err != nil {
			return fmt.Errorf("cputune: %w", lv(err))
		}
		return nil
	})
	return fail("set limits", id, err)
}

package compute

import (
	"strconv"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// limitsFor derives a container's limits from the flavor and its extra
// specs, the way nova's libvirt driver reads quota:cpu_* (cputune). Keys
// nova has no name for use the lxc: namespace, which nova-api accepts:
// lxc:pids (also quota:pids), lxc:swap_mb, lxc:io_weight (also
// quota:disk_io_weight). The agent's configuration gives the defaults.
func (m *Manager) limitsFor(inst *novaobj.Instance) driver.Limits {
	l := driver.Limits{MemoryMB: inst.MemoryMB, VCPUs: inst.VCPUs, Pids: m.cfg.PidsLimit, SwapMB: m.cfg.SwapMB}
	if inst.Flavor == nil {
		return l
	}
	spec := func(keys ...string) (int, bool) {
		for _, k := range keys {
			if v, ok := inst.Flavor.ExtraSpecs[k]; ok {
				if n, err := strconv.Atoi(v); err == nil {
					return n, true
				}
				m.log.Warn("ignoring a non-integer extra spec", "instance_uuid", inst.UUID, "key", k, "value", v)
			}
		}
		return 0, false
	}
	if n, ok := spec("quota:cpu_shares"); ok {
		l.CPUShares = n
	}
	if n, ok := spec("quota:cpu_period"); ok {
		l.CPUPeriodUS = n
	}
	if n, ok := spec("quota:cpu_quota"); ok {
		l.CPUQuotaUS = n
	}
	if n, ok := spec("lxc:pids", "quota:pids"); ok {
		l.Pids = n
	}
	if n, ok := spec("lxc:swap_mb"); ok {
		l.SwapMB = n
	}
	if n, ok := spec("lxc:io_weight", "quota:disk_io_weight"); ok {
		l.IOWeight = n
	}
	return l
}

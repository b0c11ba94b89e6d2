package compute

import (
	"context"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// diagnostics builds a nova Diagnostics 1.0 primitive, shaped like the
// libvirt driver's answer for virt_type=lxc.
func (m *Manager) diagnostics(ctx context.Context, id string, rec Record, info driver.Info) (any, error) {
	d := novaobj.New("Diagnostics", "1.0")
	d.Set("state", info.State.String())
	d.Set("driver", "libvirt") // HypervisorDriverField has no lxc value; nova's lxc answers "libvirt"
	d.Set("hypervisor", "lxc")
	d.Set("hypervisor_os", "linux")
	d.Set("config_drive", false)
	var st driver.Stats
	if sr, ok := m.drv.(driver.StatsReader); ok {
		s, err := sr.Stats(ctx, id)
		if err != nil {
			return nil, err
		}
		st = s
	}
	uptime := st.UptimeSeconds
	if rec.LaunchedAt != nil && uptime == 0 {
		uptime = int64(time.Since(*rec.LaunchedAt).Seconds())
	}
	d.Set("uptime", uptime)
	mem := novaobj.New("MemoryDiagnostics", "1.0")
	maxMB := int64(rec.MemoryMB)
	if st.MemoryLimit > 0 {
		maxMB = int64(st.MemoryLimit >> 20)
	}
	mem.Set("maximum", maxMB)
	mem.Set("used", int64(st.MemoryBytes>>20))
	d.Set("memory_details", mem)
	cpus := []*novaobj.Object{}
	n := rec.VCPUs
	if n == 0 {
		n = 1
	}
	for i := 0; i < n; i++ {
		c := novaobj.New("CpuDiagnostics", "1.0")
		c.Set("id", i)
		if i == 0 { // a container has one CPU time counter for all vCPUs
			c.Set("time", st.CPUTime.Nanoseconds())
		} else {
			c.Set("time", nil)
		}
		c.Set("utilisation", nil)
		cpus = append(cpus, c)
	}
	d.Set("cpu_details", cpus)
	nics := []*novaobj.Object{}
	for _, v := range rec.VIFs {
		nic := novaobj.New("NicDiagnostics", "1.0")
		nic.Set("mac_address", v.MAC)
		if m.nicStat != nil {
			if s, err := m.nicStat(ctx, v.Tap); err == nil {
				nic.Set("rx_octets", s.RxOctets)
				nic.Set("rx_packets", s.RxPackets)
				nic.Set("rx_errors", s.RxErrors)
				nic.Set("rx_drop", s.RxDrop)
				nic.Set("tx_octets", s.TxOctets)
				nic.Set("tx_packets", s.TxPackets)
				nic.Set("tx_errors", s.TxErrors)
				nic.Set("tx_drop", s.TxDrop)
			}
		}
		nic.Set("rx_rate", nil)
		nic.Set("tx_rate", nil)
		nics = append(nics, nic)
	}
	d.Set("nic_details", nics)
	d.Set("disk_details", []any{})
	d.Set("num_cpus", len(cpus))
	d.Set("num_nics", len(nics))
	d.Set("num_disks", 0)
	return d, nil
}

// InstanceSummary is one row of the standalone list.
type InstanceSummary struct {
	UUID       string      `json:"uuid"`
	Name       string      `json:"name"`
	VMState    string      `json:"vm_state"`
	PowerState string      `json:"power_state"`
	ImageID    string      `json:"image_id"`
	VIFs       []VIFRecord `json:"vifs"`
	CreatedAt  time.Time   `json:"created_at"`
	Fault      string      `json:"fault,omitempty"`
}

func (m *Manager) listInstances(ctx context.Context, _ *rpc.Request) (any, error) {
	out := []InstanceSummary{}
	for _, r := range m.store.List() {
		ps := driver.NoState
		if r.VMState != StateError {
			ps = m.powerState(ctx, r.UUID)
		}
		out = append(out, InstanceSummary{UUID: r.UUID, Name: r.Name, VMState: r.VMState, PowerState: ps.String(),
			ImageID: r.ImageID, VIFs: r.VIFs, CreatedAt: r.CreatedAt, Fault: r.Fault})
	}
	return out, nil
}

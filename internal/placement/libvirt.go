package placement

// HostResources are the host totals nova's libvirt driver reports: usable
// CPUs for VCPU, memory in MiB, and the size in GiB of the filesystem that
// holds the instances.
type HostResources struct {
	VCPUs    int
	MemoryMB int
	DiskGB   int
}

// Ratios are nova's [DEFAULT] cpu/ram/disk_allocation_ratio (CPU, RAM,
// Disk) and initial_*_allocation_ratio options; 0 means unset.
type Ratios struct {
	CPU, RAM, Disk                      float64
	InitialCPU, InitialRAM, InitialDisk float64
}

// Reserved are nova's reserved_host_cpus, reserved_host_memory_mb and
// reserved_host_disk_mb.
type Reserved struct {
	CPUs     int
	MemoryMB int
	DiskMB   int
}

// AllocationRatios is nova/virt/driver.py _get_allocation_ratios: for
// VCPU, MEMORY_MB and DISK_GB, the configured ratio if set, else the value in
// existing (placement's current inventory), else the initial ratio.
func AllocationRatios(cfg Ratios, existing map[string]Inventory) map[string]float64 {
	return map[string]float64{
		VCPU:     AllocationRatio(VCPU, cfg.CPU, existing, cfg.InitialCPU),
		MemoryMB: AllocationRatio(MemoryMB, cfg.RAM, existing, cfg.InitialRAM),
		DiskGB:   AllocationRatio(DiskGB, cfg.Disk, existing, cfg.InitialDisk),
	}
}

// LibvirtInventories is the inventory nova's libvirt driver puts on the
// compute node provider (nova/virt/libvirt/driver.py update_provider_tree,
// without PCPU, vGPU, vPMEM or SEV): MEMORY_MB, VCPU and DISK_GB, each
// with min_unit 1, step_size 1 and max_unit = total, ratios by
// AllocationRatios, reserved from res (DISK_GB reserved is
// ceil(reserved_host_disk_mb / 1024)). A class with a zero total is left
// out, as placement refuses total 0. existing is placement's current
// inventory of the provider (nil for a new one).
func LibvirtInventories(h HostResources, cfg Ratios, res Reserved, existing map[string]Inventory) map[string]Inventory {
	ratios := AllocationRatios(cfg, existing)
	out := make(map[string]Inventory, 3)
	add := func(rc string, total, reserved int) {
		if total <= 0 {
			return
		}
		out[rc] = Inventory{
			Total:           total,
			Reserved:        reserved,
			MinUnit:         1,
			MaxUnit:         total,
			StepSize:        1,
			AllocationRatio: ratios[rc],
		}
	}
	add(MemoryMB, h.MemoryMB, res.MemoryMB)
	add(VCPU, h.VCPUs, res.CPUs)
	add(DiskGB, h.DiskGB, mbToCeilGB(res.DiskMB))
	return out
}

// mbToCeilGB is nova.compute.utils.convert_mb_to_ceil_gb.
func mbToCeilGB(mb int) int {
	if mb <= 0 {
		return 0
	}
	return (mb + 1023) / 1024
}

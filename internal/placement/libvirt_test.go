package placement

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/lxc-agent/lxc-agent/internal/testenv"
)

type libvirtCase struct {
	name     string
	host     HostResources
	ratios   Ratios
	reserved Reserved
	existing map[string]Inventory
	want     map[string]Inventory
}

func full(total, reserved int, ratio float64) Inventory {
	return Inventory{Total: total, Reserved: reserved, MinUnit: 1, MaxUnit: total, StepSize: 1, AllocationRatio: ratio}
}

var libvirtCases = []libvirtCase{
	{
		name:     "new node, defaults",
		host:     HostResources{VCPUs: 8, MemoryMB: 15990, DiskGB: 48},
		reserved: Reserved{MemoryMB: 512},
		want:     map[string]Inventory{VCPU: full(8, 0, 16), MemoryMB: full(15990, 512, 1.5), DiskGB: full(48, 0, 1)},
	},
	{
		name:     "initial ratios and reserved disk rounded up",
		host:     HostResources{VCPUs: 4, MemoryMB: 2048, DiskGB: 20},
		ratios:   Ratios{InitialCPU: 4, InitialRAM: 1.0, InitialDisk: 2},
		reserved: Reserved{CPUs: 1, MemoryMB: 256, DiskMB: 1025},
		want:     map[string]Inventory{VCPU: full(4, 1, 4), MemoryMB: full(2048, 256, 1), DiskGB: full(20, 2, 2)},
	},
	{
		name:     "existing placement ratios win over initial ones",
		host:     HostResources{VCPUs: 4, MemoryMB: 2048, DiskGB: 20},
		ratios:   Ratios{InitialCPU: 4, InitialRAM: 1.0},
		reserved: Reserved{MemoryMB: 512, DiskMB: 1024},
		existing: map[string]Inventory{VCPU: full(4, 0, 7.5), MemoryMB: full(1024, 0, 2)},
		want:     map[string]Inventory{VCPU: full(4, 0, 7.5), MemoryMB: full(2048, 512, 2), DiskGB: full(20, 1, 1)},
	},
	{
		name:     "configured ratios win over existing ones",
		host:     HostResources{VCPUs: 2, MemoryMB: 1024, DiskGB: 1},
		ratios:   Ratios{CPU: 3, RAM: 1.25, Disk: 0.5, InitialCPU: 4},
		reserved: Reserved{MemoryMB: 512},
		existing: map[string]Inventory{VCPU: full(2, 0, 7.5), MemoryMB: full(1024, 0, 2), DiskGB: full(1, 0, 9)},
		want:     map[string]Inventory{VCPU: full(2, 0, 3), MemoryMB: full(1024, 512, 1.25), DiskGB: full(1, 0, 0.5)},
	},
	{
		name:     "zero totals are left out",
		host:     HostResources{VCPUs: 0, MemoryMB: 1024, DiskGB: 0},
		reserved: Reserved{MemoryMB: 512, DiskMB: 4096},
		want:     map[string]Inventory{MemoryMB: full(1024, 512, 1.5)},
	},
}

func TestLibvirtInventories(t *testing.T) {
	for _, tc := range libvirtCases {
		got := LibvirtInventories(tc.host, tc.ratios, tc.reserved, tc.existing)
		if !InventoriesEqual(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
		}
	}
}

// TestLibvirtInventoriesMatchNova runs nova's own
// LibvirtDriver.update_provider_tree (host probing mocked out, the same
// numbers as the Go cases) and compares its inventory with ours.
func TestLibvirtInventoriesMatchNova(t *testing.T) {
	testenv.RequireNovaPython(t)
	type pyCase struct {
		Conf     map[string]any       `json:"conf"`
		Mem      int                  `json:"mem"`
		Disk     float64              `json:"disk"`
		VCPUs    int                  `json:"vcpus"`
		Existing map[string]Inventory `json:"existing"`
	}
	var in []pyCase
	for _, tc := range libvirtCases {
		conf := map[string]any{
			"reserved_host_cpus":      tc.reserved.CPUs,
			"reserved_host_memory_mb": tc.reserved.MemoryMB,
			"reserved_host_disk_mb":   tc.reserved.DiskMB,
		}
		for k, v := range map[string]float64{
			"cpu_allocation_ratio": tc.ratios.CPU, "ram_allocation_ratio": tc.ratios.RAM, "disk_allocation_ratio": tc.ratios.Disk,
			"initial_cpu_allocation_ratio": tc.ratios.InitialCPU, "initial_ram_allocation_ratio": tc.ratios.InitialRAM,
			"initial_disk_allocation_ratio": tc.ratios.InitialDisk,
		} {
			if v != 0 {
				conf[k] = v
			}
		}
		// _get_local_gb_info returns float GiB; nova truncates with int().
		in = append(in, pyCase{Conf: conf, Mem: tc.host.MemoryMB, Disk: float64(tc.host.DiskGB) + 0.7, VCPUs: tc.host.VCPUs, Existing: tc.existing})
	}
	js, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	out := testenv.PythonCode(t, novaInventoryScript, nil, string(js))
	var got []map[string]Inventory
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("nova output %q: %v", out, err)
	}
	if len(got) != len(libvirtCases) {
		t.Fatalf("nova returned %d inventories for %d cases", len(got), len(libvirtCases))
	}
	for i, tc := range libvirtCases {
		ours := LibvirtInventories(tc.host, tc.ratios, tc.reserved, tc.existing)
		if !InventoriesEqual(ours, got[i]) {
			t.Errorf("%s:\n nova %+v\n ours %+v", tc.name, got[i], ours)
		} else {
			t.Logf("%s: same as nova: %s", tc.name, fmt.Sprint(got[i]))
		}
	}
}

const novaInventoryScript = `
import json, sys
from unittest import mock
import nova.conf
from nova.compute import provider_tree
from nova.virt.libvirt import driver as lvd

CONF = nova.conf.CONF
CONF([], project='nova', default_config_files=[])
out = []
for c in json.loads(sys.argv[1]):
    for k, v in c['conf'].items():
        CONF.set_override(k, v)
    d = object.__new__(lvd.LibvirtDriver)
    d._host = mock.Mock()
    d._host.get_memory_mb_total.return_value = c['mem']
    pt = provider_tree.ProviderTree()
    pt.new_root('node', 'cd5e3ff6-6d7f-4f21-9a49-4ec1b7d36a34', generation=0)
    if c['existing']:
        pt.update_inventory('node', c['existing'])
    D = lvd.LibvirtDriver
    with mock.patch.object(D, '_get_local_gb_info', return_value={'total': c['disk']}), \
         mock.patch.object(D, '_get_vcpu_available', return_value=set(range(c['vcpus']))), \
         mock.patch.object(D, '_get_pcpu_available', return_value=set()), \
         mock.patch.object(D, '_get_memory_encrypted_slots', return_value=0), \
         mock.patch.object(D, '_get_disk_size_reserved_for_image_cache', return_value=0), \
         mock.patch.object(D, '_update_provider_tree_for_vgpu'), \
         mock.patch.object(D, '_update_provider_tree_for_pcpu'), \
         mock.patch.object(D, '_update_provider_tree_for_vpmems'), \
         mock.patch.object(D, 'static_traits', new_callable=mock.PropertyMock, return_value={}), \
         mock.patch.object(D, '_get_cpu_feature_traits', return_value={}), \
         mock.patch.object(lvd.copy, 'deepcopy', side_effect=lambda x: x):
        d.update_provider_tree(pt, 'node')
    out.append(pt.data('node').inventory)
    for k in c['conf']:
        CONF.clear_override(k)
json.dump(out, sys.stdout)
`

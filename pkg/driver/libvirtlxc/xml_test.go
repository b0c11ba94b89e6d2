package libvirtlxc_test

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/driver/libvirtlxc"
)

// novaXML is the domain nova 26.2.2 generates for virt_type=lxc with a
// linuxbridge VIF, quota:cpu_shares=2048 and uid_maps/gid_maps 0:1000:100
// (../shared/spec/wire-protocol.md §6.1; the elided instance paths filled
// in, the nova metadata block left out).
const novaXML = `<domain type="lxc">
  <uuid>0995a387-1136-4d1b-8778-c48a15e37ace</uuid>
  <name>instance-00000001</name>
  <memory>2097152</memory>
  <vcpu>2</vcpu>
  <os>
    <type>exe</type>
    <cmdline>console=tty0 console=ttyS0 console=hvc0</cmdline>
    <init>/sbin/init</init>
    <initenv name="product_name">OpenStack Nova</initenv>
  </os>
  <cputune><shares>2048</shares></cputune>
  <clock offset="utc"/>
  <devices>
    <filesystem type="mount">
      <source dir="/var/lib/nova/instances/0995a387-1136-4d1b-8778-c48a15e37ace/rootfs"/>
      <target dir="/"/>
    </filesystem>
    <interface type="bridge">
      <mac address="fa:16:3e:12:34:56"/>
      <source bridge="brqb1c2d3e4-f5"/>
      <mtu size="1450"/>
      <target dev="tap3f5c6b2a-9d"/>
    </interface>
    <console type="pty">
      <log file="/var/lib/nova/instances/0995a387-1136-4d1b-8778-c48a15e37ace/console.log" append="off"/>
    </console>
    <controller type="usb" index="0" model="none"/>
  </devices>
  <idmap>
    <uid start="0" target="1000" count="100"/>
    <gid start="0" target="1000" count="100"/>
  </idmap>
</domain>`

// novaSpec is what the agent passes for the same instance.
func novaSpec() driver.Spec {
	dir := "/var/lib/nova/instances/0995a387-1136-4d1b-8778-c48a15e37ace"
	return driver.Spec{
		ID:          "0995a387-1136-4d1b-8778-c48a15e37ace",
		Name:        "instance-00000001",
		Hostname:    "vm-1",
		InstanceDir: dir,
		Rootfs:      dir + "/rootfs",
		ConsoleLog:  dir + "/console.log",
		Init:        "/sbin/init",
		Limits:      driver.Limits{MemoryMB: 2048, VCPUs: 2, CPUShares: 2048},
		NICs: []driver.NIC{{
			HostDev: "tin3f5c6b2a-9d", Bridge: "brqb1c2d3e4-f5", Tap: "tap3f5c6b2a-9d", Name: "eth0",
			MAC: "fa:16:3e:12:34:56", MTU: 1450,
		}},
		IDMaps: []driver.IDMap{{Kind: 'u', ContainerID: 0, HostID: 1000, Count: 100}, {Kind: 'g', ContainerID: 0, HostID: 1000, Count: 100}},
	}
}

func TestLibvirtDomainXMLIsNovas(t *testing.T) {
	got, err := libvirtlxc.DomainXML(novaSpec(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("generated:\n%s", got)
	if !strings.Contains(got, `<metadata><lxcagent:instance xmlns:lxcagent="https://lxc-agent/instance/1"></lxcagent:instance></metadata>`) {
		t.Errorf("no lxc-agent marker in <metadata>")
	}
	var g, n libvirtxml.Domain
	if err := g.Unmarshal(got); err != nil {
		t.Fatalf("generated XML does not parse: %v", err)
	}
	if err := n.Unmarshal(novaXML); err != nil {
		t.Fatal(err)
	}
	if g.Metadata == nil {
		t.Fatalf("no metadata")
	}
	g.Metadata = nil // nova's own metadata block is not part of the comparison
	// What the agent adds to nova's domain so that both backends enforce
	// the same limits: a CPU bandwidth of VCPUs CPUs and the memory limit
	// without swap (nova's libvirt driver leaves both to the host).
	if g.CPUTune == nil || g.CPUTune.Period == nil || g.CPUTune.Period.Value != 100000 ||
		g.CPUTune.Quota == nil || g.CPUTune.Quota.Value != 200000 {
		t.Errorf("cputune bandwidth for 2 vCPUs: %+v", g.CPUTune)
	} else {
		g.CPUTune.Period, g.CPUTune.Quota = nil, nil
	}
	if m := g.MemoryTune; m == nil || m.HardLimit == nil || m.HardLimit.Value != 2097152 || m.SwapHardLimit == nil || m.SwapHardLimit.Value != 2097152 {
		t.Errorf("memtune for 2048 MB without swap: %+v", g.MemoryTune)
	} else {
		g.MemoryTune = nil
	}
	// Field by field: every top-level element, then every device.
	compare := func(what string, a, b any) {
		t.Helper()
		if !reflect.DeepEqual(a, b) {
			ja, _ := json.Marshal(a)
			jb, _ := json.Marshal(b)
			t.Errorf("%s differs:\n ours %s\n nova %s", what, ja, jb)
		}
	}
	compare("type", g.Type, n.Type)
	compare("name", g.Name, n.Name)
	compare("uuid", g.UUID, n.UUID)
	compare("memory", g.Memory, n.Memory)
	compare("vcpu", g.VCPU, n.VCPU)
	compare("os", g.OS, n.OS)
	compare("cputune", g.CPUTune, n.CPUTune)
	compare("clock", g.Clock, n.Clock)
	compare("idmap", g.IDMap, n.IDMap)
	compare("filesystems", g.Devices.Filesystems, n.Devices.Filesystems)
	compare("interfaces", g.Devices.Interfaces, n.Devices.Interfaces)
	compare("consoles", g.Devices.Consoles, n.Devices.Consoles)
	compare("controllers", g.Devices.Controllers, n.Devices.Controllers)
	// And nothing else anywhere.
	compare("whole domain", g, n)
}

func TestLibvirtDomainXMLOptionalParts(t *testing.T) {
	s := novaSpec()
	s.Name = ""
	s.CPUShares = 0
	s.IDMaps = nil
	s.NICs[0].Addrs = []netip.Prefix{netip.MustParsePrefix("10.0.0.5/24"), netip.MustParsePrefix("2001:db8::5/64")}
	s.NICs[0].Gateway4 = netip.MustParseAddr("10.0.0.1")
	s.NICs[0].Gateway6 = netip.MustParseAddr("2001:db8::1")
	s.NICs = append(s.NICs, driver.NIC{Bridge: "brq2", Tap: "tap2", Name: "data0"})
	doc, err := libvirtlxc.DomainXML(s, 0)
	if err != nil {
		t.Fatal(err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	if d.Name != s.ID || d.UUID != s.ID {
		t.Errorf("name/uuid = %s/%s, want the id for both without Spec.Name", d.Name, d.UUID)
	}
	if d.IDMap != nil {
		t.Errorf("idmap without maps: %+v", d.IDMap)
	}
	if d.CPUTune == nil || d.CPUTune.Shares == nil || d.CPUTune.Shares.Value != 2048 {
		t.Errorf("cputune without quota:cpu_shares: %+v, want 1024 shares per vCPU", d.CPUTune)
	}
	ifc := d.Devices.Interfaces[0]
	wantIP := []libvirtxml.DomainInterfaceIP{{Address: "10.0.0.5", Family: "ipv4", Prefix: 24}, {Address: "2001:db8::5", Family: "ipv6", Prefix: 64}}
	if !reflect.DeepEqual(ifc.IP, wantIP) {
		t.Errorf("ip = %+v", ifc.IP)
	}
	wantRoutes := []libvirtxml.DomainInterfaceRoute{{Family: "ipv4", Address: "0.0.0.0", Gateway: "10.0.0.1"}, {Family: "ipv6", Address: "::", Gateway: "2001:db8::1"}}
	if !reflect.DeepEqual(ifc.Route, wantRoutes) {
		t.Errorf("route = %+v", ifc.Route)
	}
	if ifc.Guest != nil {
		t.Errorf("eth0 at index 0 got <guest dev>: %+v", ifc.Guest)
	}
	if g := d.Devices.Interfaces[1].Guest; g == nil || g.Dev != "data0" {
		t.Errorf("second NIC named data0: guest = %+v", g)
	}
	if d.Devices.Interfaces[1].MTU != nil || d.Devices.Interfaces[1].MAC != nil {
		t.Errorf("second NIC without MTU/MAC: %+v", d.Devices.Interfaces[1])
	}

	// Limits: cputune from quota:*, memtune only with swap, memory 0 = host.
	s = novaSpec()
	s.Limits = driver.Limits{MemoryMB: 512, SwapMB: 256, VCPUs: 0, CPUShares: 512, CPUPeriodUS: 50000, CPUQuotaUS: -1}
	doc, _ = libvirtlxc.DomainXML(s, 0)
	d = libvirtxml.Domain{}
	if err := d.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	if d.VCPU.Value != 1 {
		t.Errorf("vcpu = %d, want 1 when VCPUs is 0", d.VCPU.Value)
	}
	ct := d.CPUTune
	if ct == nil || ct.Shares.Value != 512 || ct.Period.Value != 50000 || ct.Quota.Value != -1 {
		t.Errorf("cputune = %+v", ct)
	}
	mt := d.MemoryTune
	if mt == nil || mt.HardLimit.Value != 512*1024 || mt.SwapHardLimit.Value != 768*1024 {
		t.Errorf("memtune = %+v", mt)
	}
	s.MemoryMB, s.SwapMB = 0, 0
	doc, _ = libvirtlxc.DomainXML(s, 4<<20)
	d = libvirtxml.Domain{}
	if err := d.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	if d.Memory.Value != 4<<20 {
		t.Errorf("memory without a limit = %d KiB, want the host's", d.Memory.Value)
	}
	if d.Features != nil {
		t.Errorf("features with a NIC: %+v", d.Features)
	}

	// No NIC: a private network namespace all the same.
	s.NICs = nil
	doc, _ = libvirtlxc.DomainXML(s, 0)
	d = libvirtxml.Domain{}
	if err := d.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	if d.Features == nil || d.Features.PrivNet == nil || d.Devices.Interfaces != nil {
		t.Errorf("no <privnet/> without NICs:\n%s", doc)
	}
}

func TestLibvirtDomainXMLRejects(t *testing.T) {
	for name, mut := range map[string]func(*driver.Spec){
		"id not a uuid":     func(s *driver.Spec) { s.ID = "instance-1" },
		"uppercase uuid":    func(s *driver.Spec) { s.ID = strings.ToUpper(s.ID) },
		"relative rootfs":   func(s *driver.Spec) { s.Rootfs = "rootfs" },
		"relative console":  func(s *driver.Spec) { s.ConsoleLog = "console.log" },
		"relative init":     func(s *driver.Spec) { s.Init = "sbin/init" },
		"slash in name":     func(s *driver.Spec) { s.Name = "a/b" },
		"no bridge":         func(s *driver.Spec) { s.NICs[0].Bridge = "" },
		"no tap":            func(s *driver.Spec) { s.NICs[0].Tap = "" },
		"long tap":          func(s *driver.Spec) { s.NICs[0].Tap = "tap0123456789abc" },
		"libvirt tap":       func(s *driver.Spec) { s.NICs[0].Tap = "vnet0" },
		"duplicate tap":     func(s *driver.Spec) { s.NICs = append(s.NICs, s.NICs[0]) },
		"negative memory":   func(s *driver.Spec) { s.MemoryMB = -1 },
		"quota below -1":    func(s *driver.Spec) { s.CPUQuotaUS = -2 },
		"bad id map":        func(s *driver.Spec) { s.IDMaps[0].Kind = 'x' },
		"invalid address":   func(s *driver.Spec) { s.NICs[0].Addrs = []netip.Prefix{{}} },
		"duplicate nicname": func(s *driver.Spec) { n := s.NICs[0]; n.Tap = "tap2"; s.NICs = append(s.NICs, n) },
	} {
		s := novaSpec()
		mut(&s)
		if _, err := libvirtlxc.DomainXML(s, 0); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

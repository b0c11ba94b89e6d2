package libvirtlxc

import (
	"encoding/xml"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"libvirt.org/go/libvirtxml"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

const (
	// MetadataNS is the namespace of the marker element every domain this
	// backend defines carries in its <metadata>; domains without it are
	// foreign and never listed or touched.
	MetadataNS = "https://lxc-agent/instance/1"

	defaultInit = "/sbin/init"
	// nova's _configure_guest_by_virt_type for lxc.
	novaCmdline     = "console=tty0 console=ttyS0 console=hvc0"
	novaProductName = "OpenStack Nova"
)

// marker is <lxcagent:instance xmlns:lxcagent="https://lxc-agent/instance/1"/>,
// written with the prefix spelled out so that the stored XML reads as the
// documentation says; libvirt keeps the element as given.
type marker struct {
	XMLName xml.Name `xml:"lxcagent:instance"`
	XMLNS   string   `xml:"xmlns:lxcagent,attr"`
	// Pids is the container's pids limit, which libvirt cannot express:
	// the driver applies it at every start (see pids.go).
	Pids int `xml:"pids,attr,omitempty"`
	// Unlimited: no memory limit, which libvirt-lxc cannot express either
	// (it always applies <memory>); the driver lifts the limit at start.
	Unlimited bool `xml:"unlimited-memory,attr,omitempty"`
}

func markerXML(spec driver.Spec) string {
	b, err := xml.Marshal(marker{XMLNS: MetadataNS, Pids: spec.Pids, Unlimited: spec.MemoryMB == 0})
	if err != nil { // a fixed struct: cannot fail
		panic(err)
	}
	return string(b)
}

// DomainName is the libvirt domain name of spec: Spec.Name (nova's
// instance-%08x) if set, else the instance uuid.
func DomainName(spec driver.Spec) string {
	if spec.Name != "" {
		return spec.Name
	}
	return spec.ID
}

// checkSpec validates what buildDomain relies on.
func checkSpec(spec driver.Spec) error {
	u, err := uuid.Parse(spec.ID)
	if err != nil || u.String() != spec.ID {
		return fmt.Errorf("id %q is not a uuid in canonical form", spec.ID)
	}
	if !validName(DomainName(spec)) {
		return fmt.Errorf("invalid domain name %q", DomainName(spec))
	}
	if !filepath.IsAbs(spec.Rootfs) {
		return fmt.Errorf("rootfs %q is not an absolute path", spec.Rootfs)
	}
	if spec.ConsoleLog != "" && !filepath.IsAbs(spec.ConsoleLog) {
		return fmt.Errorf("console log %q is not an absolute path", spec.ConsoleLog)
	}
	if spec.Init != "" && !strings.HasPrefix(spec.Init, "/") {
		return fmt.Errorf("init %q is not an absolute path", spec.Init)
	}
	if spec.MemoryMB < 0 || spec.VCPUs < 0 || spec.SwapMB < 0 || spec.CPUShares < 0 || spec.CPUPeriodUS < 0 {
		return fmt.Errorf("negative limits %+v", spec.Limits)
	}
	if spec.CPUQuotaUS < -1 {
		return fmt.Errorf("cpu quota %d: only -1 means unlimited", spec.CPUQuotaUS)
	}
	names := map[string]bool{}
	taps := map[string]bool{}
	for i, n := range spec.NICs {
		if n.Bridge == "" {
			return fmt.Errorf("nic %d: no bridge (libvirt plugs the tap into it)", i)
		}
		if n.Tap == "" || len(n.Tap) > 15 || strings.HasPrefix(n.Tap, "vnet") || strings.HasPrefix(n.Tap, "veth") {
			return fmt.Errorf("nic %d: invalid tap name %q (1-15 bytes; vnet*/veth* are libvirt's)", i, n.Tap)
		}
		if taps[n.Tap] {
			return fmt.Errorf("nic %d: duplicate tap %q", i, n.Tap)
		}
		taps[n.Tap] = true
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
	for _, m := range spec.IDMaps {
		if (m.Kind != 'u' && m.Kind != 'g') || m.ContainerID < 0 || m.HostID < 0 || m.Count <= 0 {
			return fmt.Errorf("invalid id map %+v", m)
		}
	}
	return nil
}

// validName: libvirt accepts almost anything but "/" (the name becomes file
// names under /etc/libvirt/lxc and /run/libvirt/lxc).
func validName(n string) bool {
	if n == "" || n == "." || n == ".." || len(n) > 200 {
		return false
	}
	for _, r := range n {
		if r == '/' || r <= ' ' || r == 0x7f {
			return false
		}
	}
	return true
}

func nicName(i int, n driver.NIC) string {
	if n.Name != "" {
		return n.Name
	}
	return "eth" + strconv.Itoa(i)
}

// buildDomain renders spec as the domain nova 26.2.2's libvirt driver
// defines for virt_type=lxc (wire-protocol.md §6.1), plus the lxc-agent
// marker in <metadata>, <ip>/<route> elements for the NICs' fixed addresses,
// <memtune> when the spec allows swap, and <features><privnet/> when there
// is no NIC. hostMemKiB is used for <memory>
// when the spec sets no memory limit (libvirt needs one).
func buildDomain(spec driver.Spec, hostMemKiB uint64) *libvirtxml.Domain {
	memKiB := uint64(spec.MemoryMB) * 1024
	if memKiB == 0 {
		memKiB = hostMemKiB
	}
	vcpus := uint(spec.VCPUs)
	if vcpus == 0 {
		vcpus = 1
	}
	initCmd := spec.Init
	if initCmd == "" {
		initCmd = defaultInit
	}
	d := &libvirtxml.Domain{
		Type:     "lxc",
		UUID:     strings.ToLower(spec.ID),
		Name:     DomainName(spec),
		Memory:   &libvirtxml.DomainMemory{Value: uint(memKiB)},
		VCPU:     &libvirtxml.DomainVCPU{Value: vcpus},
		Metadata: &libvirtxml.DomainMetadata{XML: markerXML(spec)},
		OS: &libvirtxml.DomainOS{
			Type:    &libvirtxml.DomainOSType{Type: "exe"},
			Cmdline: novaCmdline,
			Init:    initCmd,
			InitEnv: []libvirtxml.DomainOSInitEnv{{Name: "product_name", Value: novaProductName}},
		},
		Clock: &libvirtxml.DomainClock{Offset: "utc"},
		Devices: &libvirtxml.DomainDeviceList{
			Filesystems: []libvirtxml.DomainFilesystem{{
				Source: &libvirtxml.DomainFilesystemSource{Mount: &libvirtxml.DomainFilesystemSourceMount{Dir: spec.Rootfs}},
				Target: &libvirtxml.DomainFilesystemTarget{Dir: "/"},
			}},
			Controllers: []libvirtxml.DomainController{{Type: "usb", Index: new(uint), Model: "none"}},
		},
	}
	// Without an <interface>, libvirt-lxc leaves the container in the
	// host's network namespace (nova's XML for networks=none does that);
	// <privnet/> gives it one of its own with only lo, as go-lxc does.
	if len(spec.NICs) == 0 {
		d.Features = &libvirtxml.DomainFeatureList{PrivNet: &libvirtxml.DomainFeature{}}
	}
	// <cputune>: the quota:cpu_* extra specs as nova renders them, and, as
	// the go-lxc backend does (one behaviour for both backends), shares of
	// 1024 per vCPU and a bandwidth of VCPUs CPUs when the flavor sets none.
	period := spec.CPUPeriodUS
	if period == 0 {
		period = 100000
	}
	shares := spec.CPUShares
	if shares == 0 {
		shares = 1024 * int(vcpus)
	}
	quota := spec.CPUQuotaUS
	if quota == 0 && spec.VCPUs > 0 {
		quota = spec.VCPUs * period
	}
	ct := &libvirtxml.DomainCPUTune{Shares: &libvirtxml.DomainCPUTuneShares{Value: uint(shares)}}
	if spec.CPUPeriodUS > 0 || quota > 0 {
		ct.Period = &libvirtxml.DomainCPUTunePeriod{Value: uint64(period)}
	}
	if quota != 0 {
		ct.Quota = &libvirtxml.DomainCPUTuneQuota{Value: int64(quota)}
	}
	d.CPUTune = ct
	if spec.MemoryMB > 0 {
		// The memory limit, and no swap unless the spec allows some. (No
		// limit: <memory> is the host's, lifted at start, see Start.)
		d.MemoryTune = &libvirtxml.DomainMemoryTune{
			HardLimit:     &libvirtxml.DomainMemoryTuneLimit{Value: memKiB, Unit: "KiB"},
			SwapHardLimit: &libvirtxml.DomainMemoryTuneLimit{Value: memKiB + uint64(spec.SwapMB)*1024, Unit: "KiB"},
		}
	}
	if spec.IOWeight > 0 {
		d.BlockIOTune = &libvirtxml.DomainBlockIOTune{Weight: uint(spec.IOWeight)}
	}
	for i, n := range spec.NICs {
		d.Devices.Interfaces = append(d.Devices.Interfaces, nicInterface(i, n))
	}
	console := libvirtxml.DomainConsole{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}}}
	if spec.ConsoleLog != "" {
		console.Log = &libvirtxml.DomainChardevLog{File: spec.ConsoleLog, Append: "off"}
	}
	d.Devices.Consoles = []libvirtxml.DomainConsole{console}
	if len(spec.IDMaps) > 0 {
		m := &libvirtxml.DomainIDMap{}
		for _, r := range spec.IDMaps {
			rg := libvirtxml.DomainIDMapRange{Start: uint(r.ContainerID), Target: uint(r.HostID), Count: uint(r.Count)}
			if r.Kind == 'u' {
				m.UIDs = append(m.UIDs, rg)
			} else {
				m.GIDs = append(m.GIDs, rg)
			}
		}
		d.IDMap = m
	}
	return d
}

func defaultRoute(family string, any, gw netip.Addr) libvirtxml.DomainInterfaceRoute {
	return libvirtxml.DomainInterfaceRoute{Family: family, Address: any.String(), Prefix: 0, Gateway: gw.String()}
}

// DomainXML renders spec the way Create defines it (for inspection and
// tests). hostMemKiB stands in for <memory> when spec.MemoryMB is 0.
func DomainXML(spec driver.Spec, hostMemKiB uint64) (string, error) {
	if err := checkSpec(spec); err != nil {
		return "", err
	}
	return buildDomain(spec, hostMemKiB).Marshal()
}

// liveNIC is what the driver needs of an <interface> of a defined domain.
type liveNIC struct {
	Tap, MAC, Guest string
	MTU             int
}

// domainFacts are read back from a domain's XML.
type domainFacts struct {
	Name string
	Pids int // the marker's pids limit
	// Unlimited: the marker says the spec has no memory limit.
	Unlimited  bool
	ConsoleLog string
	ConsolePty string // live XML only
	MemoryKiB  uint64
	NICs       []liveNIC
}

func parseFacts(doc string) (domainFacts, error) {
	var d libvirtxml.Domain
	if err := d.Unmarshal(doc); err != nil {
		return domainFacts{}, fmt.Errorf("parse domain xml: %w", err)
	}
	f := domainFacts{Name: d.Name}
	if d.Metadata != nil {
		var m struct {
			Pids      int  `xml:"pids,attr"`
			Unlimited bool `xml:"unlimited-memory,attr"`
		}
		if xml.Unmarshal([]byte(d.Metadata.XML), &m) == nil {
			f.Pids, f.Unlimited = m.Pids, m.Unlimited
		}
	}
	if d.Memory != nil {
		f.MemoryKiB = uint64(d.Memory.Value)
		switch strings.ToLower(d.Memory.Unit) {
		case "", "k", "kib":
		case "b", "bytes":
			f.MemoryKiB /= 1024
		case "m", "mib":
			f.MemoryKiB *= 1024
		case "g", "gib":
			f.MemoryKiB *= 1024 * 1024
		}
	}
	if d.Devices == nil {
		return f, nil
	}
	for _, c := range d.Devices.Consoles {
		if c.Log != nil && f.ConsoleLog == "" {
			f.ConsoleLog = c.Log.File
		}
		if c.Source != nil && c.Source.Pty != nil && f.ConsolePty == "" {
			f.ConsolePty = c.Source.Pty.Path
		}
		if f.ConsolePty == "" && strings.HasPrefix(c.TTY, "/dev/pts/") {
			f.ConsolePty = c.TTY
		}
	}
	for i, n := range d.Devices.Interfaces {
		ln := liveNIC{Guest: "eth" + strconv.Itoa(i)}
		if n.Target != nil {
			ln.Tap = n.Target.Dev
		}
		if n.MAC != nil {
			ln.MAC = n.MAC.Address
		}
		if n.MTU != nil {
			ln.MTU = int(n.MTU.Size)
		}
		if n.Guest != nil && n.Guest.Dev != "" {
			ln.Guest = n.Guest.Dev
		}
		f.NICs = append(f.NICs, ln)
	}
	return f, nil
}

// nicInterface is the <interface type="bridge"> of the i-th NIC.
func nicInterface(i int, n driver.NIC) libvirtxml.DomainInterface {
	iface := libvirtxml.DomainInterface{
		Source: &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: n.Bridge}},
		Target: &libvirtxml.DomainInterfaceTarget{Dev: n.Tap},
	}
	if n.MAC != "" {
		iface.MAC = &libvirtxml.DomainInterfaceMAC{Address: strings.ToLower(n.MAC)}
	}
	if n.MTU > 0 {
		iface.MTU = &libvirtxml.DomainInterfaceMTU{Size: uint(n.MTU)}
	}
	if n.OVSInterfaceID != "" {
		// libvirt adds the tap to the OVS bridge with the external ids
		// (iface-id, attached-mac, iface-status, vm-id) and removes it.
		iface.VirtualPort = &libvirtxml.DomainInterfaceVirtualPort{Params: &libvirtxml.DomainInterfaceVirtualPortParams{
			OpenVSwitch: &libvirtxml.DomainInterfaceVirtualPortParamsOpenVSwitch{InterfaceID: n.OVSInterfaceID}}}
	}
	// libvirt names the container ends eth0, eth1, ... in order; only a
	// different name needs <guest dev>.
	if name := nicName(i, n); name != "eth"+strconv.Itoa(i) {
		iface.Guest = &libvirtxml.DomainInterfaceGuest{Dev: name}
	}
	for _, a := range n.Addrs {
		ip := libvirtxml.DomainInterfaceIP{Address: a.Addr().Unmap().String(), Prefix: uint(a.Bits())}
		if a.Addr().Is4In6() {
			ip.Prefix = uint(max(a.Bits()-96, 0))
		}
		if a.Addr().Unmap().Is4() {
			ip.Family = "ipv4"
		} else {
			ip.Family = "ipv6"
		}
		iface.IP = append(iface.IP, ip)
	}
	if n.Gateway4.IsValid() {
		iface.Route = append(iface.Route, defaultRoute("ipv4", netip.IPv4Unspecified(), n.Gateway4.Unmap()))
	}
	if n.Gateway6.IsValid() {
		iface.Route = append(iface.Route, defaultRoute("ipv6", netip.IPv6Unspecified(), n.Gateway6))
	}
	return iface
}

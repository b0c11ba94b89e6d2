package libvirtlxc_test

import (
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/driver/libvirtlxc"
)

// TestLibvirtDomainXMLOVS: a NIC with an OVS interface id is an
// <interface type="bridge"> on the OVS bridge with <virtualport
// type="openvswitch">, so libvirt adds its tap to OVS with the port's ids.
func TestLibvirtDomainXMLOVS(t *testing.T) {
	s := novaSpec()
	s.NICs = append(s.NICs, driver.NIC{Bridge: "br-int", Tap: "tapovs", MAC: "fa:16:3e:00:00:09",
		OVSInterfaceID: "8d2b0c1e-77aa-4f0e-b5d1-0a1b2c3d4e5f"})
	doc, err := libvirtlxc.DomainXML(s, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := `<virtualport type="openvswitch"><parameters interfaceid="8d2b0c1e-77aa-4f0e-b5d1-0a1b2c3d4e5f"></parameters></virtualport>`
	if !strings.Contains(strings.Join(strings.Fields(doc), ""), strings.Join(strings.Fields(want), "")) {
		t.Errorf("no openvswitch virtualport in\n%s", doc)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	ovs := d.Devices.Interfaces[len(d.Devices.Interfaces)-1]
	if ovs.Source == nil || ovs.Source.Bridge == nil || ovs.Source.Bridge.Bridge != "br-int" {
		t.Errorf("source = %+v, want bridge br-int", ovs.Source)
	}
	if ovs.VirtualPort == nil || ovs.VirtualPort.Params == nil || ovs.VirtualPort.Params.OpenVSwitch == nil ||
		ovs.VirtualPort.Params.OpenVSwitch.InterfaceID != "8d2b0c1e-77aa-4f0e-b5d1-0a1b2c3d4e5f" {
		t.Errorf("virtualport = %+v", ovs.VirtualPort)
	}
	if first := d.Devices.Interfaces[0]; first.VirtualPort != nil {
		t.Errorf("linuxbridge NIC got a virtualport: %+v", first.VirtualPort)
	}
}

package compute

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lxc-agent/lxc-agent/pkg/driver/fake"
)

// ovsVIF is oneVIF as neutron's openvswitch mechanism driver binds it.
func ovsVIFJSON(hybrid bool) string {
	nw := strings.Replace(oneVIF, `"type": "bridge"`, `"type": "ovs", "ovs_interfaceid": "3f5c6b2a-9d1e-4c4b-8a7f-1234567890ab"`, 1)
	nw = strings.Replace(nw, `"bridge": "brqb1c2d3e4-f5"`, `"bridge": "br-int"`, 1)
	details := `"details": {"port_filter": true, "datapath_type": "netdev", "ovs_hybrid_plug": false, "connectivity": "l2"},`
	if hybrid {
		details = strings.Replace(details, `"ovs_hybrid_plug": false`, `"ovs_hybrid_plug": true`, 1)
	}
	return strings.Replace(nw, `"devname":`, details+` "devname":`, 1)
}

const ovsPort = "3f5c6b2a-9d1e-4c4b-8a7f-1234567890ab"

// TestBuildOVSVIF: an "ovs" VIF reaches the plugger as a port of br-int
// with the instance uuid, hybrid flag and datapath, is recorded so, and is
// unplugged as one on terminate.
func TestBuildOVSVIF(t *testing.T) {
	for _, hybrid := range []bool{false, true} {
		h := newHarness(t)
		if _, err := h.call(t, "build_and_run_instance", map[string]any{
			"instance": instancePrimitive(t, testUUID, 0, ovsVIFJSON(hybrid)), "image": map[string]string{"id": "img1"}}); err != nil {
			t.Fatalf("hybrid=%v: %v", hybrid, err)
		}
		ps, ok := h.net.plugged["tap3f5c6b2a-9d"]
		want := PlugSpec{PortID: ovsPort, MAC: "fa:16:3e:12:34:56", Bridge: "br-int", Tap: "tap3f5c6b2a-9d", MTU: 1450,
			Kind: VIFKindOVS, Hybrid: hybrid, Datapath: "netdev", InstanceUUID: testUUID}
		if !ok || ps != want {
			t.Errorf("hybrid=%v: plugged %+v, want %+v", hybrid, ps, want)
		}
		spec, err := h.drv.Spec(testUUID)
		if err != nil {
			t.Fatal(err)
		}
		nic := spec.NICs[0]
		if nic.HostDev != "tin3f5c6b2a-9d" || nic.MAC != "fa:16:3e:12:34:56" || nic.MTU != 1450 {
			t.Errorf("hybrid=%v: nic %+v", hybrid, nic)
		}
		// What a backend that makes its own tap joins.
		if hybrid && (nic.Bridge != "qbr3f5c6b2a-9d" || nic.OVSInterfaceID != "") {
			t.Errorf("hybrid nic bridge %q ovs id %q, want qbr…, none", nic.Bridge, nic.OVSInterfaceID)
		}
		if !hybrid && (nic.Bridge != "br-int" || nic.OVSInterfaceID != ovsPort) {
			t.Errorf("plain nic bridge %q ovs id %q, want br-int and the port", nic.Bridge, nic.OVSInterfaceID)
		}
		rec, _ := h.m.store.Get(testUUID)
		if v := rec.VIFs[0]; v.Kind != VIFKindOVS || v.Hybrid != hybrid || v.Datapath != "netdev" || v.InstanceUUID != testUUID || v.Bridge != "br-int" {
			t.Errorf("hybrid=%v: record %+v", hybrid, v)
		}
		// A rebuild's model VIF keeps the binding.
		if mv := rec.VIFs[0].modelVIF(); mv.Type != "ovs" || mv.Details["ovs_hybrid_plug"] != hybrid || mv.Details["datapath_type"] != "netdev" {
			t.Errorf("model vif %+v", mv)
		}
		if _, err := h.call(t, "terminate_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 1, "")}); err != nil {
			t.Fatal(err)
		}
		if len(h.net.plugged) != 0 {
			t.Errorf("left plugged %v", h.net.plugged)
		}
	}
}

// recordingNet records the specs Unplug gets.
type recordingNet struct {
	*fakeNet
	unplugged []PlugSpec
}

func (r *recordingNet) Unplug(ctx context.Context, v PlugSpec) error {
	r.unplugged = append(r.unplugged, v)
	return r.fakeNet.Unplug(ctx, v)
}

// TestTerminateOVSWithoutRecord: the VIFs derived from network_info alone
// are unplugged as OVS ports too.
func TestTerminateOVSWithoutRecord(t *testing.T) {
	h := newHarness(t)
	rn := &recordingNet{fakeNet: h.net}
	h.m.net = rn
	if _, err := h.call(t, "terminate_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 1, ovsVIFJSON(true))}); err != nil {
		t.Fatal(err)
	}
	if len(rn.unplugged) != 1 || rn.unplugged[0].Kind != VIFKindOVS || rn.unplugged[0].Tap != "tap3f5c6b2a-9d" {
		t.Errorf("unplugged %+v", rn.unplugged)
	}
}

// nicPlugging is the fake driver as a backend that makes the veth itself.
type nicPlugging struct{ *fake.Driver }

func (nicPlugging) PlugsNICs() bool { return true }

// TestOVSWithNICPluggingBackend: with libvirt-lxc's kind of backend the
// plugger only prepares what the backend's tap joins (NoTap), not a linux
// bridge named br-int.
func TestOVSWithNICPluggingBackend(t *testing.T) {
	h := newHarness(t)
	m, err := New(Config{Host: "h1", InstancesPath: filepath.Join(h.root, "i2"), FaultsDir: filepath.Join(h.root, "f2")},
		Deps{Driver: nicPlugging{h.drv}, Images: h.img, Rootfs: h.fs, Net: h.net})
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	if _, err := h.call(t, "build_and_run_instance", map[string]any{
		"instance": instancePrimitive(t, testUUID, 0, ovsVIFJSON(false)), "image": map[string]string{"id": "img1"}}); err != nil {
		t.Fatal(err)
	}
	ps, ok := h.net.plugged["tap3f5c6b2a-9d"]
	if !ok || !ps.NoTap || ps.Kind != VIFKindOVS || ps.Bridge != "br-int" {
		t.Errorf("plugged %+v, want an OVS spec with NoTap", ps)
	}
	spec, _ := h.drv.Spec(testUUID)
	if nic := spec.NICs[0]; nic.HostDev != "" || nic.OVSInterfaceID != ovsPort || nic.Tap != "tap3f5c6b2a-9d" {
		t.Errorf("nic %+v", nic)
	}
}

package netplug

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/lxc-agent/lxc-agent/internal/testenv"
)

const testInstance = "0b7e2f6c-5d4a-4e3b-9c2d-1a0f9e8d7c6b"

// ovsVIF is testVIF(i) as a port of br-int.
func ovsVIF(i int, hybrid bool, datapath string, mtu int) VIF {
	v := testVIF(i, "br-int", mtu)
	v.OVS = &OVSPort{InstanceUUID: testInstance, Hybrid: hybrid, DatapathType: datapath}
	return v
}

func TestHybridNames(t *testing.T) {
	qbr, qvb, qvo := HybridNames(testPort)
	if qbr != "qbr8d2b0c1e-77" || qvb != "qvb8d2b0c1e-77" || qvo != "qvo8d2b0c1e-77" {
		t.Errorf("HybridNames = %s %s %s", qbr, qvb, qvo)
	}
	// From the tap's name alone (Unplug with only DevName): the same.
	v := VIF{DevName: TapName(testPort)}
	if a, b, c := v.hybridNames(); a != qbr || b != qvb || c != qvo {
		t.Errorf("hybridNames(devname) = %s %s %s", a, b, c)
	}
}

func TestValidateOVS(t *testing.T) {
	good := ovsVIF(1, true, "netdev", 1450)
	if _, err := good.validate(); err != nil {
		t.Fatalf("good vif: %v", err)
	}
	bad := map[string]func(v *VIF){
		"iface-id with space": func(v *VIF) { v.OVS.InterfaceID = "a b" },
		"iface-id with quote": func(v *VIF) { v.OVS.InterfaceID = `a"b` },
		"port id with comma":  func(v *VIF) { v.ID = "a,b" },
		"vm-uuid with brace":  func(v *VIF) { v.OVS.InstanceUUID = "{x}" },
		"datapath with =":     func(v *VIF) { v.OVS.DatapathType = "netdev=1" },
		"bridge is qbr":       func(v *VIF) { v.Bridge, _, _ = v.hybridNames() },
		"port id with slash":  func(v *VIF) { v.ID = "a/b" },
	}
	for name, mutate := range bad {
		v := good
		o := *good.OVS
		v.OVS = &o
		mutate(&v)
		if _, err := v.validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", name, err)
		}
	}
}

func TestOVSPortArgs(t *testing.T) {
	v := ovsVIF(1, false, "", 0)
	mac, _ := net.ParseMAC("FA:16:3E:00:00:01")
	_, _, qvo := v.hybridNames()
	got := strings.Join(ovsPortArgs(v, mac, v.DevName, false), " ")
	want := "-- --may-exist add-br br-int -- --if-exists del-port " + qvo + " -- --may-exist add-port br-int " + v.DevName +
		" -- set Interface " + v.DevName + " external-ids:iface-id=" + v.ID +
		" external-ids:iface-status=active external-ids:attached-mac=fa:16:3e:00:00:01 external-ids:vm-uuid=" + testInstance
	if got != want {
		t.Errorf("args\n got %s\nwant %s", got, want)
	}
	v.OVS.DatapathType = "netdev"
	v.OVS.InterfaceID = "other-id"
	v.OVS.InstanceUUID = ""
	got = strings.Join(ovsPortArgs(v, mac, "qvoX", true), " ")
	want = "-- --may-exist add-br br-int -- set Bridge br-int datapath_type=netdev" +
		" -- --if-exists del-port " + v.DevName + " -- --if-exists del-port qvoX -- add-port br-int qvoX" +
		" -- set Interface qvoX external-ids:iface-id=other-id external-ids:iface-status=active external-ids:attached-mac=fa:16:3e:00:00:01"
	if got != want {
		t.Errorf("replace args\n got %s\nwant %s", got, want)
	}
}

// fakeVsctl writes a script standing in for ovs-vsctl: it appends its
// arguments to a file, then runs body.
func fakeVsctl(t *testing.T, body string) (prog, argsFile string) {
	t.Helper()
	dir := t.TempDir()
	prog = filepath.Join(dir, "ovs-vsctl")
	argsFile = filepath.Join(dir, "args")
	script := "#!/bin/sh\necho \"$*\" >> " + argsFile + "\n" + body + "\n"
	if err := os.WriteFile(prog, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return prog, argsFile
}

func TestVsctl(t *testing.T) {
	prog, args := fakeVsctl(t, `case "$*" in
*fail*) echo "ovs-vsctl: no bridge named x" >&2; exit 1;;
*elsewhere*) echo "ovs-vsctl: cannot create a port named p because a port named p already exists on bridge br-x" >&2; exit 1;;
*setup*) echo "ovs-vsctl: Error detected while setting up 'p'.  See ovs-vswitchd log for details." >&2;;
*sleep*) exec sleep 5;;
esac
echo out`)
	p := New(nil, WithOVS(OVSConfig{Vsctl: prog, DB: "unix:/nonexistent/db.sock", Timeout: 7 * time.Second}))
	ctx := t.Context()
	if out, err := p.vsctl(ctx, "show"); err != nil || out != "out\n" {
		t.Fatalf("vsctl show = %q, %v", out, err)
	}
	_, err := p.vsctl(ctx, "fail")
	if !errors.Is(err, ErrOVS) || !strings.Contains(err.Error(), "no bridge named x") || errors.Is(err, errPortElsewhere) {
		t.Errorf("failing call: %v", err)
	}
	if _, err := p.vsctl(ctx, "elsewhere"); !errors.Is(err, errPortElsewhere) || !errors.Is(err, ErrOVS) {
		t.Errorf("port elsewhere: %v", err)
	}
	if _, err := p.vsctl(ctx, "setup"); !errors.Is(err, ErrOVS) {
		t.Errorf("setup error on stderr with exit 0: %v", err)
	}
	// The context's deadline caps --timeout and ends a hung call.
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := p.vsctl(dctx, "sleep"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hung call: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("hung call took %v", d)
	}
	b, err := os.ReadFile(args)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if lines[0] != "--timeout=7 --db=unix:/nonexistent/db.sock show" {
		t.Errorf("first call %q", lines[0])
	}
	if last := lines[len(lines)-1]; last != "--timeout=1 --db=unix:/nonexistent/db.sock sleep" {
		t.Errorf("call under a 300ms deadline %q", last)
	}
	// Defaults: 120 s, no --db.
	p = New(nil, WithOVS(OVSConfig{Vsctl: prog}))
	if _, err := p.vsctl(ctx, "show"); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(args)
	lines = strings.Split(strings.TrimSpace(string(b)), "\n")
	if last := lines[len(lines)-1]; last != "--timeout=120 show" {
		t.Errorf("default call %q", last)
	}
	// A missing program is an ErrOVS too.
	p = New(nil, WithOVS(OVSConfig{Vsctl: filepath.Join(t.TempDir(), "none")}))
	if _, err := p.vsctl(ctx, "show"); !errors.Is(err, ErrOVS) {
		t.Errorf("missing ovs-vsctl: %v", err)
	}
}

// TestOVSUnplugVsctlFails: devices go even when OVSDB is unreachable, and
// the error says so. No OVS needed.
func TestOVSUnplugVsctlFails(t *testing.T) {
	ns, h := detachedNS(t)
	prog, _ := fakeVsctl(t, `echo "ovs-vsctl: unix:/x: database connection failed" >&2; exit 1`)
	p, err := NewInNamespace(nil, ns, WithOVS(OVSConfig{Vsctl: prog}))
	must(t, err)
	t.Cleanup(func() { _ = p.Close() })
	v := ovsVIF(1, false, "", 0)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = v.DevName
	must(t, h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: PeerName(v.DevName)}))
	if err := p.Unplug(t.Context(), v); !errors.Is(err, ErrOVS) {
		t.Errorf("Unplug = %v, want ErrOVS", err)
	}
	mustNotExist(t, h, v.DevName, PeerName(v.DevName))
}

// privateOVS is testenv's private Open vSwitch with ovs-vswitchd in the
// test's network namespace (the host's OVS, if any, is not touched).
type privateOVS struct {
	db string // ovs-vsctl --db
	// datapath is what bridges need here: "" (the kernel's) or "netdev".
	datapath string
}

func startOVS(t testing.TB, ns netns.NsHandle) *privateOVS {
	t.Helper()
	o := testenv.OVSWith(t, func(start func() error) error { return runInNS(ns, start) })
	return &privateOVS{db: o.DB, datapath: o.Datapath}
}

// vsctl runs ovs-vsctl against the private database, read-only queries.
func (o *privateOVS) vsctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("ovs-vsctl", append([]string{"--timeout=10", "--db=" + o.db}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ovs-vsctl %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// ports lists the ports of bridge, its own internal port left out.
func (o *privateOVS) ports(t testing.TB, bridge string) []string {
	t.Helper()
	out := o.vsctl(t, "list-ports", bridge)
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

// get reads one column (or map key) of a record, unquoted.
func (o *privateOVS) get(t testing.TB, table, record, column string) string {
	t.Helper()
	v := o.vsctl(t, "get", table, record, column)
	if u, err := strconv.Unquote(v); err == nil {
		return u
	}
	return v
}

// interfaces lists every Interface row's name.
func (o *privateOVS) interfaces(t testing.TB) []string {
	t.Helper()
	out := o.vsctl(t, "--bare", "--columns=name", "list", "Interface")
	names := strings.Fields(out)
	slices.Sort(names)
	return names
}

func (o *privateOVS) plugger(t testing.TB, ns netns.NsHandle) *Plugger {
	t.Helper()
	p, err := NewInNamespace(nil, ns, WithOVS(OVSConfig{DB: o.db, Timeout: 20 * time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// checkOVSPort verifies that port is a working port of vif's bridge with
// os-vif's external ids.
func (o *privateOVS) checkOVSPort(t testing.TB, vif VIF, port string) {
	t.Helper()
	if got := o.vsctl(t, "port-to-br", port); got != vif.Bridge {
		t.Errorf("port %s on bridge %q, want %s", port, got, vif.Bridge)
	}
	want := map[string]string{"iface-id": vif.ID, "iface-status": "active", "attached-mac": vif.MAC, "vm-uuid": testInstance}
	for k, v := range want {
		if got := o.get(t, "Interface", port, "external_ids:"+k); got != v {
			t.Errorf("%s external_ids:%s = %q, want %q", port, k, got, v)
		}
	}
	if ofport := o.get(t, "Interface", port, "ofport"); ofport == "-1" || ofport == "[]" {
		t.Errorf("%s ofport %s: ovs-vswitchd did not set it up (error %s)", port, ofport, o.get(t, "Interface", port, "error"))
	}
	if e := o.get(t, "Interface", port, "error"); e != "[]" {
		t.Errorf("%s error %s", port, e)
	}
}

// checkOVSPair verifies the tap/tin pair of a plain OVS plug.
func checkOVSPair(t *testing.T, h *netlink.Handle, vif VIF, mtu int) (tap, peer netlink.Link) {
	t.Helper()
	tap, err := h.LinkByName(vif.DevName)
	if err != nil {
		t.Fatalf("tap %s: %v", vif.DevName, err)
	}
	peer, err = h.LinkByName(PeerName(vif.DevName))
	if err != nil {
		t.Fatalf("peer: %v", err)
	}
	ta, pa := tap.Attrs(), peer.Attrs()
	if tap.Type() != "veth" || ta.ParentIndex != pa.Index {
		t.Errorf("tap %s (%s) not paired with %s", ta.Name, tap.Type(), pa.Name)
	}
	if ta.MasterIndex != 0 {
		if m, _ := h.LinkByIndex(ta.MasterIndex); m != nil && m.Type() == "bridge" {
			t.Errorf("tap in linux bridge %s", m.Attrs().Name)
		}
	}
	if ta.MTU != mtu || pa.MTU != mtu {
		t.Errorf("mtu tap %d peer %d, want %d", ta.MTU, pa.MTU, mtu)
	}
	if pa.HardwareAddr.String() != vif.MAC || ta.HardwareAddr.String() != "fe"+vif.MAC[2:] {
		t.Errorf("mac tap %s peer %s", ta.HardwareAddr, pa.HardwareAddr)
	}
	if ta.Flags&net.FlagUp == 0 || pa.Flags&net.FlagUp == 0 {
		t.Errorf("tap or peer down")
	}
	return tap, peer
}

// TestOVSPlug plugs a VIF into br-int the plain way, again, unplugs it.
func TestOVSPlug(t *testing.T) {
	ctx := t.Context()
	ns, h := detachedNS(t)
	o := startOVS(t, ns)
	t.Logf("datapath %q (kernel openvswitch module: %v)", o.datapath, o.datapath == "")
	p := o.plugger(t, ns)
	vif := ovsVIF(1, false, o.datapath, 1450)

	peer, err := p.Plug(ctx, vif)
	if err != nil {
		t.Fatal(err)
	}
	if peer != PeerName(vif.DevName) {
		t.Errorf("peer %q", peer)
	}
	tap1, peer1 := checkOVSPair(t, h, vif, 1450)
	if ok, err := p.Attached(ctx, vif); !ok || err != nil {
		t.Errorf("Attached = %v, %v", ok, err)
	}
	if got := o.ports(t, "br-int"); !slices.Equal(got, []string{vif.DevName}) {
		t.Errorf("br-int ports %v, want [%s]", got, vif.DevName)
	}
	o.checkOVSPort(t, vif, vif.DevName)
	if o.datapath != "" {
		if got := o.get(t, "Bridge", "br-int", "datapath_type"); got != o.datapath {
			t.Errorf("datapath_type %q", got)
		}
	}
	uuid := o.get(t, "Interface", vif.DevName, "_uuid")
	var v6 string
	must(t, runInNS(ns, func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + vif.DevName + "/disable_ipv6")
		v6 = strings.TrimSpace(string(b))
		return err
	}))
	if v6 != "1" {
		t.Errorf("tap disable_ipv6 = %s", v6)
	}

	// Idempotent: same devices, same Interface row.
	if _, err := p.Plug(ctx, vif); err != nil {
		t.Fatalf("second plug: %v", err)
	}
	tap2, peer2 := checkOVSPair(t, h, vif, 1450)
	if tap1.Attrs().Index != tap2.Attrs().Index || peer1.Attrs().Index != peer2.Attrs().Index {
		t.Errorf("second plug re-created the pair")
	}
	if got := o.get(t, "Interface", vif.DevName, "_uuid"); got != uuid {
		t.Errorf("second plug re-created the Interface: %s, was %s", got, uuid)
	}
	o.checkOVSPort(t, vif, vif.DevName)

	// Drift is repaired: MTU, down, a stray linux bridge master.
	must(t, h.LinkSetMTU(tap2, 1300))
	must(t, h.LinkSetDown(peer2))
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "brqstray"
	must(t, h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}))
	must(t, h.LinkSetMasterByIndex(tap2, mustLink(t, h, "brqstray").Attrs().Index))
	if _, err := p.Plug(ctx, vif); err != nil {
		t.Fatalf("repairing plug: %v", err)
	}
	checkOVSPair(t, h, vif, 1450)
	must(t, h.LinkDel(mustLink(t, h, "brqstray")))

	if err := p.Unplug(ctx, vif); err != nil {
		t.Fatal(err)
	}
	if got := o.ports(t, "br-int"); len(got) != 0 {
		t.Errorf("br-int ports after unplug %v", got)
	}
	if got := o.interfaces(t); !slices.Equal(got, []string{"br-int"}) {
		t.Errorf("interfaces after unplug %v, want [br-int]", got)
	}
	mustNotExist(t, h, vif.DevName, PeerName(vif.DevName))
	if ok, err := p.Attached(ctx, vif); ok || err != nil {
		t.Errorf("Attached after unplug = %v, %v", ok, err)
	}
	if err := p.Unplug(ctx, vif); err != nil {
		t.Errorf("second unplug: %v", err)
	}
	// Only DevName (and the OVS mark) are needed.
	if _, err := p.Plug(ctx, vif); err != nil {
		t.Fatal(err)
	}
	if err := p.Unplug(ctx, VIF{DevName: vif.DevName, OVS: &OVSPort{}}); err != nil {
		t.Fatal(err)
	}
	if got := o.ports(t, "br-int"); len(got) != 0 {
		t.Errorf("br-int ports after unplug by name %v", got)
	}
	assertOnlyOVSDevices(t, h)
}

func mustLink(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// assertOnlyOVSDevices checks that the namespace holds nothing but what
// ovs-vswitchd made: br-int's internal port and the userspace datapath's
// ovs-netdev (or, with the kernel datapath, ovs-system).
func assertOnlyOVSDevices(t *testing.T, h *netlink.Handle) {
	t.Helper()
	for _, n := range linkNames(t, h) {
		if n != "br-int" && n != "ovs-netdev" && n != "ovs-system" {
			t.Errorf("device %s left behind", n)
		}
	}
}

// TestOVSHybridPlug: qbr… with the tap and qvb…, qvo… in br-int.
func TestOVSHybridPlug(t *testing.T) {
	ctx := t.Context()
	ns, h := detachedNS(t)
	o := startOVS(t, ns)
	p := o.plugger(t, ns)
	vif := ovsVIF(1, true, o.datapath, 1450)
	qbr, qvb, qvo := HybridNames(vif.ID)

	for i := range 2 { // the second is the idempotent path
		if _, err := p.Plug(ctx, vif); err != nil {
			t.Fatalf("plug %d: %v", i, err)
		}
		vb := vif
		vb.Bridge = qbr
		checkPlugged(t, h, vb, 1450, 1450) // tap in qbr, tin peer
		br := mustLink(t, h, qbr).(*netlink.Bridge)
		if br.MulticastSnooping == nil || *br.MulticastSnooping {
			t.Errorf("qbr multicast snooping on")
		}
		b, c := mustLink(t, h, qvb), mustLink(t, h, qvo)
		if b.Attrs().MasterIndex != br.Attrs().Index {
			t.Errorf("qvb not in qbr")
		}
		if b.Attrs().ParentIndex != c.Attrs().Index || b.Type() != "veth" {
			t.Errorf("qvb/qvo not a veth pair")
		}
		for _, l := range []netlink.Link{b, c} {
			a := l.Attrs()
			if a.MTU != 1450 || a.Flags&net.FlagUp == 0 || a.Promisc == 0 {
				t.Errorf("%s mtu %d up %v promisc %d", a.Name, a.MTU, a.Flags&net.FlagUp != 0, a.Promisc)
			}
		}
		if got := o.ports(t, "br-int"); !slices.Equal(got, []string{qvo}) {
			t.Errorf("br-int ports %v, want [%s]", got, qvo)
		}
		o.checkOVSPort(t, vif, qvo)
		if ok, err := p.Attached(ctx, vif); !ok || err != nil {
			t.Errorf("Attached = %v, %v", ok, err)
		}
	}
	// The OVS port gone (say, br-int re-created): not attached.
	o.vsctl(t, "del-port", qvo)
	if ok, err := p.Attached(ctx, vif); ok || err != nil {
		t.Errorf("Attached without the qvo port = %v, %v", ok, err)
	}
	if err := p.Unplug(ctx, vif); err != nil {
		t.Fatal(err)
	}
	if got := o.interfaces(t); !slices.Equal(got, []string{"br-int"}) {
		t.Errorf("interfaces after unplug %v", got)
	}
	mustNotExist(t, h, vif.DevName, PeerName(vif.DevName), qbr, qvb, qvo)
	assertOnlyOVSDevices(t, h)
}

// TestOVSSwitchPlugStyle: a VIF plugged hybrid then plain then hybrid
// again (its binding changed) has one layout and one port each time.
func TestOVSSwitchPlugStyle(t *testing.T) {
	ctx := t.Context()
	ns, h := detachedNS(t)
	o := startOVS(t, ns)
	p := o.plugger(t, ns)
	hy, plain := ovsVIF(1, true, o.datapath, 0), ovsVIF(1, false, o.datapath, 0)
	qbr, qvb, qvo := HybridNames(hy.ID)
	if _, err := p.Plug(ctx, hy); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Plug(ctx, plain); err != nil {
		t.Fatal(err)
	}
	checkOVSPair(t, h, plain, 1500)
	o.checkOVSPort(t, plain, plain.DevName)
	if got := o.ports(t, "br-int"); !slices.Equal(got, []string{plain.DevName}) {
		t.Errorf("ports after plain plug %v", got)
	}
	mustNotExist(t, h, qbr, qvb, qvo)

	if _, err := p.Plug(ctx, hy); err != nil {
		t.Fatal(err)
	}
	vb := hy
	vb.Bridge = qbr
	checkPlugged(t, h, vb, 1500, 1500)
	o.checkOVSPort(t, hy, qvo)
	if got := o.ports(t, "br-int"); !slices.Equal(got, []string{qvo}) {
		t.Errorf("ports after hybrid plug %v", got)
	}
	// A plain Unplug also removes a hybrid plug, like os-vif's.
	if err := p.Unplug(ctx, plain); err != nil {
		t.Fatal(err)
	}
	if got := o.interfaces(t); !slices.Equal(got, []string{"br-int"}) {
		t.Errorf("interfaces after unplug %v", got)
	}
	assertOnlyOVSDevices(t, h)
}

// TestOVSForwards: br-int (NORMAL action) floods one container's
// broadcast frames to the other's, on whichever datapath works here.
func TestOVSForwards(t *testing.T) {
	ctx := t.Context()
	ns, h := detachedNS(t)
	o := startOVS(t, ns)
	p := o.plugger(t, ns)
	a, b := ovsVIF(1, false, o.datapath, 0), ovsVIF(2, true, o.datapath, 0)
	for _, v := range []VIF{a, b} {
		if _, err := p.Plug(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	peerA := mustLink(t, h, PeerName(a.DevName))
	b0 := counters(t, p, b.DevName)
	const frames = 20
	must(t, runInNS(ns, func() error {
		return sendFramesErr(peerA.Attrs().Index, peerA.Attrs().HardwareAddr, frames, 100)
	}))
	// ovs-vswitchd forwards asynchronously.
	deadline := time.Now().Add(5 * time.Second)
	for {
		d := counters(t, p, b.DevName).RxPackets - b0.RxPackets
		if d >= frames {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container b received %d of %d frames through br-int", d, frames)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sendFramesErr is sendFrames for goroutines other than the test's.
func sendFramesErr(ifindex int, src net.HardwareAddr, n, size int) error {
	const ethType = 0x88b5
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(ethType)))
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	frame := make([]byte, size)
	copy(frame[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(frame[6:12], src)
	frame[12], frame[13] = ethType>>8, ethType&0xff
	sa := &unix.SockaddrLinklayer{Ifindex: ifindex, Protocol: htons(ethType)}
	for range n {
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
	return nil
}

// TestOVSPortOnOtherBridge: a port of the tap's name on another OVS bridge
// is moved to br-int.
func TestOVSPortOnOtherBridge(t *testing.T) {
	ctx := t.Context()
	ns, h := detachedNS(t)
	o := startOVS(t, ns)
	p := o.plugger(t, ns)
	vif := ovsVIF(1, false, o.datapath, 0)
	other := vif
	other.Bridge = "br-other"
	if _, err := p.Plug(ctx, other); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Plug(ctx, vif); err != nil {
		t.Fatal(err)
	}
	o.checkOVSPort(t, vif, vif.DevName)
	if got := o.ports(t, "br-other"); len(got) != 0 {
		t.Errorf("br-other ports %v", got)
	}
	must(t, p.Unplug(ctx, vif))
	o.vsctl(t, "del-br", "br-other")
	assertOnlyOVSDevices(t, h)
}

// TestPrepareOVS: for a backend that makes its own tap, only the bridges
// (and the hybrid link) are made.
func TestPrepareOVS(t *testing.T) {
	ctx := t.Context()
	ns, h := detachedNS(t)
	o := startOVS(t, ns)
	p := o.plugger(t, ns)

	plain := ovsVIF(1, false, o.datapath, 1400)
	br, err := p.PrepareOVS(ctx, plain)
	if err != nil || br != "br-int" {
		t.Fatalf("PrepareOVS = %q, %v", br, err)
	}
	if got := o.ports(t, "br-int"); len(got) != 0 {
		t.Errorf("ports %v after preparing a plain vif", got)
	}
	mustNotExist(t, h, plain.DevName, PeerName(plain.DevName))

	hy := ovsVIF(2, true, o.datapath, 1400)
	qbr, qvb, qvo := HybridNames(hy.ID)
	br, err = p.PrepareOVS(ctx, hy)
	if err != nil || br != qbr {
		t.Fatalf("PrepareOVS(hybrid) = %q, %v", br, err)
	}
	mustLink(t, h, qvb)
	o.checkOVSPort(t, hy, qvo)
	mustNotExist(t, h, hy.DevName, PeerName(hy.DevName))
	must(t, p.Unplug(ctx, hy))
	mustNotExist(t, h, qbr, qvb, qvo)
	if _, err := p.PrepareOVS(ctx, testVIF(3, "br-int", 0)); !errors.Is(err, ErrInvalid) {
		t.Errorf("PrepareOVS(linuxbridge vif) = %v", err)
	}
	assertOnlyOVSDevices(t, h)
}

// TestOVSPeerInContainer: once the tin is in the container, Plug keeps the
// pair and the port, Unplug removes both sides.
func TestOVSPeerInContainer(t *testing.T) {
	ctx := t.Context()
	ns, h := detachedNS(t)
	ctrNS, ch := detachedNS(t)
	o := startOVS(t, ns)
	p := o.plugger(t, ns)
	vif := ovsVIF(1, false, o.datapath, 0)
	peerName, err := p.Plug(ctx, vif)
	must(t, err)
	tap, peer := checkOVSPair(t, h, vif, 1500)
	must(t, h.LinkSetNsFd(peer, int(ctrNS)))
	if _, err := p.Plug(ctx, vif); err != nil {
		t.Fatal(err)
	}
	if mustLink(t, h, vif.DevName).Attrs().Index != tap.Attrs().Index {
		t.Errorf("tap re-created while its peer was in the container")
	}
	if _, err := ch.LinkByName(peerName); err != nil {
		t.Errorf("peer in container lost: %v", err)
	}
	o.checkOVSPort(t, vif, vif.DevName)
	must(t, p.Unplug(ctx, vif))
	mustNotExist(t, ch, peerName)
	assertOnlyOVSDevices(t, h)
}

// TestOVSUnreachableVswitchd: a bridge ovs-vswitchd cannot make (the
// kernel datapath without the module) fails the plug instead of leaving a
// dead port. Only meaningful without the openvswitch module.
func TestOVSUnreachableDatapath(t *testing.T) {
	ns, _ := detachedNS(t)
	o := startOVS(t, ns)
	if o.datapath == "" {
		t.Skip("the kernel has the openvswitch module: system bridges work")
	}
	p := o.plugger(t, ns)
	vif := ovsVIF(1, false, "system", 0)
	vif.Bridge = "br-sys"
	_, err := p.Plug(t.Context(), vif)
	if !errors.Is(err, ErrOVS) || !strings.Contains(err.Error(), "Error detected while setting up") {
		t.Errorf("plug into a system bridge without the module: %v", err)
	}
	must(t, p.Unplug(t.Context(), vif))
}

// BenchmarkOVSPlugUnplug plugs and unplugs one VIF into br-int, plain and
// hybrid, against a private OVS; compare BenchmarkPlugUnplug (linuxbridge).
func BenchmarkOVSPlugUnplug(b *testing.B) {
	for _, hybrid := range []bool{false, true} {
		b.Run(fmt.Sprintf("hybrid=%v", hybrid), func(b *testing.B) {
			ns, _ := detachedNS(b)
			o := startOVS(b, ns)
			p, err := NewInNamespace(nil, ns, WithOVS(OVSConfig{DB: o.db}))
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			ctx := b.Context()
			vif := ovsVIF(0, hybrid, o.datapath, 1450)
			if _, err := p.Plug(ctx, vif); err != nil { // makes br-int
				b.Fatal(err)
			}
			must2(b, p.Unplug(ctx, vif))
			for b.Loop() {
				if _, err := p.Plug(ctx, vif); err != nil {
					b.Fatal(err)
				}
				must2(b, p.Unplug(ctx, vif))
			}
		})
	}
}

func must2(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

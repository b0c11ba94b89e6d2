package netplug

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	testNet  = "3f5c6b2a-9d1e-4c7b-8a60-1b2c3d4e5f60"
	testPort = "8d2b0c1e-77aa-4f0e-b5d1-0a1b2c3d4e5f"
)

// testVIF is the i-th port on bridge br.
func testVIF(i int, br string, mtu int) VIF {
	id := fmt.Sprintf("%04x%04x-77aa-4f0e-b5d1-0a1b2c3d4e5f", i, i)
	return VIF{
		ID:      id,
		MAC:     fmt.Sprintf("fa:16:3e:%02x:%02x:%02x", byte(i>>16), byte(i>>8), byte(i)),
		Bridge:  br,
		DevName: TapName(id),
		MTU:     mtu,
	}
}

// checkPlugged verifies, through h, everything Plug promises for vif.
func checkPlugged(t *testing.T, h *netlink.Handle, vif VIF, brMTU, peerMTU int) (tap, peer netlink.Link) {
	t.Helper()
	br, err := h.LinkByName(vif.Bridge)
	if err != nil {
		t.Fatalf("bridge %s: %v", vif.Bridge, err)
	}
	if br.Type() != "bridge" {
		t.Errorf("bridge %s type %s", vif.Bridge, br.Type())
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("bridge %s down", vif.Bridge)
	}
	if br.Attrs().MTU != brMTU {
		t.Errorf("bridge mtu %d, want %d", br.Attrs().MTU, brMTU)
	}
	tap, err = h.LinkByName(vif.DevName)
	if err != nil {
		t.Fatalf("tap %s: %v", vif.DevName, err)
	}
	peer, err = h.LinkByName(PeerName(vif.DevName))
	if err != nil {
		t.Fatalf("peer %s: %v", PeerName(vif.DevName), err)
	}
	ta, pa := tap.Attrs(), peer.Attrs()
	if tap.Type() != "veth" || peer.Type() != "veth" {
		t.Errorf("types tap %s peer %s, want veth", tap.Type(), peer.Type())
	}
	if ta.ParentIndex != pa.Index || pa.ParentIndex != ta.Index {
		t.Errorf("tap %d (link %d) and peer %d (link %d) are not a pair", ta.Index, ta.ParentIndex, pa.Index, pa.ParentIndex)
	}
	if ta.MasterIndex != br.Attrs().Index {
		t.Errorf("tap master %d, want bridge %d", ta.MasterIndex, br.Attrs().Index)
	}
	if pa.MasterIndex != 0 {
		t.Errorf("peer has master %d", pa.MasterIndex)
	}
	if ta.MTU != brMTU {
		t.Errorf("tap mtu %d, want %d", ta.MTU, brMTU)
	}
	if pa.MTU != peerMTU {
		t.Errorf("peer mtu %d, want %d", pa.MTU, peerMTU)
	}
	if pa.HardwareAddr.String() != vif.MAC {
		t.Errorf("peer mac %s, want %s", pa.HardwareAddr, vif.MAC)
	}
	if want := "fe" + vif.MAC[2:]; ta.HardwareAddr.String() != want {
		t.Errorf("tap mac %s, want %s", ta.HardwareAddr, want)
	}
	if ta.Flags&net.FlagUp == 0 || pa.Flags&net.FlagUp == 0 {
		t.Errorf("tap up %v, peer up %v", ta.Flags&net.FlagUp != 0, pa.Flags&net.FlagUp != 0)
	}
	// IPv6 is off on the tap: no link-local address.
	if addrs, err := h.AddrList(tap, netlink.FAMILY_V6); err != nil || len(addrs) != 0 {
		t.Errorf("tap IPv6 addresses %v, %v", addrs, err)
	}
	return tap, peer
}

// linkNames lists the devices in h's namespace, lo excluded.
func linkNames(t *testing.T, h *netlink.Handle) []string {
	t.Helper()
	links, err := linkList(h)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		if n := l.Attrs().Name; n != "lo" {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names
}

func mustNotExist(t *testing.T, h *netlink.Handle, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := h.LinkByName(n); !isNotFound(err) {
			t.Errorf("%s: want not found, got %v", n, err)
		}
	}
}

func readSysctl(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestNames(t *testing.T) {
	if got := TapName(testPort); got != "tap8d2b0c1e-77" {
		t.Errorf("TapName = %q", got)
	}
	if got := BridgeName(testNet); got != "brq3f5c6b2a-9d" {
		t.Errorf("BridgeName = %q", got)
	}
	if got := PeerName(TapName(testPort)); got != "tin8d2b0c1e-77" {
		t.Errorf("PeerName = %q", got)
	}
	if got := TapName("ab"); got != "tapab" {
		t.Errorf("TapName(short) = %q", got)
	}
	if got := PeerName("ta"); got != "tinta" {
		t.Errorf("PeerName(short) = %q", got)
	}
	for _, n := range []string{TapName(testPort), BridgeName(testNet), PeerName(TapName(testPort))} {
		if len(n) != 14 {
			t.Errorf("%q: %d bytes, want 14", n, len(n))
		}
	}
}

func TestValidate(t *testing.T) {
	good := testVIF(1, BridgeName(testNet), 0)
	bad := map[string]func(v *VIF){
		"no id":           func(v *VIF) { v.ID = "" },
		"no dev":          func(v *VIF) { v.DevName = "" },
		"dev too long":    func(v *VIF) { v.DevName = "tap0123456789abc" },
		"dev not tap":     func(v *VIF) { v.DevName = "veth0" },
		"dev only prefix": func(v *VIF) { v.DevName = "tap" },
		"dev slash":       func(v *VIF) { v.DevName = "tap/x" },
		"dev space":       func(v *VIF) { v.DevName = "tap x" },
		"no bridge":       func(v *VIF) { v.Bridge = "" },
		"bridge too long": func(v *VIF) { v.Bridge = "brq0123456789abc" },
		"bridge colon":    func(v *VIF) { v.Bridge = "brq:1" },
		"bridge is tap":   func(v *VIF) { v.Bridge = v.DevName },
		"bridge is peer":  func(v *VIF) { v.Bridge = PeerName(v.DevName) },
		"no mac":          func(v *VIF) { v.MAC = "" },
		"bad mac":         func(v *VIF) { v.MAC = "fa:16:3e:zz:00:01" },
		"long mac":        func(v *VIF) { v.MAC = "00:00:00:00:fe:80:00:00" },
		"multicast mac":   func(v *VIF) { v.MAC = "01:00:5e:00:00:01" },
		"zero mac":        func(v *VIF) { v.MAC = "00:00:00:00:00:00" },
		"negative mtu":    func(v *VIF) { v.MTU = -1 },
		"tiny mtu":        func(v *VIF) { v.MTU = 67 },
		"huge mtu":        func(v *VIF) { v.MTU = 65536 },
	}
	if _, err := good.validate(); err != nil {
		t.Fatalf("good vif: %v", err)
	}
	for name, mutate := range bad {
		v := good
		mutate(&v)
		if _, err := v.validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", name, err)
		}
	}
}

// TestInvalidInput checks that bad input fails before touching the kernel.
func TestInvalidInput(t *testing.T) {
	ctx := t.Context()
	ns, h := detachedNS(t)
	p := nsPlugger(t, ns)
	v := testVIF(1, BridgeName(testNet), 0)
	v.MAC = "not-a-mac"
	_, err := p.Plug(ctx, v)
	if !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), "plug "+v.DevName+": ") {
		t.Errorf("Plug: %v", err)
	}
	if names := linkNames(t, h); len(names) != 0 {
		t.Errorf("links after invalid plug: %v", names)
	}
	if err := p.Unplug(ctx, VIF{DevName: "eth0"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Unplug: %v", err)
	}
	if _, err := p.Attached(ctx, VIF{DevName: v.DevName}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Attached: %v", err)
	}
	if _, _, _, _, _, _, _, _, err := p.Stats(ctx, ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("Stats: %v", err)
	}
	if _, err := p.Ports(ctx, "a/b"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Ports: %v", err)
	}
}

// TestPlug plugs into a missing bridge from a goroutine locked in a test
// namespace, with New (the agent's constructor).
func TestPlug(t *testing.T) {
	enterTestNS(t)
	ctx := t.Context()
	h := &netlink.Handle{} // this thread's namespace, like New's
	p := New(nil)
	vif := testVIF(1, BridgeName(testNet), 1450)

	if ok, err := p.Attached(ctx, vif); ok || err != nil {
		t.Fatalf("Attached before plug = %v, %v", ok, err)
	}
	peer, err := p.Plug(ctx, vif)
	if err != nil {
		t.Fatal(err)
	}
	if peer != PeerName(vif.DevName) {
		t.Errorf("peer %q, want %q", peer, PeerName(vif.DevName))
	}
	checkPlugged(t, h, vif, 1450, 1450)
	for _, dev := range []string{vif.Bridge, vif.DevName} {
		if got := readSysctl(t, "/proc/sys/net/ipv6/conf/"+dev+"/disable_ipv6"); got != "1" {
			t.Errorf("%s disable_ipv6 = %s, want 1", dev, got)
		}
	}
	if got := readSysctl(t, "/proc/sys/net/ipv6/conf/"+peer+"/disable_ipv6"); got != "0" {
		t.Errorf("peer disable_ipv6 = %s, want 0 (the container's business)", got)
	}
	if ok, err := p.Attached(ctx, vif); !ok || err != nil {
		t.Errorf("Attached = %v, %v", ok, err)
	}
	if ports, err := p.Ports(ctx, vif.Bridge); err != nil || !slices.Equal(ports, []string{vif.DevName}) {
		t.Errorf("Ports = %v, %v", ports, err)
	}
	if ports, err := p.Ports(ctx, "brqnone"); err != nil || ports != nil {
		t.Errorf("Ports(missing) = %v, %v", ports, err)
	}
}

func TestPlugDefaultMTU(t *testing.T) {
	enterTestNS(t)
	p := New(nil)
	vif := testVIF(1, BridgeName(testNet), 0)
	if _, err := p.Plug(t.Context(), vif); err != nil {
		t.Fatal(err)
	}
	checkPlugged(t, &netlink.Handle{}, vif, 1500, 1500)
}

func TestPlugIdempotent(t *testing.T) {
	enterTestNS(t)
	ctx := t.Context()
	h := &netlink.Handle{}
	p := New(nil)
	vif := testVIF(1, BridgeName(testNet), 1400)
	if _, err := p.Plug(ctx, vif); err != nil {
		t.Fatal(err)
	}
	tap1, peer1 := checkPlugged(t, h, vif, 1400, 1400)
	if _, err := p.Plug(ctx, vif); err != nil {
		t.Fatalf("second plug: %v", err)
	}
	tap2, peer2 := checkPlugged(t, h, vif, 1400, 1400)
	if tap1.Attrs().Index != tap2.Attrs().Index || peer1.Attrs().Index != peer2.Attrs().Index {
		t.Errorf("second plug re-created the pair")
	}

	// Drift on a sound pair is repaired in place.
	must(t, h.LinkSetDown(tap2))
	must(t, h.LinkSetDown(peer2))
	must(t, h.LinkSetNoMaster(tap2))
	must(t, h.LinkSetMTU(peer2, 1300))
	must(t, h.LinkSetHardwareAddr(peer2, net.HardwareAddr{0xfa, 0x16, 0x3e, 9, 9, 9}))
	if _, err := p.Plug(ctx, vif); err != nil {
		t.Fatalf("repairing plug: %v", err)
	}
	tap3, peer3 := checkPlugged(t, h, vif, 1400, 1400)
	if tap1.Attrs().Index != tap3.Attrs().Index || peer1.Attrs().Index != peer3.Attrs().Index {
		t.Errorf("repairing plug re-created the pair")
	}
	// The peer's MAC can be reset while it is up.
	must(t, h.LinkSetHardwareAddr(peer3, net.HardwareAddr{0xfa, 0x16, 0x3e, 8, 8, 8}))
	if _, err := p.Plug(ctx, vif); err != nil {
		t.Fatalf("repairing plug: %v", err)
	}
	checkPlugged(t, h, vif, 1400, 1400)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestPlugExistingBridge(t *testing.T) {
	enterTestNS(t)
	ctx := t.Context()
	h := &netlink.Handle{}
	p := New(nil)
	name := BridgeName(testNet)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.MTU = 1450
	must(t, h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}))
	br, err := h.LinkByName(name)
	must(t, err)
	must(t, h.LinkSetUp(br))
	const sysctl = "/proc/sys/net/ipv6/conf/" + "brq3f5c6b2a-9d" + "/disable_ipv6"
	if got := readSysctl(t, sysctl); got != "0" {
		t.Fatalf("precondition: disable_ipv6 = %s", got)
	}

	// Network MTU unknown: both ends take the bridge's.
	v1 := testVIF(1, name, 0)
	if _, err := p.Plug(ctx, v1); err != nil {
		t.Fatal(err)
	}
	checkPlugged(t, h, v1, 1450, 1450)
	// Network MTU known: the peer takes it, the tap the bridge's.
	v2 := testVIF(2, name, 1400)
	if _, err := p.Plug(ctx, v2); err != nil {
		t.Fatal(err)
	}
	checkPlugged(t, h, v2, 1450, 1400)
	// The bridge was up and is left as it was.
	if got := readSysctl(t, sysctl); got != "0" {
		t.Errorf("existing bridge's disable_ipv6 changed to %s", got)
	}
	if br2, _ := h.LinkByName(name); br2.Attrs().Index != br.Attrs().Index {
		t.Errorf("bridge re-created")
	}
}

// TestPlugBridgeDown: a bridge found down is finished (IPv6 off, up).
func TestPlugBridgeDown(t *testing.T) {
	enterTestNS(t)
	h := &netlink.Handle{}
	name := BridgeName(testNet)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	must(t, h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}))
	vif := testVIF(1, name, 0)
	if _, err := New(nil).Plug(t.Context(), vif); err != nil {
		t.Fatal(err)
	}
	checkPlugged(t, h, vif, 1500, 1500)
	if got := readSysctl(t, "/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6"); got != "1" {
		t.Errorf("disable_ipv6 = %s, want 1", got)
	}
}

func TestPlugNotBridge(t *testing.T) {
	enterTestNS(t)
	h := &netlink.Handle{}
	name := BridgeName(testNet)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	must(t, h.LinkAdd(&netlink.Tuntap{LinkAttrs: attrs, Mode: netlink.TUNTAP_MODE_TAP}))
	vif := testVIF(1, name, 0)
	_, err := New(nil).Plug(t.Context(), vif)
	if !errors.Is(err, ErrNotBridge) {
		t.Fatalf("err %v, want ErrNotBridge", err)
	}
	if _, err := h.LinkByName(name); err != nil {
		t.Errorf("the device in the bridge's place was touched: %v", err)
	}
	mustNotExist(t, h, vif.DevName, PeerName(vif.DevName))
}

func TestUnplug(t *testing.T) {
	enterTestNS(t)
	ctx := t.Context()
	h := &netlink.Handle{}
	p := New(nil)
	name := BridgeName(testNet)
	v1, v2 := testVIF(1, name, 0), testVIF(2, name, 0)
	for _, v := range []VIF{v1, v2} {
		if _, err := p.Plug(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Unplug(ctx, v1); err != nil {
		t.Fatal(err)
	}
	mustNotExist(t, h, v1.DevName, PeerName(v1.DevName))
	checkPlugged(t, h, v2, 1500, 1500)
	if ok, err := p.Attached(ctx, v1); ok || err != nil {
		t.Errorf("Attached(unplugged) = %v, %v", ok, err)
	}
	// Twice, and a port never plugged: nil.
	if err := p.Unplug(ctx, v1); err != nil {
		t.Errorf("second unplug: %v", err)
	}
	if err := p.Unplug(ctx, testVIF(3, name, 0)); err != nil {
		t.Errorf("unplug of unknown port: %v", err)
	}
	// Only DevName is needed.
	if err := p.Unplug(ctx, VIF{DevName: v2.DevName}); err != nil {
		t.Fatal(err)
	}
	if got := linkNames(t, h); !slices.Equal(got, []string{name}) {
		t.Errorf("links %v, want only the bridge", got)
	}
}

func TestUnplugStrayPeer(t *testing.T) {
	enterTestNS(t)
	h := &netlink.Handle{}
	vif := testVIF(1, BridgeName(testNet), 0)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = PeerName(vif.DevName)
	must(t, h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "vethstray", PeerTxQLen: -1}))
	if err := New(nil).Unplug(t.Context(), vif); err != nil {
		t.Fatal(err)
	}
	mustNotExist(t, h, attrs.Name, "vethstray")
}

// TestPlugRepairsHalfBroken puts each kind of debris in the way of a plug.
func TestPlugRepairsHalfBroken(t *testing.T) {
	vif := testVIF(1, BridgeName(testNet), 1450)
	tapName, peerName := vif.DevName, PeerName(vif.DevName)
	add := func(t *testing.T, l netlink.Link) {
		t.Helper()
		must(t, netlink.LinkAdd(l))
	}
	named := func(n string) netlink.LinkAttrs {
		a := netlink.NewLinkAttrs()
		a.Name = n
		return a
	}
	veth := func(a, b string) netlink.Link {
		v := netlink.NewVeth(named(a))
		v.PeerName = b
		return v
	}
	cases := map[string]struct {
		setup   func(t *testing.T)
		inPlace bool // the pair is kept, not re-created
	}{
		"tap is a tuntap": {setup: func(t *testing.T) {
			add(t, &netlink.Tuntap{LinkAttrs: named(tapName), Mode: netlink.TUNTAP_MODE_TAP})
		}},
		"tap is a bridge": {setup: func(t *testing.T) {
			add(t, &netlink.Bridge{LinkAttrs: named(tapName)})
		}},
		"tap paired with another name": {setup: func(t *testing.T) {
			add(t, veth(tapName, "vethother"))
		}},
		"stray peer alone": {setup: func(t *testing.T) {
			add(t, &netlink.Bridge{LinkAttrs: named(peerName)})
		}},
		"tap and peer in two pairs": {setup: func(t *testing.T) {
			add(t, veth(tapName, "vethx1"))
			add(t, veth(peerName, "vethx2"))
		}},
		"tap on another bridge": {inPlace: true, setup: func(t *testing.T) {
			v := vif
			v.Bridge, v.MTU = "brqother", 0 // the tap gets mtu 1500
			if _, err := New(nil).Plug(t.Context(), v); err != nil {
				t.Fatal(err)
			}
		}},
		"bridge exists, pair down": {inPlace: true, setup: func(t *testing.T) {
			if _, err := New(nil).Plug(t.Context(), vif); err != nil {
				t.Fatal(err)
			}
			for _, n := range []string{tapName, peerName} {
				l, err := netlink.LinkByName(n)
				must(t, err)
				must(t, netlink.LinkSetDown(l))
			}
		}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			enterTestNS(t)
			h := &netlink.Handle{}
			tc.setup(t)
			before, _ := h.LinkByName(tapName)
			if _, err := New(nil).Plug(t.Context(), vif); err != nil {
				t.Fatal(err)
			}
			tap, _ := checkPlugged(t, h, vif, 1450, 1450)
			if tc.inPlace && before.Attrs().Index != tap.Attrs().Index {
				t.Errorf("pair re-created, want repaired in place")
			}
			mustNotExist(t, h, "vethother", "vethx1", "vethx2")
		})
	}
}

// TestPlugUnplugLoop leaves nothing but the bridge behind.
func TestPlugUnplugLoop(t *testing.T) {
	enterTestNS(t)
	ctx := t.Context()
	h := &netlink.Handle{}
	p := New(nil)
	name := BridgeName(testNet)
	for i := range 50 {
		vif := testVIF(i, name, 1450)
		if _, err := p.Plug(ctx, vif); err != nil {
			t.Fatalf("plug %d: %v", i, err)
		}
		if i%10 == 0 {
			checkPlugged(t, h, vif, 1450, 1450)
		}
		if err := p.Unplug(ctx, vif); err != nil {
			t.Fatalf("unplug %d: %v", i, err)
		}
	}
	if got := linkNames(t, h); !slices.Equal(got, []string{name}) {
		t.Errorf("links %v, want only the bridge", got)
	}
}

func TestContextCanceled(t *testing.T) {
	ns, h := detachedNS(t)
	p := nsPlugger(t, ns)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	vif := testVIF(1, BridgeName(testNet), 0)
	if _, err := p.Plug(ctx, vif); !errors.Is(err, context.Canceled) {
		t.Errorf("Plug: %v, want context.Canceled", err)
	}
	if err := p.Unplug(ctx, vif); !errors.Is(err, context.Canceled) {
		t.Errorf("Unplug: %v, want context.Canceled", err)
	}
	if names := linkNames(t, h); len(names) != 0 {
		t.Errorf("links after canceled plug: %v", names)
	}
}

// TestNewInNamespace plugs concurrently from unlocked goroutines through a
// Plugger bound to a namespace the test goroutine never enters.
func TestNewInNamespace(t *testing.T) {
	ctx := t.Context()
	ns, h := detachedNS(t)
	p := nsPlugger(t, ns)
	name := BridgeName(testNet)
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			if _, err := p.Plug(ctx, testVIF(i, name, 1450)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range n {
		checkPlugged(t, h, testVIF(i, name, 1450), 1450, 1450)
	}
	var v6 string
	must(t, runInNS(ns, func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6")
		v6 = strings.TrimSpace(string(b))
		return err
	}))
	if v6 != "1" {
		t.Errorf("disable_ipv6 = %q, want 1", v6)
	}
	// Nothing reached this goroutine's (the host's) namespace. Read only.
	if _, err := netlink.LinkByName(name); !isNotFound(err) {
		t.Errorf("bridge visible outside the test namespace: %v", err)
	}
	if ports, err := p.Ports(ctx, name); err != nil || len(ports) != n {
		t.Errorf("Ports = %v, %v", ports, err)
	}
	for i := range n {
		must(t, p.Unplug(ctx, testVIF(i, name, 1450)))
	}
	if got := linkNames(t, h); !slices.Equal(got, []string{name}) {
		t.Errorf("links %v, want only the bridge", got)
	}
}

// TestPeerInContainer: once the backend moved the peer into the container,
// Plug keeps the pair and Unplug removes it from both sides.
func TestPeerInContainer(t *testing.T) {
	ctx := t.Context()
	hostNS, h := detachedNS(t)
	ctrNS, ch := detachedNS(t)
	p := nsPlugger(t, hostNS)
	vif := testVIF(1, BridgeName(testNet), 1450)
	peerName, err := p.Plug(ctx, vif)
	must(t, err)
	tap, peer := checkPlugged(t, h, vif, 1450, 1450)
	must(t, h.LinkSetNsFd(peer, int(ctrNS)))
	inCtr, err := ch.LinkByName(peerName)
	must(t, err)

	if _, err := p.Plug(ctx, vif); err != nil {
		t.Fatalf("plug with peer in container: %v", err)
	}
	tap2, err := h.LinkByName(vif.DevName)
	must(t, err)
	if tap2.Attrs().Index != tap.Attrs().Index {
		t.Errorf("tap re-created while its peer was in the container")
	}
	if l, err := ch.LinkByName(peerName); err != nil || l.Attrs().Index != inCtr.Attrs().Index {
		t.Errorf("peer in container lost: %v", err)
	}
	if ok, err := p.Attached(ctx, vif); !ok || err != nil {
		t.Errorf("Attached = %v, %v", ok, err)
	}
	must(t, p.Unplug(ctx, vif))
	mustNotExist(t, h, vif.DevName, peerName)
	mustNotExist(t, ch, peerName)
}

// TestStats sends frames from one container end to the other across the
// bridge and reads them back, swapped, from the taps.
func TestStats(t *testing.T) {
	enterTestNS(t)
	ctx := t.Context()
	// No IPv6 chatter (router solicitations, MLD) on new devices, so the
	// counters hold exactly the test's frames.
	if err := writeSysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"); err != nil {
		t.Logf("cannot silence ipv6: %v", err)
	}
	p := New(nil)
	name := BridgeName(testNet)
	a, b := testVIF(1, name, 0), testVIF(2, name, 0)
	for _, v := range []VIF{a, b} {
		if _, err := p.Plug(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	a0 := counters(t, p, a.DevName)
	b0 := counters(t, p, b.DevName)

	const frames, size = 20, 100
	peerA, err := netlink.LinkByName(PeerName(a.DevName))
	must(t, err)
	sendFrames(t, peerA.Attrs().Index, peerA.Attrs().HardwareAddr, frames, size)

	a1 := counters(t, p, a.DevName)
	b1 := counters(t, p, b.DevName)
	if d := a1.TxPackets - a0.TxPackets; d < frames {
		t.Errorf("container a sent %d packets, want >= %d", d, frames)
	}
	if d := a1.TxBytes - a0.TxBytes; d < frames*size {
		t.Errorf("container a sent %d bytes, want >= %d", d, frames*size)
	}
	if d := a1.RxPackets - a0.RxPackets; d >= frames {
		t.Errorf("container a received %d packets: its own broadcasts came back?", d)
	}
	if d := b1.RxPackets - b0.RxPackets; d < frames {
		t.Errorf("container b received %d packets, want >= %d (flooded by the bridge)", d, frames)
	}
	if d := b1.TxPackets - b0.TxPackets; d >= frames {
		t.Errorf("container b sent %d packets, want none of the test's", d)
	}
	rxB, rxP, _, _, txB, txP, _, _, err := p.Stats(ctx, a.DevName)
	must(t, err)
	if txP < a1.TxPackets || txB < a1.TxBytes || rxP < a1.RxPackets || rxB < a1.RxBytes {
		t.Errorf("Stats went backwards vs Counters")
	}
	if _, err := p.Counters(ctx, "tapmissing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Counters(missing) = %v, want ErrNotFound", err)
	}
}

func counters(t *testing.T, p *Plugger, dev string) Counters {
	t.Helper()
	c, err := p.Counters(t.Context(), dev)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// sendFrames writes n broadcast frames of size bytes out of ifindex with a
// packet socket (in the calling thread's namespace).
func sendFrames(t *testing.T, ifindex int, src net.HardwareAddr, n, size int) {
	t.Helper()
	const ethType = 0x88b5 // IEEE local experimental
	proto := int(htons(ethType))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	defer unix.Close(fd)
	frame := make([]byte, size)
	copy(frame[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(frame[6:12], src)
	frame[12], frame[13] = ethType>>8, ethType&0xff
	sa := &unix.SockaddrLinklayer{Ifindex: ifindex, Protocol: htons(ethType)}
	for i := range n {
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			t.Fatalf("send frame %d: %v", i, err)
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func TestRetryDump(t *testing.T) {
	calls := 0
	flaky := func(fails int) func() (int, error) {
		calls = 0
		return func() (int, error) {
			calls++
			if calls <= fails {
				return -1, fmt.Errorf("dump: %w", netlink.ErrDumpInterrupted)
			}
			return 42, nil
		}
	}
	if v, err := retryDump(flaky(4)); v != 42 || err != nil || calls != 5 {
		t.Errorf("4 interruptions: %v, %v after %d calls", v, err, calls)
	}
	if v, err := retryDump(flaky(5)); v != 0 || !errors.Is(err, netlink.ErrDumpInterrupted) || calls != 5 {
		t.Errorf("5 interruptions: %v, %v after %d calls", v, err, calls)
	}
	other := errors.New("boom")
	calls = 0
	if _, err := retryDump(func() (int, error) { calls++; return 0, other }); !errors.Is(err, other) || calls != 1 {
		t.Errorf("other error: %v after %d calls", err, calls)
	}
}

// TestNewInNamespaceBadHandle: a closed handle is refused.
func TestNewInNamespaceBadHandle(t *testing.T) {
	if _, err := NewInNamespace(nil, netns.None()); err == nil {
		t.Error("want error for a closed netns handle")
	}
}

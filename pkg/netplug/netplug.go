// Package netplug plugs neutron VIFs for containers: linuxbridge-style and,
// like os-vif's ovs plugin, Open vSwitch ones (see ovs.go).
//
// A VIF is a veth pair: the host end (tap…) is enslaved to the network's
// bridge (brq…) or added to the OVS integration bridge, the peer (tin…)
// carries the VIF's MAC and MTU and is moved into the container by the
// container backend. Every name derives from the port and network ids, so
// the package keeps no state: Plug and Unplug are idempotent and repair
// whatever a crash left half done. Network bridges are created on demand and
// never deleted here.
package netplug

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Name prefixes, as neutron's linuxbridge agent and os-vif use them.
const (
	tapPrefix    = "tap"
	bridgePrefix = "brq"
	peerPrefix   = "tin"
	// maxNameLen is IFNAMSIZ-1.
	maxNameLen = unix.IFNAMSIZ - 1
	// nameLen is the length nova and neutron use for tap and bridge names.
	nameLen = 14
)

var (
	// ErrInvalid is wrapped by errors about a malformed VIF or device name.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound is wrapped when a device that must exist does not.
	ErrNotFound = errors.New("device not found")
	// ErrNotBridge is wrapped when the bridge name is taken by another kind
	// of device.
	ErrNotBridge = errors.New("not a bridge")
)

// VIF is one neutron port to plug.
type VIF struct {
	ID      string // neutron port id
	MAC     string // "fa:16:3e:.."
	Bridge  string // "brq…"
	DevName string // "tap…"
	MTU     int    // network MTU, 0 = bridge's
	// OVS, when set, makes Bridge an Open vSwitch bridge (br-int) and
	// the VIF one of its ports, directly or through os-vif's hybrid plug.
	OVS *OVSPort
}

// TapName is the host end's name for a port: ("tap"+portID)[:14].
func TapName(portID string) string { return truncName(tapPrefix + portID) }

// BridgeName is the bridge's name for a network: ("brq"+networkID)[:14].
func BridgeName(networkID string) string { return truncName(bridgePrefix + networkID) }

// PeerName is the container end's name for a tap: "tin"+devname[3:]. It has
// the tap's length, so it fits wherever the tap's name does.
func PeerName(devname string) string {
	if len(devname) < len(tapPrefix) {
		return peerPrefix + devname
	}
	return peerPrefix + devname[len(tapPrefix):]
}

func truncName(s string) string {
	if len(s) > nameLen {
		return s[:nameLen]
	}
	return s
}

// Plugger plugs and unplugs VIFs in one network namespace. Its methods are
// safe for concurrent use; Plug and Unplug are serialized.
type Plugger struct {
	log *slog.Logger
	h   *netlink.Handle
	// ns is the namespace h is bound to, or netns.None() for the calling
	// thread's namespace.
	ns netns.NsHandle
	// sem serializes Plug and Unplug so that two VIFs on a new bridge do
	// not race to create it.
	sem chan struct{}
	// ovs is how Open vSwitch is reached.
	ovs OVSConfig
}

// Option configures a Plugger.
type Option func(*Plugger)

// WithOVS sets how ovs-vsctl is run for OVS VIFs.
func WithOVS(c OVSConfig) Option { return func(p *Plugger) { p.ovs = c } }

// New returns a Plugger working in the calling thread's network namespace
// (the host's, for the agent). A nil logger discards logs.
func New(logger *slog.Logger, opts ...Option) *Plugger {
	p := &Plugger{
		log: componentLogger(logger),
		h:   &netlink.Handle{}, // no sockets: each request opens one in the caller's netns
		ns:  netns.None(),
		sem: make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// NewInNamespace returns a Plugger bound to the network namespace ns, usable
// from any goroutine. It duplicates ns; the caller keeps its own handle.
// Close releases the Plugger's sockets and handle. ovs-vsctl still runs in
// the caller's namespace: it only talks to the OVSDB server, whose
// ovs-vswitchd must live in ns for OVS VIFs.
func NewInNamespace(logger *slog.Logger, ns netns.NsHandle, opts ...Option) (*Plugger, error) {
	fd, err := unix.FcntlInt(uintptr(ns), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netplug: duplicate netns handle: %w", err)
	}
	own := netns.NsHandle(fd)
	h, err := netlink.NewHandleAt(own, unix.NETLINK_ROUTE)
	if err != nil {
		_ = own.Close()
		return nil, fmt.Errorf("netplug: netlink handle in netns: %w", err)
	}
	p := &Plugger{
		log: componentLogger(logger),
		h:   h,
		ns:  own,
		sem: make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(p)
	}
	return p, nil
}

// Close releases what NewInNamespace opened. It is a no-op for New.
func (p *Plugger) Close() error {
	p.h.Close()
	if p.ns.IsOpen() {
		return p.ns.Close()
	}
	return nil
}

func componentLogger(l *slog.Logger) *slog.Logger {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return l.With("component", "netplug")
}

// lock takes the Plug/Unplug lock or gives up when ctx ends.
func (p *Plugger) lock(ctx context.Context) (unlock func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	select {
	case p.sem <- struct{}{}:
		return func() { <-p.sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Plug makes the bridge (if missing) and the veth pair, returns the peer name
// that the container backend moves into the container. For an OVS VIF it
// also makes the OVS port (see plugOVS).
//
// An existing pair is kept (and re-enslaved, brought up, given the VIF's MAC
// and MTU if they drifted) when the tap is a veth whose peer is vif's peer or
// has already been moved to another namespace; anything else under the tap's
// or the peer's name is deleted and the pair re-created.
func (p *Plugger) Plug(ctx context.Context, vif VIF) (peer string, err error) {
	mac, err := vif.validate()
	if err != nil {
		return "", fmt.Errorf("plug %s: %w", vif.DevName, err)
	}
	unlock, err := p.lock(ctx)
	if err != nil {
		return "", fmt.Errorf("plug %s: %w", vif.DevName, err)
	}
	defer unlock()

	log := p.log.With("port", vif.ID, "dev", vif.DevName, "bridge", vif.Bridge)
	if vif.OVS != nil {
		err = p.plugOVS(ctx, log, vif, mac, true)
	} else {
		err = p.plugBridge(ctx, log, vif, mac)
	}
	if err != nil {
		return "", fmt.Errorf("plug %s: %w", vif.DevName, err)
	}
	return PeerName(vif.DevName), nil
}

// plugBridge plugs a linuxbridge VIF.
func (p *Plugger) plugBridge(ctx context.Context, log *slog.Logger, vif VIF, mac net.HardwareAddr) error {
	br, err := p.ensureBridge(ctx, log, vif.Bridge, vif.MTU)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := p.ensureVeth(ctx, log, tapSpec(log, vif, mac, br)); err != nil {
		return err
	}
	log.Debug("vif plugged")
	return nil
}

// tapSpec is the tap/tin pair of vif with the tap in the linux bridge br:
// the tap takes the bridge's MTU, the peer the network's (or the bridge's).
func tapSpec(log *slog.Logger, vif VIF, mac net.HardwareAddr, br netlink.Link) vethSpec {
	brMTU := br.Attrs().MTU
	peerMTU := vif.MTU
	if peerMTU == 0 {
		peerMTU = brMTU
	}
	if vif.MTU > brMTU {
		log.Warn("vif mtu above bridge mtu: frames larger than the bridge's will drop", "mtu", vif.MTU, "bridge_mtu", brMTU)
	}
	return vethSpec{host: vif.DevName, peer: PeerName(vif.DevName), hostMAC: tapMAC(mac), peerMAC: mac,
		master: br, hostMTU: brMTU, peerMTU: peerMTU}
}

// EnsureBridge makes the bridge if it is missing (IPv6 off, up, MTU), for
// backends that create the VIF's veth themselves (libvirt-lxc).
func (p *Plugger) EnsureBridge(ctx context.Context, name string, mtu int) error {
	unlock, err := p.lock(ctx)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	defer unlock()
	if _, err := p.ensureBridge(ctx, p.log.With("bridge", name), name, mtu); err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	return nil
}

// Unplug deletes the tap, and with it the peer wherever it is, then a stray
// peer left alone on the host. Missing devices are not an error; the bridge
// is left alone. For an OVS VIF it also removes the OVS port and whatever a
// hybrid plug made (see unplugOVS).
func (p *Plugger) Unplug(ctx context.Context, vif VIF) error {
	if err := validDevName(vif.DevName); err != nil {
		return fmt.Errorf("unplug %s: %w", vif.DevName, err)
	}
	unlock, err := p.lock(ctx)
	if err != nil {
		return fmt.Errorf("unplug %s: %w", vif.DevName, err)
	}
	defer unlock()

	log := p.log.With("port", vif.ID, "dev", vif.DevName)
	if vif.OVS != nil {
		if err := vif.validOVSNames(); err != nil {
			return fmt.Errorf("unplug %s: %w", vif.DevName, err)
		}
		if err := p.unplugOVS(ctx, log, vif); err != nil {
			return fmt.Errorf("unplug %s: %w", vif.DevName, err)
		}
		return nil
	}
	gone, err := p.deleteByName(ctx, vif.DevName)
	if err != nil {
		return fmt.Errorf("unplug %s: %w", vif.DevName, err)
	}
	if gone != nil {
		log.Info("unplugged vif")
	}
	peer := PeerName(vif.DevName)
	if gone, err = p.deleteByName(ctx, peer); err != nil {
		return fmt.Errorf("unplug %s: %w", vif.DevName, err)
	}
	if gone != nil {
		log.Warn("deleted stray peer", "peer", peer, "type", gone.Type())
	}
	return nil
}

// deleteByName deletes the device name and returns it, or nil if there was
// none.
func (p *Plugger) deleteByName(ctx context.Context, name string) (netlink.Link, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l, err := p.linkByName(name)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	if err := p.delLink(l); err != nil {
		return nil, fmt.Errorf("delete %s: %w", name, err)
	}
	return l, nil
}

// Attached reports whether the tap exists and is enslaved to the bridge
// (for an OVS VIF, see attachedOVS). Missing devices give false, nil.
func (p *Plugger) Attached(ctx context.Context, vif VIF) (bool, error) {
	if err := validDevName(vif.DevName); err != nil {
		return false, fmt.Errorf("attached %s: %w", vif.DevName, err)
	}
	if err := validIfName("bridge", vif.Bridge); err != nil {
		return false, fmt.Errorf("attached %s: %w", vif.DevName, err)
	}
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("attached %s: %w", vif.DevName, err)
	}
	if vif.OVS != nil {
		if err := vif.validOVSNames(); err != nil {
			return false, fmt.Errorf("attached %s: %w", vif.DevName, err)
		}
		ok, err := p.attachedOVS(ctx, vif)
		if err != nil {
			return false, fmt.Errorf("attached %s: %w", vif.DevName, err)
		}
		return ok, nil
	}
	tap, err := p.linkByName(vif.DevName)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("attached %s: %w", vif.DevName, err)
	}
	br, err := p.linkByName(vif.Bridge)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("attached %s: look up %s: %w", vif.DevName, vif.Bridge, err)
	}
	return tap.Attrs().MasterIndex == br.Attrs().Index, nil
}

// Ports lists the names of the devices enslaved to bridge, sorted; none if
// the bridge does not exist. Useful to find stale taps when reconciling. It
// dumps every link of the namespace: tens of ms with a thousand devices.
func (p *Plugger) Ports(ctx context.Context, bridge string) ([]string, error) {
	if err := validIfName("bridge", bridge); err != nil {
		return nil, fmt.Errorf("ports %s: %w", bridge, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ports %s: %w", bridge, err)
	}
	br, err := p.linkByName(bridge)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ports %s: %w", bridge, err)
	}
	links, err := linkList(p.h)
	if err != nil {
		return nil, fmt.Errorf("ports %s: %w", bridge, err)
	}
	var names []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			names = append(names, l.Attrs().Name)
		}
	}
	slices.Sort(names)
	return names, nil
}

// Counters are a VIF's traffic counters as the container sees them.
type Counters struct {
	RxBytes, RxPackets, RxErrors, RxDrop uint64
	TxBytes, TxPackets, TxErrors, TxDrop uint64
}

// Counters reads the counters of the host end devname, swapped to the
// container's point of view: what the tap transmits the container receives.
func (p *Plugger) Counters(ctx context.Context, devname string) (Counters, error) {
	if err := validIfName("device", devname); err != nil {
		return Counters{}, fmt.Errorf("stats %s: %w", devname, err)
	}
	if err := ctx.Err(); err != nil {
		return Counters{}, fmt.Errorf("stats %s: %w", devname, err)
	}
	l, err := p.linkByName(devname)
	if isNotFound(err) {
		return Counters{}, fmt.Errorf("stats %s: %w", devname, ErrNotFound)
	}
	if err != nil {
		return Counters{}, fmt.Errorf("stats %s: %w", devname, err)
	}
	s := l.Attrs().Statistics
	if s == nil {
		return Counters{}, fmt.Errorf("stats %s: kernel reported no counters", devname)
	}
	return Counters{
		RxBytes: s.TxBytes, RxPackets: s.TxPackets, RxErrors: s.TxErrors, RxDrop: s.TxDropped,
		TxBytes: s.RxBytes, TxPackets: s.RxPackets, TxErrors: s.RxErrors, TxDrop: s.RxDropped,
	}, nil
}

// Stats reads counters of the host end (tap) for diagnostics, as seen from
// the container (the tap's tx is the container's rx). See Counters.
func (p *Plugger) Stats(ctx context.Context, devname string) (rxBytes, rxPackets, rxErrors, rxDrop, txBytes, txPackets, txErrors, txDrop uint64, err error) {
	c, err := p.Counters(ctx, devname)
	return c.RxBytes, c.RxPackets, c.RxErrors, c.RxDrop, c.TxBytes, c.TxPackets, c.TxErrors, c.TxDrop, err
}

// ensureBridge returns the bridge, creating it when missing. A new bridge
// gets the network's MTU (if > 0) set like "ip link set mtu" does, so that
// the kernel keeps it even while the bridge has no port, then IPv6 off, then
// up. A bridge found down is taken as one whose creation was cut short, by us
// or by neutron's agent, and is finished the same way. An up bridge is left
// as it is.
func (p *Plugger) ensureBridge(ctx context.Context, log *slog.Logger, name string, mtu int) (netlink.Link, error) {
	br, err := p.linkByName(name)
	if err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	if err != nil {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		err := p.h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
		switch {
		case err == nil:
			log.Info("created bridge", "mtu", mtu)
		case errors.Is(err, unix.EEXIST):
			// Created meanwhile by someone else: use it.
		default:
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		if br, err = p.linkByName(name); err != nil {
			return nil, fmt.Errorf("look up bridge %s: %w", name, err)
		}
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("%s is a %s: %w", name, br.Type(), ErrNotBridge)
	}
	if br.Attrs().Flags&net.FlagUp != 0 {
		return br, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if mtu > 0 && br.Attrs().MTU != mtu {
		// Not IFLA_MTU at creation: the kernel would take that one as a
		// default and reset it to 1500 whenever the last port leaves.
		if err := p.h.LinkSetMTU(br, mtu); err != nil {
			return nil, fmt.Errorf("set bridge %s mtu %d: %w", name, mtu, err)
		}
	}
	// Before up, so that no link-local address is ever configured.
	p.disableIPv6(log, name)
	if err := p.h.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("set bridge %s up: %w", name, err)
	}
	if br, err = p.linkByName(name); err != nil {
		return nil, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	return br, nil
}

// vethSpec is one veth pair as it should be.
type vethSpec struct {
	host, peer string
	// hostMAC and peerMAC are the ends' addresses; nil keeps the kernel's.
	hostMAC, peerMAC net.HardwareAddr
	// master is the host end's linux bridge; nil for an OVS port, whose
	// master (if any) is OVS's business.
	master netlink.Link
	// hostMTU and peerMTU: 0 keeps the kernel's default and is not
	// enforced. With a master, the host end's MTU is only set when it
	// joins the bridge (the bridge's MTU follows its ports').
	hostMTU, peerMTU int
	// link marks a pair whose ends both stay on the host (os-vif's
	// qvb/qvo): both promiscuous and without IPv6, like os-vif makes them.
	link bool
}

// ensureVeth keeps a sound pair (repairing drift) or replaces whatever is in
// the way with a new one.
func (p *Plugger) ensureVeth(ctx context.Context, log *slog.Logger, s vethSpec) error {
	tap, err := p.linkByName(s.host)
	switch {
	case err == nil:
		peer, why, err := p.pairedPeer(tap, s)
		if err != nil {
			return err
		}
		if why == "" {
			return p.repairPair(log, tap, peer, s)
		}
		log.Warn("replacing broken veth", "reason", why, "host", s.host, "type", tap.Type())
		if err := p.delLink(tap); err != nil {
			return fmt.Errorf("delete broken %s: %w", s.host, err)
		}
	case !isNotFound(err):
		return fmt.Errorf("look up %s: %w", s.host, err)
	}

	if err := ctx.Err(); err != nil {
		return err
	}
	stray, err := p.linkByName(s.peer)
	switch {
	case err == nil:
		log.Warn("deleting stray peer", "peer", s.peer, "type", stray.Type())
		if err := p.delLink(stray); err != nil {
			return fmt.Errorf("delete stray %s: %w", s.peer, err)
		}
	case !isNotFound(err):
		return fmt.Errorf("look up %s: %w", s.peer, err)
	}

	if err := ctx.Err(); err != nil {
		return err
	}
	if err := p.createPair(log, s); err != nil {
		// Leave nothing half made; the next Plug starts clean anyway.
		if l, lerr := p.linkByName(s.host); lerr == nil {
			_ = p.delLink(l)
		}
		return err
	}
	log.Info("created veth pair", "host", s.host, "peer", s.peer, "mtu", s.hostMTU, "peer_mtu", s.peerMTU)
	return nil
}

// createPair adds the veth pair, disables IPv6 on the host end, enslaves it
// and brings both ends up.
func (p *Plugger) createPair(log *slog.Logger, s vethSpec) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = s.host
	attrs.MTU = s.hostMTU
	attrs.HardwareAddr = s.hostMAC
	veth := netlink.NewVeth(attrs)
	veth.PeerName = s.peer
	veth.PeerMTU = uint32(s.peerMTU)
	veth.PeerHardwareAddr = s.peerMAC
	if err := p.h.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s/%s: %w", s.host, s.peer, err)
	}
	// A bridge or OVS port needs no IPv6; without this the host would
	// send DAD, router solicitations and MLD reports into the container.
	p.disableIPv6(log, s.host)
	if s.link {
		p.disableIPv6(log, s.peer)
	}
	peer, err := p.linkByName(s.peer)
	if err != nil {
		return fmt.Errorf("look up new peer %s: %w", s.peer, err)
	}
	if s.master != nil {
		if err := p.h.LinkSetMasterByIndex(veth, s.master.Attrs().Index); err != nil {
			return fmt.Errorf("enslave %s to %s: %w", s.host, s.master.Attrs().Name, err)
		}
	}
	if s.link {
		for _, l := range []netlink.Link{veth, peer} {
			if err := p.h.SetPromiscOn(l); err != nil {
				return fmt.Errorf("set %s promisc: %w", l.Attrs().Name, err)
			}
		}
	}
	if err := p.h.LinkSetUp(peer); err != nil {
		return fmt.Errorf("set %s up: %w", s.peer, err)
	}
	if err := p.h.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set %s up: %w", s.host, err)
	}
	return nil
}

// pairedPeer checks that tap is a veth paired with s.peer. It returns the
// peer (nil when it is in another namespace, i.e. in the container) or, for
// a broken pair, why it is broken.
func (p *Plugger) pairedPeer(tap netlink.Link, s vethSpec) (peer netlink.Link, why string, err error) {
	if _, ok := tap.(*netlink.Veth); !ok {
		return nil, "not a veth", nil
	}
	if tap.Attrs().NetNsID >= 0 {
		if s.link {
			return nil, "peer in another namespace", nil
		}
		// Peer already moved to another namespace: the VIF is in use.
		return nil, "", nil
	}
	peer, err = p.linkByName(s.peer)
	if isNotFound(err) {
		return nil, "peer missing", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("look up %s: %w", s.peer, err)
	}
	if _, ok := peer.(*netlink.Veth); !ok || tap.Attrs().ParentIndex != peer.Attrs().Index {
		return nil, "peer is not the tap's veth peer", nil
	}
	return peer, "", nil
}

// repairPair fixes the settings of a sound pair: master (and the host end's
// MTU with it), the peer's MAC and MTU, promiscuity, up.
// peer is nil when it lives in another namespace.
func (p *Plugger) repairPair(log *slog.Logger, tap, peer netlink.Link, s vethSpec) error {
	ta := tap.Attrs()
	switch {
	case s.master != nil && ta.MasterIndex != s.master.Attrs().Index:
		br := s.master
		log.Warn("re-enslaving veth", "dev", ta.Name, "master_index", ta.MasterIndex)
		// The bridge's MTU follows its ports': match it before joining.
		if brMTU := br.Attrs().MTU; ta.MTU != brMTU {
			if err := p.h.LinkSetMTU(tap, brMTU); err != nil {
				return fmt.Errorf("set %s mtu: %w", ta.Name, err)
			}
		}
		if err := p.h.LinkSetMasterByIndex(tap, br.Attrs().Index); err != nil {
			return fmt.Errorf("enslave %s to %s: %w", ta.Name, br.Attrs().Name, err)
		}
	case s.master == nil:
		if err := p.leaveLinuxBridge(log, tap); err != nil {
			return err
		}
		if s.hostMTU > 0 && ta.MTU != s.hostMTU {
			log.Warn("resetting mtu", "dev", ta.Name, "was", ta.MTU, "mtu", s.hostMTU)
			if err := p.h.LinkSetMTU(tap, s.hostMTU); err != nil {
				return fmt.Errorf("set %s mtu: %w", ta.Name, err)
			}
		}
	}
	links := []netlink.Link{tap}
	if peer != nil {
		links = append(links, peer)
		pa := peer.Attrs()
		if s.peerMAC != nil && !slices.Equal(pa.HardwareAddr, s.peerMAC) {
			log.Warn("resetting peer mac", "peer", pa.Name, "was", pa.HardwareAddr.String())
			if err := p.h.LinkSetHardwareAddr(peer, s.peerMAC); err != nil {
				return fmt.Errorf("set %s mac: %w", pa.Name, err)
			}
		}
		if s.peerMTU > 0 && pa.MTU != s.peerMTU {
			log.Warn("resetting peer mtu", "peer", pa.Name, "was", pa.MTU, "mtu", s.peerMTU)
			if err := p.h.LinkSetMTU(peer, s.peerMTU); err != nil {
				return fmt.Errorf("set %s mtu: %w", pa.Name, err)
			}
		}
		if pa.Flags&net.FlagUp == 0 {
			if s.link {
				p.disableIPv6(log, pa.Name)
			}
			if err := p.h.LinkSetUp(peer); err != nil {
				return fmt.Errorf("set %s up: %w", pa.Name, err)
			}
		}
	}
	if s.link {
		for _, l := range links {
			if l.Attrs().Promisc == 0 {
				if err := p.h.SetPromiscOn(l); err != nil {
					return fmt.Errorf("set %s promisc: %w", l.Attrs().Name, err)
				}
			}
		}
	}
	if ta.Flags&net.FlagUp == 0 {
		// Down: maybe left so by a Plug cut short before IPv6 was off.
		p.disableIPv6(log, ta.Name)
		if err := p.h.LinkSetUp(tap); err != nil {
			return fmt.Errorf("set %s up: %w", ta.Name, err)
		}
	}
	log.Debug("veth pair already there", "host", ta.Name, "peer_in_other_netns", peer == nil)
	return nil
}

// leaveLinuxBridge takes l out of a linux bridge it may have been left in
// (say, a hybrid plug's qbr before a plain OVS plug). A master that is not a
// bridge (OVS's kernel datapath, ovs-system) is kept.
func (p *Plugger) leaveLinuxBridge(log *slog.Logger, l netlink.Link) error {
	idx := l.Attrs().MasterIndex
	if idx == 0 {
		return nil
	}
	m, err := p.h.LinkByIndex(idx)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up master of %s: %w", l.Attrs().Name, err)
	}
	if _, ok := m.(*netlink.Bridge); !ok {
		return nil
	}
	log.Warn("taking veth out of a linux bridge", "dev", l.Attrs().Name, "bridge", m.Attrs().Name)
	if err := p.h.LinkSetNoMaster(l); err != nil {
		return fmt.Errorf("take %s out of %s: %w", l.Attrs().Name, m.Attrs().Name, err)
	}
	return nil
}

// delLink deletes l; already gone is fine.
func (p *Plugger) delLink(l netlink.Link) error {
	if err := p.h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return err
	}
	return nil
}

// tapMAC is the host end's MAC: the VIF's with the first octet 0xfe, as
// libvirt gives nova's taps, so that a tap never lends the bridge its
// (lowest) address and the bridge's MAC stays stable.
func tapMAC(mac net.HardwareAddr) net.HardwareAddr {
	t := slices.Clone(mac)
	t[0] = 0xfe
	return t
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

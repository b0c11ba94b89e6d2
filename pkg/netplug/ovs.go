package netplug

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// Open vSwitch VIFs, the way os-vif's ovs plugin plugs them for nova
// (vif_plug_ovs/ovs.py, ovsdb/ovsdb_lib.py):
//
//   - plain: the tap… host end is a port of the integration bridge (br-int)
//     whose Interface carries the external ids the OVS and OVN agents look
//     for (iface-id, iface-status, attached-mac, vm-uuid);
//   - hybrid (vif_details ovs_hybrid_plug, for iptables security groups):
//     the tap… is in a per-port linux bridge qbr…, linked to br-int by the
//     veth pair qvb… (in qbr…) / qvo… (the OVS port with the external ids).
//
// ovs-vsctl does the OVSDB work, one transaction per plug or unplug, always
// with --timeout and under the caller's context. Like ovs-vsctl's default it
// waits until ovs-vswitchd has applied the change, so a plugged VIF has its
// OpenFlow port when Plug returns; a port ovs-vswitchd fails to set up is an
// error.

// Hybrid plug name prefixes (os-vif's).
const (
	qbrPrefix = "qbr"
	qvbPrefix = "qvb"
	qvoPrefix = "qvo"
)

// DefaultOVSTimeout bounds each ovs-vsctl call when OVSConfig.Timeout is 0:
// os-vif's ovs_vsctl_timeout.
const DefaultOVSTimeout = 120 * time.Second

// ErrOVS is wrapped by errors of ovs-vsctl and of ovs-vswitchd's setup of a
// bridge or port.
var ErrOVS = errors.New("open vswitch")

// OVSPort is what an OVS VIF needs beyond a linuxbridge one.
type OVSPort struct {
	// InterfaceID is external-ids:iface-id, the Neutron port id (nova's
	// ovs_interfaceid); VIF.ID when empty.
	InterfaceID string
	// InstanceUUID is external-ids:vm-uuid; omitted when empty.
	InstanceUUID string
	// Hybrid is vif_details ovs_hybrid_plug: qbr…/qvb…/qvo….
	Hybrid bool
	// DatapathType is vif_details datapath_type ("system", "netdev"). It
	// is set on the bridge when given; empty leaves an existing bridge
	// alone and makes a new one with OVS's default (system).
	DatapathType string
}

// OVSConfig says how to reach Open vSwitch. The zero value runs ovs-vsctl
// from PATH against the local default database.
type OVSConfig struct {
	// Vsctl is the ovs-vsctl program; "ovs-vsctl" when empty.
	Vsctl string
	// DB is ovs-vsctl's --db ("unix:/run/openvswitch/db.sock",
	// "tcp:127.0.0.1:6640"); ovs-vsctl's default when empty.
	DB string
	// Timeout is each call's --timeout (whole seconds, at least 1, and
	// never past the context's deadline); DefaultOVSTimeout when 0.
	Timeout time.Duration
}

// HybridNames are the hybrid plug's devices for a port: ("qbr"+id)[:14]
// and the same with "qvb" and "qvo".
func HybridNames(portID string) (qbr, qvb, qvo string) {
	return truncName(qbrPrefix + portID), truncName(qvbPrefix + portID), truncName(qvoPrefix + portID)
}

// hybridNames derives the hybrid names from the port id, or from the tap's
// name when the id is unknown (an Unplug given only DevName): tap… and qbr…
// share the 11 characters after the prefix.
func (vif VIF) hybridNames() (qbr, qvb, qvo string) {
	if vif.ID != "" {
		return HybridNames(vif.ID)
	}
	rest := strings.TrimPrefix(vif.DevName, tapPrefix)
	return qbrPrefix + rest, qvbPrefix + rest, qvoPrefix + rest
}

// plugOVS plugs an OVS VIF under the Plug lock: the tap/tin pair (withTap)
// and the OVS port, through qbr…/qvb…/qvo… for a hybrid plug.
func (p *Plugger) plugOVS(ctx context.Context, log *slog.Logger, vif VIF, mac net.HardwareAddr, withTap bool) error {
	port := vif.DevName
	if vif.OVS.Hybrid {
		qbr, qvb, qvo := vif.hybridNames()
		br, err := p.ensureBridge(ctx, log, qbr, vif.MTU)
		if err != nil {
			return err
		}
		if err := p.quietBridge(br); err != nil {
			return err
		}
		if withTap {
			if err := p.ensureVeth(ctx, log, tapSpec(log, vif, mac, br)); err != nil {
				return err
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		mtu := vif.MTU
		if mtu == 0 {
			mtu = br.Attrs().MTU
		}
		if err := p.ensureVeth(ctx, log, vethSpec{host: qvb, peer: qvo, master: br, hostMTU: br.Attrs().MTU, peerMTU: mtu, link: true}); err != nil {
			return err
		}
		port = qvo
	} else if withTap {
		// What a hybrid plug of this port left (the binding changed).
		qbr, qvb, qvo := vif.hybridNames()
		for _, name := range []string{qvb, qvo, qbr} {
			if l, err := p.deleteByName(ctx, name); err != nil {
				return err
			} else if l != nil {
				log.Warn("deleted hybrid plug leftover", "dev", name)
			}
		}
		if err := p.ensureVeth(ctx, log, vethSpec{host: vif.DevName, peer: PeerName(vif.DevName),
			hostMAC: tapMAC(mac), peerMAC: mac, hostMTU: vif.MTU, peerMTU: vif.MTU}); err != nil {
			return err
		}
	}
	if !withTap && !vif.OVS.Hybrid {
		if _, err := p.vsctl(ctx, ovsBridgeArgs(vif)...); err != nil {
			return err
		}
		return nil
	}
	_, err := p.vsctl(ctx, ovsPortArgs(vif, mac, port, false)...)
	if errors.Is(err, errPortElsewhere) {
		// A port of that name on another bridge: move it, as os-vif's
		// older del-port/add-port transaction did.
		log.Warn("moving ovs port from another bridge", "ovs_port", port)
		_, err = p.vsctl(ctx, ovsPortArgs(vif, mac, port, true)...)
	}
	if err != nil {
		return err
	}
	log.Debug("ovs vif plugged", "ovs_port", port, "hybrid", vif.OVS.Hybrid)
	return nil
}

// quietBridge turns multicast snooping off on a hybrid plug's qbr, as
// os-vif's ensure_bridge does: the bridge only links one VIF to OVS.
func (p *Plugger) quietBridge(br netlink.Link) error {
	if b, ok := br.(*netlink.Bridge); ok && b.MulticastSnooping != nil && !*b.MulticastSnooping {
		return nil
	}
	// A bare bridge: BridgeSetMcastSnoop sends every attribute of the link
	// it is given, and the kernel refuses some of a dumped bridge's.
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.Index = br.Attrs().Name, br.Attrs().Index
	if err := p.h.BridgeSetMcastSnoop(&netlink.Bridge{LinkAttrs: attrs}, false); err != nil {
		return fmt.Errorf("bridge %s multicast snooping off: %w", br.Attrs().Name, err)
	}
	return nil
}

// PrepareOVS readies the host side of an OVS VIF whose veth the container
// backend makes itself (libvirt-lxc adds its tap to OVS from <virtualport
// type="openvswitch">): the OVS bridge and, for a hybrid plug, qbr… linked
// to it by qvb…/qvo… with the port's external ids. It returns the bridge the
// backend's tap joins: vif.Bridge, or qbr… for a hybrid plug. Unplug undoes
// it.
func (p *Plugger) PrepareOVS(ctx context.Context, vif VIF) (bridge string, err error) {
	if vif.OVS == nil {
		return "", fmt.Errorf("prepare ovs %s: not an ovs vif: %w", vif.DevName, ErrInvalid)
	}
	mac, err := vif.validate()
	if err != nil {
		return "", fmt.Errorf("prepare ovs %s: %w", vif.DevName, err)
	}
	unlock, err := p.lock(ctx)
	if err != nil {
		return "", fmt.Errorf("prepare ovs %s: %w", vif.DevName, err)
	}
	defer unlock()
	log := p.log.With("port", vif.ID, "dev", vif.DevName, "bridge", vif.Bridge)
	if err := p.plugOVS(ctx, log, vif, mac, false); err != nil {
		return "", fmt.Errorf("prepare ovs %s: %w", vif.DevName, err)
	}
	if vif.OVS.Hybrid {
		qbr, _, _ := vif.hybridNames()
		return qbr, nil
	}
	return vif.Bridge, nil
}

// unplugOVS removes the OVS ports of either plug style (like os-vif, which
// unplugs the hybrid way whenever qbr… exists), then the devices: tap (and
// its peer), a stray tin, qvb… (and qvo…), a stray qvo…, qbr…. The device
// deletions run even when ovs-vsctl fails, whose error is returned.
func (p *Plugger) unplugOVS(ctx context.Context, log *slog.Logger, vif VIF) error {
	qbr, qvb, qvo := vif.hybridNames()
	_, verr := p.vsctl(ctx, "--", "--if-exists", "del-port", vif.DevName, "--", "--if-exists", "del-port", qvo)
	if err := ctx.Err(); err != nil {
		return err
	}
	var gone []string
	for _, name := range []string{vif.DevName, PeerName(vif.DevName), qvb, qvo, qbr} {
		l, err := p.deleteByName(ctx, name)
		if err != nil {
			return errors.Join(verr, err)
		}
		if l != nil {
			gone = append(gone, name)
		}
	}
	if verr != nil {
		return verr
	}
	if len(gone) > 0 {
		log.Info("unplugged ovs vif", "deleted", gone)
	}
	return nil
}

// attachedOVS reports whether an OVS VIF is wired: the tap exists (in qbr…
// for a hybrid plug) and its OVS port (tap… or qvo…) is on vif.Bridge.
func (p *Plugger) attachedOVS(ctx context.Context, vif VIF) (bool, error) {
	tap, err := p.linkByName(vif.DevName)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	port := vif.DevName
	if vif.OVS.Hybrid {
		qbr, _, qvo := vif.hybridNames()
		br, err := p.linkByName(qbr)
		if isNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("look up %s: %w", qbr, err)
		}
		if tap.Attrs().MasterIndex != br.Attrs().Index {
			return false, nil
		}
		port = qvo
	}
	out, err := p.vsctl(ctx, "--no-wait", "port-to-br", port)
	if err != nil {
		if strings.Contains(err.Error(), "no port named") {
			return false, nil
		}
		return false, err
	}
	return strings.TrimSpace(out) == vif.Bridge, nil
}

// ovsBridgeArgs ensures the VIF's OVS bridge (os-vif's ensure_ovs_bridge).
func ovsBridgeArgs(vif VIF) []string {
	a := []string{"--", "--may-exist", "add-br", vif.Bridge}
	if dp := vif.OVS.DatapathType; dp != "" {
		a = append(a, "--", "set", "Bridge", vif.Bridge, "datapath_type="+dp)
	}
	return a
}

// ovsPortArgs ensures the bridge and port on it with os-vif's external ids
// (create_ovs_vif_port), in one transaction that also deletes the port the
// other plug style would have made (tap… or qvo…), so that no two ports
// carry the iface-id. replace deletes a port of that name first, wherever
// it is.
func ovsPortArgs(vif VIF, mac net.HardwareAddr, port string, replace bool) []string {
	a := ovsBridgeArgs(vif)
	other := vif.DevName
	if port == vif.DevName {
		_, _, other = vif.hybridNames()
	}
	a = append(a, "--", "--if-exists", "del-port", other)
	if replace {
		a = append(a, "--", "--if-exists", "del-port", port, "--", "add-port", vif.Bridge, port)
	} else {
		a = append(a, "--", "--may-exist", "add-port", vif.Bridge, port)
	}
	id := vif.OVS.InterfaceID
	if id == "" {
		id = vif.ID
	}
	a = append(a, "--", "set", "Interface", port,
		"external-ids:iface-id="+id,
		"external-ids:iface-status=active",
		"external-ids:attached-mac="+mac.String())
	if vif.OVS.InstanceUUID != "" {
		a = append(a, "external-ids:vm-uuid="+vif.OVS.InstanceUUID)
	}
	return a
}

// errPortElsewhere marks ovs-vsctl's refusal of --may-exist add-port for a
// port that exists on another bridge.
var errPortElsewhere = errors.New("port exists on another bridge")

// vsctl runs ovs-vsctl with --timeout (and --db) under ctx and returns its
// standard output.
func (p *Plugger) vsctl(ctx context.Context, args ...string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	c := p.ovs
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultOVSTimeout
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	secs := max(int64((timeout+time.Second-1)/time.Second), 1)
	full := make([]string, 0, len(args)+2)
	full = append(full, "--timeout="+strconv.FormatInt(secs, 10))
	if c.DB != "" {
		full = append(full, "--db="+c.DB)
	}
	full = append(full, args...)
	prog := c.Vsctl
	if prog == "" {
		prog = "ovs-vsctl"
	}
	cmd := exec.CommandContext(ctx, prog, full...)
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	msg := strings.TrimSpace(stderr.String())
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return "", fmt.Errorf("ovs-vsctl %s: %w", strings.Join(args, " "), cerr)
		}
		if strings.Contains(msg, "already exists on bridge") || strings.Contains(msg, "is actually attached to bridge") {
			err = fmt.Errorf("%w: %w", err, errPortElsewhere)
		}
		return "", fmt.Errorf("ovs-vsctl %s: %w: %w: %s", strings.Join(args, " "), ErrOVS, err, msg)
	}
	// ovs-vsctl exits 0 when ovs-vswitchd could not set up a new bridge or
	// port (no datapath, no such device) and says so on stderr.
	if strings.Contains(msg, "Error detected while setting up") {
		return "", fmt.Errorf("ovs-vsctl %s: %w: %s", strings.Join(args, " "), ErrOVS, msg)
	}
	return stdout.String(), nil
}

package netplug

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Route is one static route inside a container: Neutron's subnet
// host_routes (destination, nexthop).
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

// AddRoutes installs routes through dev in the network namespace of the
// process pid (a container's init), replacing routes to the same
// destinations. The netlink socket is opened in that namespace, so no
// thread changes namespace.
func AddRoutes(ctx context.Context, pid int, dev string, routes []Route) error {
	if len(routes) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := handleAt(pid)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("%s in the container: %w", dev, err)
	}
	for _, r := range routes {
		dst := &net.IPNet{IP: r.Dst.Masked().Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())}
		rt := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Gw: r.Via.AsSlice()}
		if err := h.RouteReplace(rt); err != nil {
			return fmt.Errorf("route %s via %s dev %s: %w", r.Dst, r.Via, dev, err)
		}
	}
	return nil
}

// GuestNIC is the configuration of a NIC inside a container.
type GuestNIC struct {
	Name string // eth1, …
	// MAC finds the NIC when no interface is called Name yet (a backend
	// named it otherwise); it is then renamed to Name.
	MAC      string
	MTU      int
	Addrs    []netip.Prefix
	Gateway4 netip.Addr // a default route is added only if the container has none
	Gateway6 netip.Addr
}

// MoveIntoContainer hands the host device dev (the peer of a tap) to the
// network namespace of pid and configures it there: renamed, MTU, up,
// addresses, default routes when missing. It is how a NIC is hot-plugged
// into a running container. On failure inside the namespace the device is
// deleted (which removes its tap too).
func MoveIntoContainer(ctx context.Context, dev string, pid int, nic GuestNIC) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	link, err := netlink.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("%s: %w", dev, err)
	}
	if err := netlink.LinkSetNsPid(link, pid); err != nil {
		return fmt.Errorf("move %s into the netns of pid %d: %w", dev, pid, err)
	}
	h, err := handleAt(pid)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("%s in the container: %w", dev, err)
	}
	defer func() {
		if err != nil {
			_ = h.LinkDel(l)
		}
	}()
	if nic.Name != "" && nic.Name != dev {
		if err := h.LinkSetName(l, nic.Name); err != nil {
			return fmt.Errorf("rename %s to %s: %w", dev, nic.Name, err)
		}
	}
	return configure(h, l, nic)
}

// ConfigureInContainer configures the NIC nic.Name that is already in the
// network namespace of pid (a backend made it there): MTU, up, addresses,
// default routes when missing.
func ConfigureInContainer(ctx context.Context, pid int, nic GuestNIC) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := handleAt(pid)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(nic.Name)
	if err != nil && nic.MAC != "" {
		l, err = linkByMAC(h, nic.MAC)
		if err == nil {
			if err := h.LinkSetDown(l); err != nil {
				return fmt.Errorf("rename %s: %w", l.Attrs().Name, err)
			}
			if err := h.LinkSetName(l, nic.Name); err != nil {
				return fmt.Errorf("rename %s to %s: %w", l.Attrs().Name, nic.Name, err)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("%s in the container: %w", nic.Name, err)
	}
	return configure(h, l, nic)
}

func linkByMAC(h *netlink.Handle, mac string) (netlink.Link, error) {
	links, err := linkList(h)
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if strings.EqualFold(l.Attrs().HardwareAddr.String(), mac) {
			return l, nil
		}
	}
	return nil, fmt.Errorf("no interface with MAC %s", mac)
}

func configure(h *netlink.Handle, l netlink.Link, nic GuestNIC) error {
	if nic.MTU > 0 {
		if err := h.LinkSetMTU(l, nic.MTU); err != nil {
			return fmt.Errorf("mtu of %s: %w", nic.Name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("up %s: %w", nic.Name, err)
	}
	for _, a := range nic.Addrs {
		ipn := &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}
		if err := h.AddrReplace(l, &netlink.Addr{IPNet: ipn}); err != nil {
			return fmt.Errorf("address %s on %s: %w", a, nic.Name, err)
		}
	}
	for _, gw := range []netip.Addr{nic.Gateway4, nic.Gateway6} {
		if !gw.IsValid() {
			continue
		}
		family := netlink.FAMILY_V4
		if gw.Is6() {
			family = netlink.FAMILY_V6
		}
		routes, err := retryDump(func() ([]netlink.Route, error) { return h.RouteList(nil, family) })
		if err != nil {
			return fmt.Errorf("routes in the container: %w", err)
		}
		hasDefault := false
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask) {
				hasDefault = true
			}
		}
		if hasDefault {
			continue
		}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	return nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

// RemoveFromContainer deletes the NIC name in the network namespace of pid
// (and so its tap on the host). A missing NIC is not an error.
func RemoveFromContainer(ctx context.Context, pid int, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := handleAt(pid)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("%s in the container: %w", name, err)
	}
	if err := h.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s in the container: %w", name, err)
	}
	return nil
}

// handleAt opens a netlink handle whose sockets live in the network
// namespace of pid: no thread ever switches namespace.
func handleAt(pid int) (*netlink.Handle, error) {
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		return nil, fmt.Errorf("netns of pid %d: %w", pid, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in netns of pid %d: %w", pid, err)
	}
	return h, nil
}

package netplug

import (
	"context"
	"fmt"
	"net"
	"net/netip"

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
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		return fmt.Errorf("netns of pid %d: %w", pid, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink in netns of pid %d: %w", pid, err)
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

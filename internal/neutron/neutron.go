// Package neutron is what nova-compute does with Neutron for an instance
// (nova/network/neutron.py): create or bind its ports to this host, build
// nova's network_info model from the ports, networks and subnets, and
// delete or unbind the ports when the instance goes.
package neutron

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/portsbinding"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/networks"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/ports"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/subnets"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
)

// nicNameLen is nova's NIC_NAME_LEN: tap and bridge names are cut to it.
const nicNameLen = 14

// ErrBinding is a port Neutron could not bind to this host.
var ErrBinding = errors.New("port binding failed")

// Client talks to Neutron with the [neutron] credentials.
type Client struct {
	sc  *gophercloud.ServiceClient
	log *slog.Logger
}

// New returns a client over sc (the "network" endpoint).
func New(sc *gophercloud.ServiceClient, log *slog.Logger) *Client {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{sc: sc, log: log.With("component", "neutron")}
}

// Request is one requested network or port (nova's NetworkRequest).
type Request struct {
	NetworkID string
	PortID    string
	Address   string
}

// Instance is what port creation and binding need to know of an instance.
type Instance struct {
	UUID      string
	ProjectID string
	// AZ is the availability zone; device_owner is "compute:<az>".
	AZ string
}

type port struct {
	ports.Port
	portsbinding.PortsBindingExt
}

// Allocate is allocate_for_instance: a port is created on each requested
// network, and every port (created or given) is bound to host with the
// instance as its device. It returns the instance's network_info and the
// ids of the ports it created (nova deletes those on delete and only
// unbinds the others). On failure the ports it created are deleted and the
// given ones unbound.
func (c *Client) Allocate(ctx context.Context, inst Instance, host string, reqs []Request) (nw novaobj.NetworkInfo, created []string, err error) {
	owner := "compute:" + orDefault(inst.AZ, "nova")
	var bound []string
	defer func() {
		if err == nil {
			return
		}
		cctx := context.WithoutCancel(ctx)
		for _, id := range created {
			if derr := ports.Delete(cctx, c.sc, id).ExtractErr(); derr != nil && !gophercloud.ResponseCodeIs(derr, 404) {
				c.log.Warn("cannot delete a port after a failed allocation", "port", id, "error", derr)
			}
		}
		for _, id := range bound {
			if !slices.Contains(created, id) {
				c.unbind(cctx, id)
			}
		}
	}()
	var all []string
	for _, r := range reqs {
		id := r.PortID
		if id == "" {
			if r.NetworkID == "" {
				return nil, created, errors.New("a requested network has neither network nor port")
			}
			opts := ports.CreateOpts{NetworkID: r.NetworkID, DeviceID: inst.UUID, DeviceOwner: owner, ProjectID: inst.ProjectID}
			if r.Address != "" {
				opts.FixedIPs = []ports.IP{{IPAddress: r.Address}}
			}
			var p port
			err := ports.Create(ctx, c.sc, portsbinding.CreateOptsExt{CreateOptsBuilder: opts, HostID: host}).ExtractInto(&p)
			if err != nil {
				return nil, created, fmt.Errorf("create port on network %s: %w", r.NetworkID, err)
			}
			id = p.ID
			created = append(created, id)
		} else {
			devID, devOwner := inst.UUID, owner
			upd := portsbinding.UpdateOptsExt{UpdateOptsBuilder: ports.UpdateOpts{DeviceID: &devID, DeviceOwner: &devOwner}, HostID: &host}
			if err := ports.Update(ctx, c.sc, id, upd).Err; err != nil {
				return nil, created, fmt.Errorf("bind port %s: %w", id, err)
			}
		}
		bound = append(bound, id)
		all = append(all, id)
	}
	nw, err = c.networkInfo(ctx, all, created)
	return nw, created, err
}

func (c *Client) unbind(ctx context.Context, id string) {
	empty := ""
	var none string
	upd := portsbinding.UpdateOptsExt{UpdateOptsBuilder: ports.UpdateOpts{DeviceID: &empty, DeviceOwner: &empty}, HostID: &none}
	if err := ports.Update(ctx, c.sc, id, upd).Err; err != nil && !gophercloud.ResponseCodeIs(err, 404) {
		c.log.Warn("cannot unbind port", "port", id, "error", err)
	}
}

// NetworkInfo is get_instance_nw_info: the model of the ports whose device
// is the instance, in the order of ids when given (the instance's VIF
// order), else Neutron's. created names the ports nova made (not
// preserved on delete).
func (c *Client) NetworkInfo(ctx context.Context, instanceUUID string, order []string, created []string) (novaobj.NetworkInfo, error) {
	pages, err := ports.List(c.sc, ports.ListOpts{DeviceID: instanceUUID}).AllPages(ctx)
	if err != nil {
		return nil, fmt.Errorf("list ports of %s: %w", instanceUUID, err)
	}
	var ps []port
	if err := ports.ExtractPortsInto(pages, &ps); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(ps))
	for _, id := range order {
		for _, p := range ps {
			if p.ID == id {
				ids = append(ids, id)
			}
		}
	}
	for _, p := range ps {
		if !slices.Contains(ids, p.ID) {
			ids = append(ids, p.ID)
		}
	}
	return c.networkInfo(ctx, ids, created)
}

func (c *Client) networkInfo(ctx context.Context, ids, created []string) (novaobj.NetworkInfo, error) {
	nw := make(novaobj.NetworkInfo, 0, len(ids))
	nets := map[string]*networks.Network{}
	for _, id := range ids {
		var p port
		if err := ports.Get(ctx, c.sc, id).ExtractInto(&p); err != nil {
			return nil, fmt.Errorf("port %s: %w", id, err)
		}
		switch p.VIFType {
		case "binding_failed", "unbound", "":
			return nil, fmt.Errorf("port %s: vif_type %q: %w", id, p.VIFType, ErrBinding)
		}
		net := nets[p.NetworkID]
		if net == nil {
			n, err := networks.Get(ctx, c.sc, p.NetworkID).Extract()
			if err != nil {
				return nil, fmt.Errorf("network %s: %w", p.NetworkID, err)
			}
			net, nets[p.NetworkID] = n, n
		}
		v, err := c.vif(ctx, p, net, !slices.Contains(created, id))
		if err != nil {
			return nil, err
		}
		nw = append(nw, v)
	}
	return nw, nil
}

// vif is nova's _build_vif_model and _nw_info_build_network.
func (c *Client) vif(ctx context.Context, p port, net *networks.Network, preserve bool) (novaobj.VIF, error) {
	meta := map[string]any{"tenant_id": p.ProjectID, "injected": false}
	var mtu struct {
		MTU int `json:"mtu"`
	}
	if err := networks.Get(ctx, c.sc, net.ID).ExtractInto(&mtu); err == nil && mtu.MTU > 0 {
		meta["mtu"] = float64(mtu.MTU)
	}
	n := novaobj.Network{ID: p.NetworkID, Label: net.Name, Meta: meta}
	if p.VIFType == "bridge" {
		n.Bridge = trunc("brq"+p.NetworkID, nicNameLen)
		meta["should_create_bridge"] = true
	}
	bySubnet := map[string][]string{}
	var order []string
	for _, ip := range p.FixedIPs {
		if _, ok := bySubnet[ip.SubnetID]; !ok {
			order = append(order, ip.SubnetID)
		}
		bySubnet[ip.SubnetID] = append(bySubnet[ip.SubnetID], ip.IPAddress)
	}
	for _, sid := range order {
		sn, err := subnets.Get(ctx, c.sc, sid).Extract()
		if err != nil {
			return novaobj.VIF{}, fmt.Errorf("subnet %s: %w", sid, err)
		}
		s := novaobj.Subnet{CIDR: sn.CIDR, Version: sn.IPVersion, Meta: map[string]any{}}
		if sn.GatewayIP != "" {
			s.Gateway = &novaobj.IP{Address: sn.GatewayIP, Type: "gateway", Version: sn.IPVersion, Meta: map[string]any{}}
		}
		for _, d := range sn.DNSNameservers {
			s.DNS = append(s.DNS, novaobj.IP{Address: d, Type: "dns", Version: ipVersion(d), Meta: map[string]any{}})
		}
		for _, r := range sn.HostRoutes {
			s.Routes = append(s.Routes, novaobj.Route{CIDR: r.DestinationCIDR,
				Gateway: &novaobj.IP{Address: r.NextHop, Type: "gateway", Version: ipVersion(r.NextHop), Meta: map[string]any{}}, Meta: map[string]any{}})
		}
		for _, a := range bySubnet[sid] {
			s.IPs = append(s.IPs, novaobj.FixedIP{IP: novaobj.IP{Address: a, Type: "fixed", Version: ipVersion(a), Meta: map[string]any{}}, FloatingIPs: []novaobj.IP{}})
		}
		if sn.EnableDHCP {
			s.Meta["dhcp_server"] = nil
		}
		n.Subnets = append(n.Subnets, s)
	}
	var ovsID *string
	if p.VIFType == "ovs" {
		id := p.ID
		ovsID = &id
	}
	profile := p.Profile
	if profile == nil {
		profile = map[string]any{}
	}
	details := p.VIFDetails
	if details == nil {
		details = map[string]any{}
	}
	return novaobj.VIF{ID: p.ID, Address: p.MACAddress, Network: n, Type: p.VIFType, Details: details,
		Devname: trunc("tap"+p.ID, nicNameLen), OVSInterfaceID: ovsID, Active: p.Status == "ACTIVE",
		VNICType: orDefault(p.VNICType, "normal"), Profile: profile, PreserveOnDelete: preserve, Meta: map[string]any{}}, nil
}

// Deallocate is deallocate_for_instance: the instance's ports nova made are
// deleted, the others unbound (device and host cleared). Ports already gone
// are fine.
func (c *Client) Deallocate(ctx context.Context, instanceUUID string, nw novaobj.NetworkInfo) error {
	pages, err := ports.List(c.sc, ports.ListOpts{DeviceID: instanceUUID}).AllPages(ctx)
	if err != nil {
		return fmt.Errorf("list ports of %s: %w", instanceUUID, err)
	}
	ps, err := ports.ExtractPorts(pages)
	if err != nil {
		return err
	}
	preserve := map[string]bool{}
	for _, v := range nw {
		preserve[v.ID] = v.PreserveOnDelete
	}
	var errs []error
	for _, p := range ps {
		if keep, known := preserve[p.ID]; known && keep {
			c.unbind(ctx, p.ID)
			continue
		}
		if err := ports.Delete(ctx, c.sc, p.ID).ExtractErr(); err != nil && !gophercloud.ResponseCodeIs(err, 404) {
			errs = append(errs, fmt.Errorf("delete port %s: %w", p.ID, err))
		}
	}
	return errors.Join(errs...)
}

func ipVersion(a string) int {
	if ip, err := netip.ParseAddr(a); err == nil && ip.Is6() {
		return 6
	}
	return 4
}

func trunc(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func orDefault(s, d string) string {
	if strings.TrimSpace(s) == "" {
		return d
	}
	return s
}

// DeallocatePort is deallocate_port_for_instance: a port nova made is
// deleted, a preserved one (the user's) unbound.
func (c *Client) DeallocatePort(ctx context.Context, portID string, preserve bool) error {
	if preserve {
		c.unbind(ctx, portID)
		return nil
	}
	if err := ports.Delete(ctx, c.sc, portID).ExtractErr(); err != nil && !gophercloud.ResponseCodeIs(err, 404) {
		return fmt.Errorf("delete port %s: %w", portID, err)
	}
	return nil
}

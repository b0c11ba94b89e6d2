package compute

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/lxc-agent/lxc-agent/internal/neutron"
	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

func interfaceAttachFailed(uuid string, cause error) *rpc.Exception {
	e := rpc.NovaException("InterfaceAttachFailed", 500, fmt.Sprintf("Failed to attach network adapter device to %s", uuid),
		map[string]any{"instance_uuid": uuid})
	e.Err = cause
	return e
}

func portNotFound(portID string) *rpc.Exception {
	return rpc.NovaException("PortNotFound", 404, fmt.Sprintf("Port id %s could not be found.", portID), map[string]any{"port_id": portID})
}

func (m *Manager) hotplugger() (driver.NICHotplugger, error) {
	hp, ok := m.drv.(driver.NICHotplugger)
	if !ok {
		return nil, fmt.Errorf("interface hotplug: %w", driver.ErrUnsupported)
	}
	return hp, nil
}

// attachInterface is nova-compute's attach_interface (a call): the port is
// made or bound through Neutron when configured (else derived from the
// arguments, as standalone builds are), its tap plugged, the NIC hot-plugged
// into the container, the info cache updated; the new VIF is the answer.
func (m *Manager) attachInterface(ctx context.Context, req *rpc.Request) (any, error) {
	inst, rec, err := m.instanceOp(ctx, req)
	if err != nil {
		return nil, err
	}
	hp, err := m.hotplugger()
	if err != nil {
		return nil, rpc.NovaException("AttachInterfaceNotSupported", 400,
			fmt.Sprintf("Attaching interfaces is not supported for instance %s.", inst.UUID), map[string]any{"instance_uuid": inst.UUID})
	}
	var networkID, portID, requestedIP string
	for k, dst := range map[string]*string{"network_id": &networkID, "port_id": &portID, "requested_ip": &requestedIP} {
		if _, err := req.Arg(k, dst); err != nil {
			return nil, err
		}
	}
	log := m.logFor(req, inst.UUID)
	var vif novaobj.VIF
	created := false
	if m.networks != nil && m.nova != nil {
		project := inst.Obj.String("project_id")
		if project == "" {
			project = req.Context.ProjectID
		}
		nw, made, err := m.networks.Allocate(ctx, neutron.Instance{UUID: inst.UUID, ProjectID: project, AZ: inst.Obj.String("availability_zone")},
			m.cfg.Host, []neutron.Request{{NetworkID: networkID, PortID: portID, Address: requestedIP}})
		if err != nil {
			return nil, interfaceAttachFailed(inst.UUID, err)
		}
		if len(nw) != 1 {
			return nil, interfaceAttachFailed(inst.UUID, fmt.Errorf("neutron gave %d VIFs for one request", len(nw)))
		}
		vif, created = nw[0], len(made) > 0
	} else {
		if networkID == "" {
			return nil, interfaceAttachFailed(inst.UUID, errors.New("a network_id is needed without Neutron"))
		}
		if requestedIP != "" {
			if _, err := netip.ParseAddr(requestedIP); err != nil {
				return nil, fmt.Errorf("%w: requested_ip %q", rpc.ErrMalformed, requestedIP)
			}
		}
		// As a standalone build derives a VIF from requested_networks.
		recs, err := m.vifsFor(&novaobj.Instance{UUID: inst.UUID},
			[]novaobj.NetworkRequest{{NetworkID: networkID, PortID: portID, Address: requestedIP}})
		if err != nil {
			return nil, interfaceAttachFailed(inst.UUID, err)
		}
		vif = recs[0].modelVIF()
	}
	fail := func(err error) (any, error) {
		if m.networks != nil && m.nova != nil {
			if derr := m.networks.DeallocatePort(ctx, vif.ID, !created); derr != nil {
				log.Warn("cannot release the port of a failed attach", "port", vif.ID, "error", derr)
			}
		}
		return nil, interfaceAttachFailed(inst.UUID, err)
	}
	recs, err := m.vifsFor(&novaobj.Instance{UUID: inst.UUID, NetworkInfo: novaobj.NetworkInfo{vif}}, nil)
	if err != nil {
		return fail(err)
	}
	v := recs[0]
	v.Name = nextNICName(rec.VIFs)
	for _, old := range rec.VIFs {
		if old.PortID == v.PortID {
			return fail(fmt.Errorf("port %s is already attached", v.PortID))
		}
	}
	peer, err := m.plug(ctx, v.plugSpec())
	if err != nil {
		return fail(err)
	}
	v.Peer = peer
	nic, err := v.nic()
	if err != nil {
		_ = m.net.Unplug(ctx, v.plugSpec())
		return fail(err)
	}
	if err := hp.AttachNIC(ctx, inst.UUID, nic); err != nil {
		_ = m.net.Unplug(ctx, v.plugSpec())
		return fail(err)
	}
	if err := m.configureGuest(ctx, inst.UUID, []VIFRecord{v}); err != nil {
		log.Warn("routes of the attached interface", "error", err)
	}
	rec.VIFs = append(rec.VIFs, v)
	if err := m.store.Put(rec); err != nil {
		return nil, err
	}
	if m.nova != nil && m.networks != nil {
		nw := append(append(novaobj.NetworkInfo{}, inst.NetworkInfo...), vif)
		if err := m.nova.SaveInfoCache(ctx, req.Context, inst.UUID, nw); err != nil {
			log.Warn("cannot save network info after attach", "error", err)
		}
	}
	log.Info("interface attached", "port", v.PortID, "nic", v.Name, "tap", v.Tap)
	return vif, nil
}

// detachInterface is nova-compute's detach_interface (a cast): the NIC
// leaves the container, its tap is unplugged, the port is deleted (or
// unbound when it was the user's) and the info cache updated.
func (m *Manager) detachInterface(ctx context.Context, req *rpc.Request) (any, error) {
	inst, rec, err := m.instanceOp(ctx, req)
	if err != nil {
		return nil, err
	}
	var portID string
	if _, err := req.Arg("port_id", &portID); err != nil {
		return nil, err
	}
	idx := -1
	for i, v := range rec.VIFs {
		if v.PortID == portID {
			idx = i
		}
	}
	if idx < 0 {
		return nil, portNotFound(portID)
	}
	v := rec.VIFs[idx]
	if hp, err := m.hotplugger(); err == nil {
		nic, _ := v.nic()
		if err := hp.DetachNIC(ctx, inst.UUID, nic); err != nil {
			return nil, rpc.NovaException("InterfaceDetachFailed", 400,
				fmt.Sprintf("Failed to detach network adapter device from %s", inst.UUID), map[string]any{"instance_uuid": inst.UUID})
		}
	}
	if err := m.net.Unplug(ctx, v.plugSpec()); err != nil {
		return nil, fmt.Errorf("unplug %s: %w", v.Tap, err)
	}
	rec.VIFs = append(rec.VIFs[:idx:idx], rec.VIFs[idx+1:]...)
	if err := m.store.Put(rec); err != nil {
		return nil, err
	}
	if m.networks != nil && m.nova != nil {
		preserve := false
		var keep novaobj.NetworkInfo
		for _, nv := range inst.NetworkInfo {
			if nv.ID == portID {
				preserve = nv.PreserveOnDelete
				continue
			}
			keep = append(keep, nv)
		}
		if err := m.networks.DeallocatePort(ctx, portID, preserve); err != nil {
			m.logFor(req, inst.UUID).Warn("cannot release the detached port", "port", portID, "error", err)
		}
		if err := m.nova.SaveInfoCache(ctx, req.Context, inst.UUID, keep); err != nil {
			return nil, fmt.Errorf("save network info after detach: %w", err)
		}
	}
	m.logFor(req, inst.UUID).Info("interface detached", "port", portID, "nic", v.Name)
	return nil, nil
}

// nextNICName is the first ethN no VIF of the instance uses.
func nextNICName(vifs []VIFRecord) string {
	used := map[string]bool{}
	for _, v := range vifs {
		used[v.Name] = true
	}
	for i := 0; ; i++ {
		if n := fmt.Sprintf("eth%d", i); !used[n] {
			return n
		}
	}
}

package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// externalInstanceEvent is nova-compute's external_instance_event (a cast
// from nova-api, for events Neutron and Cinder post): network-changed
// refreshes the instance's network_info from Neutron into its info cache;
// network-vif-deleted drops the port from it and unplugs its tap; the
// events nova-compute only hands to waiting threads (network-vif-plugged,
// network-vif-unplugged) are logged, as the agent does not wait for them
// (it plugs the tap itself before the container starts).
func (m *Manager) externalInstanceEvent(ctx context.Context, req *rpc.Request) (any, error) {
	var rawInsts, rawEvents []json.RawMessage
	if _, err := req.Arg("instances", &rawInsts); err != nil {
		return nil, err
	}
	if _, err := req.Arg("events", &rawEvents); err != nil {
		return nil, err
	}
	insts := map[string]*novaobj.Instance{}
	for _, r := range rawInsts {
		inst, err := novaobj.DecodeInstance(r)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", rpc.ErrMalformed, err)
		}
		insts[inst.UUID] = inst
	}
	var errs []error
	for _, r := range rawEvents {
		ev, err := novaobj.Decode(r, "InstanceExternalEvent")
		if err != nil {
			return nil, fmt.Errorf("%w: %w", rpc.ErrMalformed, err)
		}
		name, tag, uuid := ev.String("name"), ev.String("tag"), ev.String("instance_uuid")
		inst := insts[uuid]
		log := m.logFor(req, uuid).With("event", name, "tag", tag, "status", ev.String("status"))
		if inst == nil {
			log.Warn("event for an instance not in the call")
			continue
		}
		switch name {
		case "network-changed":
			if err := m.refreshNetworkInfo(ctx, req, inst); err != nil {
				errs = append(errs, err)
			}
		case "network-vif-deleted":
			if err := m.vifDeleted(ctx, req, inst, tag); err != nil {
				errs = append(errs, err)
			}
		default:
			log.Info("external instance event")
		}
	}
	return nil, errors.Join(errs...)
}

// refreshNetworkInfo is get_instance_nw_info with a refresh: the model is
// rebuilt from Neutron (VIF order kept) and saved.
func (m *Manager) refreshNetworkInfo(ctx context.Context, req *rpc.Request, inst *novaobj.Instance) error {
	if m.networks == nil || m.nova == nil {
		return nil
	}
	var order, created []string
	for _, v := range inst.NetworkInfo {
		order = append(order, v.ID)
		if !v.PreserveOnDelete {
			created = append(created, v.ID)
		}
	}
	nw, err := m.networks.NetworkInfo(ctx, inst.UUID, order, created)
	if err != nil {
		return fmt.Errorf("refresh network info of %s: %w", inst.UUID, err)
	}
	if err := m.nova.SaveInfoCache(ctx, req.Context, inst.UUID, nw); err != nil {
		return fmt.Errorf("save network info of %s: %w", inst.UUID, err)
	}
	m.logFor(req, inst.UUID).Info("network info refreshed from neutron", "vifs", len(nw))
	return nil
}

// vifDeleted is _process_instance_vif_deleted_event: the port is gone in
// Neutron; its VIF leaves the info cache and its tap is unplugged.
func (m *Manager) vifDeleted(ctx context.Context, req *rpc.Request, inst *novaobj.Instance, portID string) error {
	var keep novaobj.NetworkInfo
	for _, v := range inst.NetworkInfo {
		if v.ID != portID {
			keep = append(keep, v)
		}
	}
	if rec, ok := m.store.Get(inst.UUID); ok {
		var vifs []VIFRecord
		for _, v := range rec.VIFs {
			if v.PortID == portID {
				if err := m.net.Unplug(ctx, v.plugSpec()); err != nil {
					return fmt.Errorf("unplug port %s: %w", portID, err)
				}
				continue
			}
			vifs = append(vifs, v)
		}
		rec.VIFs = vifs
		if err := m.store.Put(rec); err != nil {
			return err
		}
	}
	if m.nova != nil && len(keep) != len(inst.NetworkInfo) {
		if err := m.nova.SaveInfoCache(ctx, req.Context, inst.UUID, keep); err != nil {
			return fmt.Errorf("save network info of %s: %w", inst.UUID, err)
		}
	}
	m.logFor(req, inst.UUID).Info("port deleted in neutron: unplugged", "port", portID)
	return nil
}

package libvirtlxc

import (
	"context"
	"fmt"
	"strings"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/netplug"
)

var _ driver.NICHotplugger = (*Driver)(nil)

// AttachNIC implements driver.NICHotplugger with virDomainAttachDeviceFlags
// (live and in the definition): libvirt makes the veth pair, puts the tap
// in the bridge and the container end, named nic.Name, in the container;
// the driver then sets the MTU on both ends and the addresses and default
// route inside, which libvirt's LXC driver does not do for a hot-plugged
// interface.
func (d *Driver) AttachNIC(ctx context.Context, id string, nic driver.NIC) error {
	defer d.lock(id)()
	iface := nicInterface(0, nic)
	iface.Guest = &libvirtxml.DomainInterfaceGuest{Dev: nic.Name}
	doc, err := iface.Marshal()
	if err != nil {
		return fmt.Errorf("libvirt-lxc: attach nic to %s: %w", id, err)
	}
	var initPID int
	err = d.onDomain(ctx, "attach nic", id, func(dom *libvirt.Domain) error {
		flags := libvirt.DOMAIN_DEVICE_MODIFY_CONFIG
		st, _, err := dom.GetState()
		if err != nil {
			return err
		}
		if active(st) {
			flags |= libvirt.DOMAIN_DEVICE_MODIFY_LIVE
			if ctrl, err := dom.GetID(); err == nil {
				initPID, _ = findInit(int(ctrl))
			}
		}
		return dom.AttachDeviceFlags(doc, flags)
	})
	if err != nil {
		return fail("attach nic", id, err)
	}
	if initPID > 0 {
		// libvirt 9.0 ignores <guest dev> on a hot-plugged interface: the
		// container end is found by its MAC and renamed.
		if err := netplug.ConfigureInContainer(ctx, initPID, netplug.GuestNIC{Name: nic.Name, MAC: nic.MAC, MTU: nic.MTU,
			Addrs: nic.Addrs, Gateway4: nic.Gateway4, Gateway6: nic.Gateway6}); err != nil {
			return fmt.Errorf("libvirt-lxc: attach nic to %s: %w", id, err)
		}
		if err := setMTUs(initPID, []liveNIC{{Tap: nic.Tap, Guest: nic.Name, MTU: nic.MTU}}); err != nil {
			return fmt.Errorf("libvirt-lxc: attach nic to %s: %w", id, err)
		}
	}
	d.log.Info("nic attached", "id", id, "nic", nic.Name, "tap", nic.Tap, "live", initPID > 0)
	return nil
}

// DetachNIC implements driver.NICHotplugger with
// virDomainDetachDeviceFlags, matching the interface by MAC (or tap).
func (d *Driver) DetachNIC(ctx context.Context, id string, nic driver.NIC) error {
	defer d.lock(id)()
	err := d.onDomain(ctx, "detach nic", id, func(dom *libvirt.Domain) error {
		cur, err := dom.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE)
		if err != nil {
			return err
		}
		var def libvirtxml.Domain
		if err := def.Unmarshal(cur); err != nil {
			return err
		}
		var found *libvirtxml.DomainInterface
		if def.Devices != nil {
			for i := range def.Devices.Interfaces {
				in := &def.Devices.Interfaces[i]
				if in.MAC != nil && nic.MAC != "" && strings.EqualFold(in.MAC.Address, nic.MAC) ||
					in.Target != nil && nic.Tap != "" && in.Target.Dev == nic.Tap {
					found = in
					break
				}
			}
		}
		if found == nil {
			return nil // not there: nothing to detach
		}
		doc, err := found.Marshal()
		if err != nil {
			return err
		}
		flags := libvirt.DOMAIN_DEVICE_MODIFY_CONFIG
		if st, _, err := dom.GetState(); err == nil && active(st) {
			flags |= libvirt.DOMAIN_DEVICE_MODIFY_LIVE
		}
		return dom.DetachDeviceFlags(doc, flags)
	})
	if err != nil {
		return fail("detach nic", id, err)
	}
	d.log.Info("nic detached", "id", id, "nic", nic.Name, "tap", nic.Tap)
	return nil
}

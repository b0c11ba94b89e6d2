package golxc

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	lxc "github.com/lxc/go-lxc"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/netplug"
)

var _ driver.NICHotplugger = (*Driver)(nil)

// AttachNIC implements driver.NICHotplugger: nic.HostDev (the tap's peer,
// made by pkg/netplug) moves into the running container's network
// namespace and is configured there (name, MTU, addresses, default route
// when the container has none); the NIC is appended to the definition
// (config and spec.json) for later starts.
func (d *Driver) AttachNIC(ctx context.Context, id string, nic driver.NIC) error {
	defer d.lock(id)()
	c, err := d.open(id)
	if err != nil {
		return err
	}
	defer c.Release()
	spec, err := d.Spec(id)
	if err != nil {
		return err
	}
	for _, n := range spec.NICs {
		if n.Name == nic.Name || n.MAC == nic.MAC && nic.MAC != "" {
			return fmt.Errorf("golxc: attach nic %s to %s: %w", nic.Name, id, driver.ErrAlreadyExists)
		}
	}
	if c.State() != lxc.STOPPED {
		pid := c.InitPid()
		if pid <= 0 {
			return fmt.Errorf("golxc: attach nic to %s: no init: %w", id, driver.ErrInvalidState)
		}
		if err := netplug.MoveIntoContainer(ctx, nic.HostDev, pid, netplug.GuestNIC{Name: nic.Name, MTU: nic.MTU,
			Addrs: nic.Addrs, Gateway4: nic.Gateway4, Gateway6: nic.Gateway6}); err != nil {
			return fmt.Errorf("golxc: attach nic to %s: %w", id, err)
		}
	}
	spec.NICs = append(spec.NICs, nic)
	if err := d.redefine(id, spec); err != nil {
		return err
	}
	d.log.Info("nic attached", "id", id, "nic", nic.Name, "tap", nic.Tap, "live", c.State() != lxc.STOPPED)
	return nil
}

// DetachNIC implements driver.NICHotplugger: the NIC (by name) is deleted
// inside the running container, which removes its tap on the host too, and
// from the definition.
func (d *Driver) DetachNIC(ctx context.Context, id string, nic driver.NIC) error {
	defer d.lock(id)()
	c, err := d.open(id)
	if err != nil {
		return err
	}
	defer c.Release()
	spec, err := d.Spec(id)
	if err != nil {
		return err
	}
	keep := spec.NICs[:0:0]
	found := false
	for _, n := range spec.NICs {
		if n.Name == nic.Name || nic.Tap != "" && n.Tap == nic.Tap {
			found = true
			nic.Name = n.Name
			continue
		}
		keep = append(keep, n)
	}
	if c.State() != lxc.STOPPED && nic.Name != "" {
		if pid := c.InitPid(); pid > 0 {
			if err := netplug.RemoveFromContainer(ctx, pid, nic.Name); err != nil {
				return fmt.Errorf("golxc: detach nic from %s: %w", id, err)
			}
		}
	}
	if !found {
		return nil
	}
	spec.NICs = keep
	if err := d.redefine(id, spec); err != nil {
		return err
	}
	d.log.Info("nic detached", "id", id, "nic", nic.Name)
	return nil
}

// redefine writes spec as the container's config and spec.json.
func (d *Driver) redefine(id string, spec driver.Spec) error {
	if err := d.writeConfig(id, spec); err != nil {
		return err
	}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return fmt.Errorf("golxc: redefine %s: %w", id, err)
	}
	if err := writeFileAtomic(filepath.Join(d.dir(id), specName), append(b, '\n'), 0o640); err != nil {
		return fmt.Errorf("golxc: redefine %s: %w", id, err)
	}
	return nil
}

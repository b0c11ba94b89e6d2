package compute

import (
	"context"
	"errors"
	"fmt"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// ReconcileReport says what the agent found at start.
type ReconcileReport struct {
	Adopted  []string // records whose container is there, left as it is
	Cleaned  []string // half-built instances torn down (their builds replay from the journal)
	Resumed  []string // running before a host reboot, started again
	Unknown  []string // containers of this backend without a record: reported, never killed
	Vanished []string // records whose container is gone
	// Replugged are running instances whose taps or bridges were missing
	// (deleted meanwhile, or a host network restart) and were plugged again.
	Replugged []string
	Errors    []error
}

// Reconcile matches the backend's containers with the instance records after
// an agent restart or a host reboot: running containers are adopted as they
// are, half-built instances are cleaned (a journaled build then runs again),
// unknown containers are only reported, and with resumeGuests (nova's
// resume_guests_state_on_host_boot) instances that were running before a host
// reboot are started again.
func (m *Manager) Reconcile(ctx context.Context, resumeGuests bool) ReconcileReport {
	var rep ReconcileReport
	ids, err := m.drv.List(ctx)
	if err != nil {
		rep.Errors = append(rep.Errors, fmt.Errorf("list containers: %w", err))
	}
	known := map[string]bool{}
	for _, rec := range m.store.List() {
		known[rec.UUID] = true
		log := m.log.With("instance_uuid", rec.UUID, "vm_state", rec.VMState)
		switch rec.VMState {
		case StateError:
			continue
		case StateBuilding:
			log.Warn("build interrupted by an agent restart: cleaning up")
			if err := m.teardown(ctx, rec.UUID, rec.VIFs); err != nil {
				rep.Errors = append(rep.Errors, err)
				continue
			}
			rec.VMState, rec.Fault = StateError, "build interrupted by an agent restart"
			if err := m.store.Put(rec); err != nil {
				rep.Errors = append(rep.Errors, err)
			}
			rep.Cleaned = append(rep.Cleaned, rec.UUID)
			continue
		}
		info, err := m.drv.Info(ctx, rec.UUID)
		if errors.Is(err, driver.ErrNotFound) {
			log.Warn("instance record without a container")
			rep.Vanished = append(rep.Vanished, rec.UUID)
			continue
		}
		if err != nil {
			rep.Errors = append(rep.Errors, err)
			continue
		}
		if rec.VMState == StateActive && info.State == driver.Shutdown && resumeGuests {
			log.Info("resuming a guest that ran before the host rebooted")
			if err := m.powerOn(ctx, &rec, ""); err != nil {
				rep.Errors = append(rep.Errors, fmt.Errorf("resume %s: %w", rec.UUID, err))
				continue
			}
			if err := m.store.Put(rec); err != nil {
				rep.Errors = append(rep.Errors, err)
			}
			rep.Resumed = append(rep.Resumed, rec.UUID)
			continue
		}
		if info.State == driver.Running || info.State == driver.Paused {
			if n, err := m.replug(ctx, &rec); err != nil {
				rep.Errors = append(rep.Errors, fmt.Errorf("re-plug %s: %w", rec.UUID, err))
			} else if n > 0 {
				rep.Replugged = append(rep.Replugged, rec.UUID)
			}
		}
		rep.Adopted = append(rep.Adopted, rec.UUID)
	}
	for _, id := range ids {
		if !known[id] {
			m.log.Warn("container without an instance record: left alone", "container", id)
			rep.Unknown = append(rep.Unknown, id)
		}
	}
	return rep
}

// replug makes sure every VIF of a running instance is wired: the bridge
// exists and holds the tap. A tap that is gone took the container's end of
// the pair with it: a new pair is made and hot-plugged into the container
// (the backend must support NIC hotplug). It returns how many VIFs needed
// work.
func (m *Manager) replug(ctx context.Context, rec *Record) (int, error) {
	var n int
	for i := range rec.VIFs {
		v := &rec.VIFs[i]
		if v.Tap == "" {
			continue
		}
		tap, inBridge, err := m.net.Wired(ctx, v.plugSpec())
		if err != nil {
			return n, err
		}
		if tap && inBridge {
			continue
		}
		n++
		if tap { // the bridge went: make it and enslave the tap again
			if _, err := m.plug(ctx, v.plugSpec()); err != nil {
				return n, err
			}
			m.log.Info("tap re-plugged into its bridge", "instance_uuid", rec.UUID, "tap", v.Tap, "bridge", v.Bridge)
			continue
		}
		hp, err := m.hotplugger()
		if err != nil {
			return n, fmt.Errorf("tap %s is gone: %w", v.Tap, err)
		}
		peer, err := m.plug(ctx, v.plugSpec())
		if err != nil {
			return n, err
		}
		v.Peer = peer
		nic, err := v.nic()
		if err != nil {
			return n, err
		}
		_ = hp.DetachNIC(ctx, rec.UUID, nic) // the stale definition entry
		if err := hp.AttachNIC(ctx, rec.UUID, nic); err != nil {
			return n, fmt.Errorf("re-attach %s: %w", v.Name, err)
		}
		if err := m.configureGuest(ctx, rec.UUID, []VIFRecord{*v}); err != nil {
			return n, err
		}
		m.log.Info("missing tap re-created and its NIC hot-plugged again", "instance_uuid", rec.UUID, "tap", v.Tap, "nic", v.Name)
	}
	if n > 0 {
		if err := m.store.Put(*rec); err != nil {
			return n, err
		}
	}
	return n, nil
}

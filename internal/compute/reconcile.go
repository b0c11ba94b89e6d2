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
	Errors   []error
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

package compute

import (
	"context"
	"testing"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

func TestReconcile(t *testing.T) {
	h := built(t) // testUUID active and running
	ctx := context.Background()
	// A second instance that was running before a "host reboot".
	rebooted := "0995a387-1136-4d1b-8778-c48a15e37ac1"
	if _, err := h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, rebooted, 0, ""), "image": map[string]string{"id": "i"}}); err != nil {
		t.Fatal(err)
	}
	h.drv.SetState(rebooted, driver.Shutdown)
	// A half-built one, as a crash mid-build leaves it.
	half := "0995a387-1136-4d1b-8778-c48a15e37ac2"
	if err := h.m.store.Put(Record{UUID: half, VMState: StateBuilding, VIFs: []VIFRecord{{Tap: "tap-half"}}}); err != nil {
		t.Fatal(err)
	}
	h.net.plugged["tap-half"] = PlugSpec{Tap: "tap-half"}
	// A container nobody recorded.
	foreign := "0995a387-1136-4d1b-8778-c48a15e37ac3"
	if err := h.drv.Create(ctx, driver.Spec{ID: foreign}); err != nil {
		t.Fatal(err)
	}
	// A record whose container vanished.
	gone := "0995a387-1136-4d1b-8778-c48a15e37ac4"
	if err := h.m.store.Put(Record{UUID: gone, VMState: StateActive}); err != nil {
		t.Fatal(err)
	}

	rep := h.m.Reconcile(ctx, false)
	if len(rep.Errors) > 0 {
		t.Fatal(rep.Errors)
	}
	if !has(rep.Adopted, testUUID) || !has(rep.Adopted, rebooted) || !has(rep.Cleaned, half) || !has(rep.Unknown, foreign) || !has(rep.Vanished, gone) || len(rep.Resumed) != 0 {
		t.Errorf("report = %+v", rep)
	}
	if _, ok := h.net.plugged["tap-half"]; ok {
		t.Error("half-built instance's tap left plugged")
	}
	if info, err := h.drv.Info(ctx, foreign); err != nil || info.State != driver.Shutdown {
		t.Errorf("unknown container touched: %+v %v", info, err)
	}
	if p := h.m.powerState(ctx, rebooted); p != driver.Shutdown {
		t.Errorf("without resume_guests_state_on_host_boot the guest was started: %s", p)
	}
	rep = h.m.Reconcile(ctx, true)
	if !has(rep.Resumed, rebooted) || h.m.powerState(ctx, rebooted) != driver.Running {
		t.Errorf("resume_guests_state_on_host_boot: %+v", rep)
	}
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

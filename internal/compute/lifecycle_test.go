package compute

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

func built(t *testing.T) *harness {
	h := newHarness(t)
	if _, err := h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 0, oneVIF), "image": map[string]string{"id": "img1"}}); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) state(t *testing.T) (driver.PowerState, string) {
	t.Helper()
	rec, _ := h.m.store.Get(testUUID)
	return h.m.powerState(context.Background(), testUUID), rec.VMState
}

func TestLifecycleVerbs(t *testing.T) {
	h := built(t)
	inst := instancePrimitive(t, testUUID, 1, "")
	steps := []struct {
		method string
		args   map[string]any
		power  driver.PowerState
		vm     string
	}{
		{"stop_instance", map[string]any{"clean_shutdown": true}, driver.Shutdown, StateStopped},
		{"start_instance", nil, driver.Running, StateActive},
		{"reboot_instance", map[string]any{"reboot_type": "SOFT"}, driver.Running, StateActive},
		{"reboot_instance", map[string]any{"reboot_type": "HARD"}, driver.Running, StateActive},
		{"pause_instance", nil, driver.Paused, StatePaused},
		{"unpause_instance", nil, driver.Running, StateActive},
		{"suspend_instance", nil, driver.Suspended, StateSuspended},
		{"resume_instance", nil, driver.Running, StateActive},
		{"pause_instance", nil, driver.Paused, StatePaused},
		{"stop_instance", map[string]any{"clean_shutdown": false}, driver.Shutdown, StateStopped},
		{"start_instance", nil, driver.Running, StateActive},
	}
	for i, s := range steps {
		args := map[string]any{"instance": inst}
		for k, v := range s.args {
			args[k] = v
		}
		if _, err := h.call(t, s.method, args); err != nil {
			t.Fatalf("step %d %s: %v", i, s.method, err)
		}
		if p, vm := h.state(t); p != s.power || vm != s.vm {
			t.Errorf("after %s: power %s vm %s, want %s %s", s.method, p, vm, s.power, s.vm)
		}
	}
	if got := h.m.PowerStates(context.Background()); got["running"] != 1 {
		t.Errorf("power states = %v", got)
	}
}

func TestStartAfterHostRebootReplugs(t *testing.T) {
	h := built(t)
	if _, err := h.call(t, "stop_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 1, "")}); err != nil {
		t.Fatal(err)
	}
	// A host reboot: taps and mounts are gone.
	h.net.plugged = map[string]PlugSpec{}
	h.fs.prepared = map[string]bool{}
	if _, err := h.call(t, "start_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 4, "")}); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.net.plugged["tap3f5c6b2a-9d"]; !ok || len(h.fs.prepared) != 1 {
		t.Errorf("start did not restore plumbing: plugged %v prepared %v", h.net.plugged, h.fs.prepared)
	}
}

func TestRebuildKeepsIdentity(t *testing.T) {
	h := built(t)
	if _, err := h.call(t, "rebuild_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 1, ""), "image_ref": "img2",
		"orig_image_ref": "img1", "recreate": false}); err != nil {
		t.Fatal(err)
	}
	rec, _ := h.m.store.Get(testUUID)
	spec, _ := h.drv.Spec(testUUID)
	if rec.ImageID != "img2" || rec.VMState != StateActive || len(spec.NICs) != 1 || spec.NICs[0].MAC != "fa:16:3e:12:34:56" ||
		spec.NICs[0].Addrs[0].String() != "10.0.0.5/24" || spec.NICs[0].Tap != "tap3f5c6b2a-9d" || spec.NICs[0].Gateway4.String() != "10.0.0.1" {
		t.Errorf("rebuilt: rec %+v nics %+v", rec, spec.NICs)
	}
	// Evacuate (recreate) of an instance this host never had builds it here.
	other := "0995a387-1136-4d1b-8778-c48a15e37acf"
	if _, err := h.call(t, "rebuild_instance", map[string]any{"instance": instancePrimitive(t, other, 1, oneVIF), "image_ref": "img3", "recreate": true}); err != nil {
		t.Fatal(err)
	}
	if rec, ok := h.m.store.Get(other); !ok || rec.ImageID != "img3" || rec.VMState != StateActive {
		t.Errorf("evacuated: %+v", rec)
	}
	_, err := h.call(t, "rebuild_instance", map[string]any{"instance": instancePrimitive(t, "0995a387-1136-4d1b-8778-c48a15e37ac0", 1, ""), "image_ref": "x"})
	var ex *rpc.Exception
	if !errors.As(err, &ex) || ex.Class != "InstanceNotFound" {
		t.Errorf("rebuild of an unknown instance: %v", err)
	}
}

func TestSetAdminPassword(t *testing.T) {
	h := built(t)
	rootfs := filepath.Join(h.m.store.Dir(testUUID), "rootfs")
	var ex *rpc.Exception
	_, err := h.call(t, "set_admin_password", map[string]any{"instance": instancePrimitive(t, testUUID, 1, ""), "new_pass": "pw"})
	if !errors.As(err, &ex) || ex.Class != "InstancePasswordSetFailed" || !strings.Contains(ex.Msg, "/etc/shadow") {
		t.Errorf("no shadow file: %v", err)
	}
	os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "etc", "shadow"), []byte("root:*:1:0:99999:7:::\n"), 0o600)
	if _, err := h.call(t, "set_admin_password", map[string]any{"instance": instancePrimitive(t, testUUID, 1, ""), "new_pass": "pw"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(rootfs, "etc", "shadow")); !strings.HasPrefix(string(b), "root:$6$") {
		t.Errorf("shadow = %q", b)
	}
	h.drv.SetState(testUUID, driver.Shutdown)
	_, err = h.call(t, "set_admin_password", map[string]any{"instance": instancePrimitive(t, testUUID, 4, ""), "new_pass": "pw"})
	if !errors.As(err, &ex) || ex.Class != "InstancePasswordSetFailed" || !strings.Contains(ex.Msg, "is not running") {
		t.Errorf("stopped instance: %v", err)
	}
}

func TestWhatAContainerCannotDo(t *testing.T) {
	h := built(t)
	var ex *rpc.Exception
	_, err := h.call(t, "get_vnc_console", map[string]any{"instance": instancePrimitive(t, testUUID, 1, ""), "console_type": "novnc"})
	if !errors.As(err, &ex) || ex.Class != "ConsoleTypeUnavailable" || ex.Kwargs["console_type"] != "novnc" {
		t.Errorf("vnc: %v", err)
	}
	out, err := h.call(t, "get_host_uptime", nil)
	if err != nil || !strings.Contains(out.(string), "load average") {
		t.Errorf("uptime = %v, %v", out, err)
	}
	d, err := h.call(t, "get_diagnostics", map[string]any{"instance": instancePrimitive(t, testUUID, 1, "")})
	if err != nil {
		t.Fatal(err)
	}
	if m := d.(map[string]any); m["memory"] == nil || m["cpu0_time"] == nil {
		t.Errorf("get_diagnostics = %v", m)
	}
	for _, m := range []string{"stop_instance", "pause_instance", "start_instance"} {
		_, err := h.call(t, m, map[string]any{"instance": instancePrimitive(t, "0995a387-1136-4d1b-8778-c48a15e37acf", 1, "")})
		if !errors.As(err, &ex) || ex.Class != "InstanceNotFound" {
			t.Errorf("%s of an unknown instance: %v", m, err)
		}
	}
}

package compute

import (
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// TestIDMapsInSpec: the configured id maps ([libvirt] uid_maps, gid_maps)
// reach every container's spec; none configured, none in the spec.
func TestIDMapsInSpec(t *testing.T) {
	maps := []driver.IDMap{{Kind: 'u', ContainerID: 0, HostID: 100000, Count: 65536}, {Kind: 'g', ContainerID: 0, HostID: 100000, Count: 65536}}
	h := newHarness(t)
	h.m.cfg.IDMaps = maps
	if _, err := h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 0, ""), "image": map[string]string{"id": "i"}}); err != nil {
		t.Fatal(err)
	}
	spec, err := h.drv.Spec(testUUID)
	if err != nil || !slices.Equal(spec.IDMaps, maps) {
		t.Errorf("spec IDMaps = %+v, %v; want %+v", spec.IDMaps, err, maps)
	}

	h = newHarness(t)
	if _, err := h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 0, ""), "image": map[string]string{"id": "i"}}); err != nil {
		t.Fatal(err)
	}
	if spec, _ := h.drv.Spec(testUUID); spec.IDMaps != nil {
		t.Errorf("privileged agent: spec IDMaps = %+v", spec.IDMaps)
	}
}

// TestGuestFilesOwnedByTheImageRoot: /etc files the agent creates in an
// unprivileged container's rootfs belong to its root (the owner of /etc,
// host 100000), an existing one keeps its owner.
func TestGuestFilesOwnedByTheImageRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatalf("needs root (chown); euid %d", os.Geteuid())
	}
	rootfs := t.TempDir()
	etc := filepath.Join(rootfs, "etc")
	if err := os.Mkdir(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(etc, "hostname"), []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{etc, filepath.Join(etc, "hostname")} {
		if err := os.Chown(p, 100000, 100000); err != nil {
			t.Fatal(err)
		}
	}
	vifs := []VIFRecord{{DNS: []string{"192.0.2.53"}}}
	if err := writeGuestFiles(rootfs, "web-1", vifs); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"hostname", "resolv.conf"} {
		fi, err := os.Stat(filepath.Join(etc, f))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 100000 || st.Gid != 100000 {
			t.Errorf("/etc/%s owned by %d:%d, want 100000:100000", f, st.Uid, st.Gid)
		}
	}
}

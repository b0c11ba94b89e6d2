package compute

import (
	"slices"
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

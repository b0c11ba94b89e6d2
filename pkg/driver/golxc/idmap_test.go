package golxc

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

var testMaps = []driver.IDMap{
	{Kind: 'u', ContainerID: 0, HostID: 100000, Count: 65536},
	{Kind: 'g', ContainerID: 0, HostID: 100000, Count: 65536},
}

func TestBuildConfigIDMap(t *testing.T) {
	spec := driver.Spec{ID: "c1", Rootfs: "/r", IDMaps: testMaps}
	got := items(buildConfig(spec, hostInfo{}, "/log"))
	for _, want := range []string{"lxc.idmap = u 0 100000 65536", "lxc.idmap = g 0 100000 65536"} {
		if !slices.Contains(got, want) {
			t.Errorf("config lacks %q:\n%s", want, strings.Join(got, "\n"))
		}
	}
	if slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "lxc.rootfs.options") }) {
		t.Errorf("rootfs options set: liblxc cannot idmap an overlayfs rootfs")
	}
	if err := checkSpec(spec); err != nil {
		t.Errorf("checkSpec: %v", err)
	}
	spec.IDMaps = testMaps[:1]
	if err := checkSpec(spec); err == nil {
		t.Errorf("checkSpec accepted a uid map without a gid map")
	}
	spec.IDMaps = nil
	if got := items(buildConfig(spec, hostInfo{}, "/log")); slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "lxc.idmap") }) {
		t.Errorf("idmap lines without IDMaps")
	}
}

func TestSubIDs(t *testing.T) {
	f := filepath.Join(t.TempDir(), "subuid")
	if err := os.WriteFile(f, []byte("alice:100000:65536\nroot:200000:1000\n0:201000:9000\nbad line\nroot:x:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rs, err := readSubIDs(f, "root", "0")
	if err != nil || !slices.Equal(rs, []subRange{{200000, 1000}, {201000, 9000}}) {
		t.Fatalf("readSubIDs = %v, %v", rs, err)
	}
	for _, c := range []struct {
		start, count int
		want         bool
	}{
		{200000, 1000, true}, {200000, 10000, true}, {200500, 5000, true}, {199999, 2, false},
		{205000, 6000, false}, {100000, 65536, false},
	} {
		if got := covered(rs, c.start, c.count); got != c.want {
			t.Errorf("covered(%d, %d) = %v, want %v", c.start, c.count, got, c.want)
		}
	}
	if rs, err := readSubIDs(filepath.Join(t.TempDir(), "missing"), "root", "0"); err != nil || rs != nil {
		t.Errorf("missing file: %v, %v", rs, err)
	}
}

func TestCheckRootfsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	dir := t.TempDir()
	spec := driver.Spec{Rootfs: dir, IDMaps: testMaps}
	err := checkRootfsOwner(spec)
	if err == nil || !strings.Contains(err.Error(), "outside the container's id map") {
		t.Errorf("root-owned rootfs: %v", err)
	}
	if err := os.Chown(dir, 100000, 100000); err != nil {
		t.Fatal(err)
	}
	if err := checkRootfsOwner(spec); err != nil {
		t.Errorf("shifted rootfs: %v", err)
	}
	if err := checkRootfsOwner(driver.Spec{Rootfs: "/nonexistent"}); err != nil {
		t.Errorf("privileged spec: %v", err)
	}
}

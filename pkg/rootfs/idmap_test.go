package rootfs

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/idmap"
)

var testIDMaps = []driver.IDMap{
	{Kind: 'u', ContainerID: 0, HostID: 100000, Count: 65536},
	{Kind: 'g', ContainerID: 0, HostID: 100000, Count: 65536},
}

func ownerOf(t *testing.T, p string) [2]uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return [2]uint32{st.Uid, st.Gid}
}

// asHostUID runs argv as host uid and gid id (the ids an unprivileged
// container's root has on the host).
func asHostUID(t *testing.T, id uint32, argv ...string) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: id, Gid: id}}
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v as uid %d: %v: %s", argv, id, err, out)
	}
}

// TestPrepareIDMapped builds unprivileged instances from bases of each
// kind: the image's files appear owned by the mapped ids, nothing of the
// base changes on disk, the container's root can write, its files land in
// the upper directory with its host ids, instances of one image share one
// idmapped view, and Release undoes all of it. "copy" cases force the
// shifted-copy fallback.
func TestPrepareIDMapped(t *testing.T) {
	for _, c := range []struct {
		name, fixture, format string
		copy                  bool
	}{
		{"ext4", "ext4", "raw", false},
		{"tar", "tar", "root-tar", false},
		{"squashfs", "squashfs", "raw", false},
		{"qcow2", "ext4.qcow2", "qcow2", false},
		{"ext4-copy", "ext4", "raw", true},
		{"tar-copy", "tar", "root-tar", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			image := fixture(t, c.fixture)
			e := newTestEnv(t, WithIDMap(testIDMaps))
			e.m.noIDMappedMounts = c.copy
			// The container's root must reach the rootfs: t.TempDir's
			// directories are 0700.
			must(t, os.Chmod(filepath.Dir(e.root), 0o711))
			must(t, os.Chmod(e.root, 0o711))
			ctx := t.Context()
			base := filepath.Join(e.baseDir, imgID)
			view := viewPath(e.baseDir, testIDMaps, imgID)
			cp := copyPath(e.baseDir, testIDMaps, imgID)
			lower := view
			if c.copy {
				lower = cp
			}

			i1, i2 := e.instance("i1"), e.instance("i2")
			r1, err := e.m.Prepare(ctx, meta(imgID, c.format), image, i1)
			if err != nil {
				t.Fatal(err)
			}
			baseOwned := ownerOf(t, filepath.Join(base, "etc/owned"))
			if baseOwned != [2]uint32{1000, 1001} {
				t.Errorf("base etc/owned on disk: %v, want 1000:1001", baseOwned)
			}
			r2, err := e.m.Prepare(ctx, meta(imgID, c.format), image, i2)
			if err != nil {
				t.Fatal(err)
			}
			ms := e.mountsT()
			top := mountsAt(ms, r1)
			if len(top) != 1 || !slices.Equal(top[0].lowerDirs(), []string{lower}) {
				t.Fatalf("overlay %s: %+v, want lowerdir %s", r1, top, lower)
			}
			if n := len(mountsAt(ms, view)); c.copy && n != 0 || !c.copy && n != 1 {
				t.Errorf("%d mounts at the view %s, want %d", n, view, map[bool]int{true: 0, false: 1}[c.copy])
			}
			if c.copy != isDir(cp) {
				t.Errorf("shifted copy %s exists: %v", cp, isDir(cp))
			}
			for _, r := range []string{r1, r2} {
				for rel, want := range map[string][2]uint32{
					".": {100000, 100000}, "etc/owned": {101000, 101001}, "bin/busybox": {100000, 100000}, "bin/sh": {100000, 100000},
				} {
					if got := ownerOf(t, filepath.Join(r, rel)); got != want {
						t.Errorf("%s/%s: owner %v, want %v", r, rel, got, want)
					}
				}
				if fi, err := os.Stat(r); err != nil || fi.Mode().Perm() != 0o750 {
					t.Errorf("%s: mode %v, %v; want the image root's 0750", r, fi.Mode(), err)
				}
			}
			upper := filepath.Join(i1, "overlay/upper")
			if got := ownerOf(t, upper); got != [2]uint32{100000, 100000} {
				t.Errorf("upper dir owner %v, want the mapped root 100000:100000", got)
			}
			if b, err := os.ReadFile(filepath.Join(i1, "overlay", instanceMapName)); err != nil || string(b) != idmap.Format(idmap.Canonical(testIDMaps)) {
				t.Errorf("instance map file: %q, %v", b, err)
			}

			// The container's root (host uid 100000) creates a file and
			// changes one of the image's: both land in the upper dir with
			// its ids; the base keeps its own.
			asHostUID(t, 100000, "/bin/sh", "-c", "echo new > "+r1+"/created && echo more >> "+r1+"/etc/hostname")
			for _, rel := range []string{"created", "etc/hostname"} {
				if got := ownerOf(t, filepath.Join(upper, rel)); got != [2]uint32{100000, 100000} {
					t.Errorf("upper/%s: owner %v, want 100000:100000", rel, got)
				}
			}
			if got := ownerOf(t, filepath.Join(base, "etc/hostname")); got != [2]uint32{0, 0} {
				t.Errorf("base etc/hostname on disk: %v, want 0:0", got)
			}
			if b, _ := os.ReadFile(filepath.Join(base, "etc/hostname")); strings.Contains(string(b), "more") {
				t.Errorf("the write reached the base: %q", b)
			}
			if _, err := os.Stat(filepath.Join(r2, "created")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("i1's file visible in i2: %v", err)
			}
			// Host root keeps using the files as it sees them.
			checkRootfs(t, r2, testMarkerContent)

			// Idempotent: a second Prepare returns the mounted rootfs.
			if again, err := e.m.Prepare(ctx, meta(imgID, c.format), image, i1); err != nil || again != r1 {
				t.Errorf("Prepare of a mounted instance: %s, %v", again, err)
			}

			must(t, e.m.Release(ctx, i1))
			if !c.copy && len(mountsAt(e.mountsT(), view)) != 1 {
				t.Errorf("view unmounted while i2 uses it")
			}
			must(t, e.m.Release(ctx, i2))
			if left := mountsUnder(e.mountsT(), idmapDir(e.baseDir)); len(left) > 0 {
				t.Errorf("views left: %v", left)
			}
			if got := ownerOf(t, filepath.Join(image)); got[0] != 0 {
				t.Errorf("image file owner %v", got)
			}
			var kept []string
			if c.format == "root-tar" {
				kept = append(kept, imgID)
			}
			if c.copy {
				if !isDir(cp) {
					t.Errorf("shifted copy not kept as a cache")
				}
				if sz := e.m.DerivedSize(imgID); sz <= 0 {
					t.Errorf("DerivedSize = %d with a shifted copy", sz)
				}
				if !slices.Contains(baseIDs(e.baseDir, e.mountsT()), imgID) {
					t.Errorf("baseIDs misses the image with a shifted copy")
				}
				kept = append(kept, imgID)
			}
			if len(kept) > 0 {
				must(t, e.m.RemoveBase(ctx, imgID))
			}
			if exists(cp) || exists(view) {
				t.Errorf("left under %s: copy %v, view %v", idmapDir(e.baseDir), exists(cp), exists(view))
			}
			e.assertNoLeaks()
		})
	}
}

func (e *testEnv) mountsT() []mountEntry {
	e.t.Helper()
	ms, err := readMountInfo()
	if err != nil {
		e.t.Fatal(err)
	}
	return ms
}

// TestPrepareKeepsInstanceMap: an instance keeps the id map it was made
// with (none, or another) when it is prepared again by a Mounter
// configured otherwise, e.g. after a reboot that followed a configuration
// change.
func TestPrepareKeepsInstanceMap(t *testing.T) {
	image := fixture(t, "ext4")
	e := newTestEnv(t)
	ctx := t.Context()
	mapped := NewMounter(e.baseDir, testLogger(t), WithIDMap(testIDMaps))
	priv, unpriv := e.instance("priv"), e.instance("unpriv")

	rp, err := e.m.Prepare(ctx, meta(imgID, "raw"), image, priv)
	must(t, err)
	ru, err := mapped.Prepare(ctx, meta(imgID, "raw"), image, unpriv)
	must(t, err)
	// "Reboot": the overlays go, the upper directories stay.
	must(t, unix.Unmount(rp, 0))
	must(t, unix.Unmount(ru, 0))
	if _, err := mapped.Prepare(ctx, meta(imgID, "raw"), image, priv); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Prepare(ctx, meta(imgID, "raw"), image, unpriv); err != nil {
		t.Fatal(err)
	}
	if got := ownerOf(t, filepath.Join(rp, "etc/owned")); got != [2]uint32{1000, 1001} {
		t.Errorf("privileged instance prepared by a mapped Mounter: etc/owned %v, want 1000:1001", got)
	}
	if exists(filepath.Join(priv, "overlay", instanceMapName)) {
		t.Errorf("privileged instance got a map file")
	}
	if got := ownerOf(t, filepath.Join(ru, "etc/owned")); got != [2]uint32{101000, 101001} {
		t.Errorf("mapped instance prepared by a privileged Mounter: etc/owned %v, want 101000:101001", got)
	}
	// A mounted rootfs on the other kind of lower is not this instance's.
	must(t, os.WriteFile(filepath.Join(unpriv, "overlay", instanceMapName), []byte("u 0 200000 10\ng 0 200000 10\n"), 0o644))
	if _, err := e.m.Prepare(ctx, meta(imgID, "raw"), image, unpriv); err == nil || !strings.Contains(err.Error(), "already mounted") {
		t.Errorf("Prepare with a mismatching mounted overlay: %v", err)
	}
	must(t, os.WriteFile(filepath.Join(unpriv, "overlay", instanceMapName), []byte("garbage\n"), 0o644))
	if _, err := e.m.Prepare(ctx, meta(imgID, "raw"), image, unpriv); !errors.Is(err, idmap.ErrInvalid) {
		t.Errorf("Prepare with a corrupt map file: %v, want ErrInvalid", err)
	}
	must(t, e.m.Release(ctx, priv))
	must(t, mapped.Release(ctx, unpriv))
	e.assertNoLeaks()
}

// TestRecoverIDMapped: a crash after the view is mounted leaves nothing
// after Recover; a crash after the overlay is mounted leaves the orphan
// and its view and base, until Release.
func TestRecoverIDMapped(t *testing.T) {
	image := fixture(t, "ext4")
	for _, step := range []string{"idmap", "dirs", "overlay"} {
		t.Run(step, func(t *testing.T) {
			e := newTestEnv(t, WithIDMap(testIDMaps))
			ctx := t.Context()
			inst := e.instance("crashed")
			crashAt(e.m, step)
			if _, err := e.m.Prepare(ctx, meta(imgID, "raw"), image, inst); !errors.Is(err, errSimulatedCrash) {
				t.Fatalf("Prepare: %v", err)
			}
			view := viewPath(e.baseDir, testIDMaps, imgID)
			if len(mountsAt(e.mountsT(), view)) != 1 {
				t.Fatalf("no view mounted after a crash at %s", step)
			}
			m2 := NewMounter(e.baseDir, testLogger(t), WithIDMap(testIDMaps))
			rep, err := m2.Recover(ctx, func(string) bool { return false })
			must(t, err)
			t.Logf("report: %+v", rep)
			if step == "overlay" {
				if !slices.Contains(rep.OrphanInstances, inst) || !slices.Contains(rep.KeptBases, imgID) {
					t.Errorf("orphan overlay on a view: report %+v", rep)
				}
				if len(mountsAt(e.mountsT(), view)) != 1 {
					t.Errorf("the orphan's view was unmounted")
				}
			} else if !slices.Contains(rep.ReleasedBases, imgID) || len(mountsAt(e.mountsT(), view)) != 0 {
				t.Errorf("view and base not released: report %+v", rep)
			}
			must(t, m2.Release(ctx, inst))
			e.assertNoLeaks()
		})
	}
}

// BenchmarkPrepareReleaseIDMapped compares Prepare+Release of an instance
// with and without an id map, warm (another instance keeps the base and
// its view mounted) and cold (loop device, base mount and view per
// iteration).
func BenchmarkPrepareReleaseIDMapped(b *testing.B) {
	requireRoot(b)
	for _, c := range []struct {
		name string
		warm bool
		opts []MounterOption
	}{
		{"warm/privileged", true, nil}, {"warm/idmapped", true, []MounterOption{WithIDMap(testIDMaps)}},
		{"cold/privileged", false, nil}, {"cold/idmapped", false, []MounterOption{WithIDMap(testIDMaps)}},
	} {
		b.Run(c.name, func(b *testing.B) {
			root := b.TempDir()
			cleanupMounts(b, root)
			image := buildTestImage(b, root)
			m := NewMounter(filepath.Join(root, "base"), nil, c.opts...)
			ctx := context.Background()
			if c.warm {
				keeper := filepath.Join(root, "keeper")
				if _, err := m.Prepare(ctx, meta(imgID, "raw"), image, keeper); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() {
					if err := m.Release(ctx, keeper); err != nil {
						b.Error(err)
					}
				})
			}
			inst := filepath.Join(root, "inst")
			for b.Loop() {
				if _, err := m.Prepare(ctx, meta(imgID, "raw"), image, inst); err != nil {
					b.Fatal(err)
				}
				if err := m.Release(ctx, inst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

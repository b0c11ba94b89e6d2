package rootfs

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// formatCase is one image format end to end.
type formatCase struct {
	name    string
	fixture string
	meta    ImageMeta
	marker  string // expected content of the marker file
	fsType  string // expected base mount fs type; "" for an extracted tarball
	layout  string // expected layout in the base record, if any
}

func formatCases() []formatCase {
	id := imgID
	return []formatCase{
		{"raw-ext4", "ext4", meta(id, "raw"), testMarkerContent, "ext4", "bare ext4 filesystem"},
		{"raw-xfs", "xfs", meta(id, "raw"), testMarkerContent, "xfs", "bare xfs filesystem"},
		{"raw-btrfs", "btrfs", meta(id, "raw"), testMarkerContent, "btrfs", "bare btrfs filesystem"},
		{"raw-squashfs", "squashfs", meta(id, "raw"), testMarkerContent, "squashfs", "bare squashfs filesystem"},
		{"raw-gpt", "gpt", meta(id, "raw"), testMarkerContent, "ext4", "ext4 on GPT partition 2"},
		{"raw-gpt-root-partition-1", "gpt", meta(id, "raw", RootPartitionProperty, "1"), bootMarkerContent, "ext4", "ext4 on GPT partition 1"},
		{"raw-mbr", "mbr", meta(id, "raw"), testMarkerContent, "ext4", "ext4 on MBR partition 2"},
		{"raw-mbr-logical", "mbr-logical", meta(id, "raw"), testMarkerContent, "ext4", "ext4 on MBR partition 5"},
		{"qcow2-ext4", "ext4.qcow2", meta(id, "qcow2"), testMarkerContent, "ext4", "bare ext4 filesystem"},
		{"qcow2-gpt", "gpt.qcow2", meta(id, "qcow2"), testMarkerContent, "ext4", "ext4 on GPT partition 2"},
		{"qcow2-gpt-root-partition-1", "gpt.qcow2", meta(id, "qcow2", RootPartitionProperty, "1"), bootMarkerContent, "ext4", "ext4 on GPT partition 1"},
		{"root-tar", "tar", meta(id, "root-tar"), testMarkerContent, "", ""},
		{"root-tar-gz", "tar.gz", meta(id, "root-tar"), testMarkerContent, "", ""},
		{"root-tar-xz", "tar.xz", meta(id, "root-tar"), testMarkerContent, "", ""},
		{"root-tar-zst", "tar.zst", meta(id, "root-tar"), testMarkerContent, "", ""},
		{"root-tar-bz2", "tar.bz2", meta(id, "root-tar"), testMarkerContent, "", ""},
		{"raw-bare-holding-tar-gz", "tar.gz", meta(id, "raw"), testMarkerContent, "", ""},
		{"root-tar-lxd-layout", "lxd.tar.gz", meta(id, "root-tar"), testMarkerContent, "", ""},
		{"unknown-format-qcow2-bytes", "ext4.qcow2", meta(id, ""), testMarkerContent, "ext4", "bare ext4 filesystem"},
	}
}

// TestPrepareFormats takes every supported format through Prepare (two
// instances sharing the base), checks the rootfs (marker, chroot busybox,
// overlay root attributes), releases both, and checks nothing is left
// (extracted tarballs stay cached until RemoveBase).
func TestPrepareFormats(t *testing.T) {
	for _, tc := range formatCases() {
		t.Run(tc.name, func(t *testing.T) {
			image := fixture(t, tc.fixture)
			e := newTestEnv(t)
			ctx := t.Context()
			base := filepath.Join(e.baseDir, imgID)
			a, b := e.instance("a"), e.instance("b")
			start := time.Now()
			ra, err := e.m.Prepare(ctx, tc.meta, image, a)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("cold Prepare: %v", time.Since(start))
			checkRootfs(t, ra, tc.marker)
			rb, err := e.m.Prepare(ctx, tc.meta, image, b)
			if err != nil {
				t.Fatal(err)
			}
			checkRootfs(t, rb, tc.marker)
			if _, err := os.Stat(filepath.Join(rb, "etc/written")); err != nil {
				t.Error("b does not see its own write")
			}

			ms := mountsAt(readMounts(t), base)
			rec, err := loadRecord(e.baseDir, imgID)
			if err != nil || rec == nil {
				t.Fatalf("base record: %v %v", rec, err)
			}
			if tc.fsType == "" {
				if len(ms) != 0 || rec.Kind != baseTar || !rec.Complete {
					t.Errorf("tar base: mounts %v, record %+v", ms, rec)
				}
			} else {
				if len(ms) != 1 || ms[0].fsType != tc.fsType || !strings.HasPrefix(ms[0].source, "/dev/loop") {
					t.Fatalf("base mounts: %+v", ms)
				}
				if rec.Kind != baseMount || rec.Layout != tc.layout || rec.Loop == nil || rec.Loop.Device != ms[0].source {
					t.Errorf("record %+v (loop %+v), want layout %q on %s", rec, rec.Loop, tc.layout, ms[0].source)
				}
				if err := os.WriteFile(filepath.Join(base, "x"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
					t.Errorf("write to base: %v, want EROFS", err)
				}
				if l, ok := loopSysState(rec.Loop.Device); !ok || l.offset != rec.Loop.Offset {
					t.Errorf("loop %s: %+v %v, record offset %d", rec.Loop.Device, l, ok, rec.Loop.Offset)
				}
				if ro, _ := os.ReadFile("/sys/block/" + filepath.Base(rec.Loop.Device) + "/ro"); strings.TrimSpace(string(ro)) != "1" {
					t.Errorf("loop device not read-only: %q", ro)
				}
			}
			if strings.HasPrefix(tc.fixture, "ext4.qcow2") || strings.HasPrefix(tc.fixture, "gpt.qcow2") {
				if rec.Export == nil || rec.Export.PID == 0 || !procAlive(rec.Export.PID) {
					t.Fatalf("qcow2 export: %+v", rec.Export)
				}
				if on := mountsAt(readMounts(t), rec.Export.Mountpoint); len(on) != 1 || !strings.HasPrefix(on[0].fsType, "fuse") {
					t.Errorf("export mount: %+v", on)
				}
				if rec.Loop.Backing != rec.Export.Mountpoint {
					t.Errorf("loop on %s, want the export %s", rec.Loop.Backing, rec.Export.Mountpoint)
				}
			}
			if tc.name == "root-tar" {
				// Owners, modes and mtimes survive extraction.
				fi, err := os.Lstat(filepath.Join(ra, "etc/owned"))
				if err != nil {
					t.Fatal(err)
				}
				st := fi.Sys().(*syscall.Stat_t)
				if st.Uid != 1000 || st.Gid != 1001 || fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(testMtime) {
					t.Errorf("etc/owned: uid %d gid %d mode %v mtime %v", st.Uid, st.Gid, fi.Mode(), fi.ModTime())
				}
				if l, err := os.Readlink(filepath.Join(ra, "sbin/init")); err != nil || l != "../bin/busybox" {
					t.Errorf("sbin/init -> %q %v", l, err)
				}
			}
			// The overlay root has the image root's mode (0750 in the
			// fixtures, but mkfs.btrfs --rootdir does not copy it).
			if fi, err := os.Stat(ra); err != nil {
				t.Error(err)
			} else if bi, err := os.Stat(base); err != nil || fi.Mode() != bi.Mode() {
				t.Errorf("rootfs root mode %v, base root %v (%v)", fi.Mode(), bi.Mode(), err)
			} else if tc.marker == testMarkerContent && tc.fsType != "btrfs" && fi.Mode().Perm() != 0o750 {
				t.Errorf("rootfs root mode %v, want 0750 from the image", fi.Mode())
			}

			if err := e.m.Release(ctx, a); err != nil {
				t.Fatal(err)
			}
			checkRootfs(t, rb, tc.marker) // b unaffected
			if err := e.m.Release(ctx, b); err != nil {
				t.Fatal(err)
			}
			if tc.fsType == "" {
				e.assertNoLeaks(imgID) // cached
				if err := e.m.RemoveBase(ctx, imgID); err != nil {
					t.Fatal(err)
				}
			}
			e.assertNoLeaks()
		})
	}
}

func readMounts(t testing.TB) []mountEntry {
	t.Helper()
	ms, err := readMountInfo()
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// TestTarBaseCachedAndRemoveBase: an extracted tarball outlives its last
// instance, is reused without reading the image again, and RemoveBase
// refuses while an instance uses it.
func TestTarBaseCachedAndRemoveBase(t *testing.T) {
	e := newTestEnv(t)
	ctx := t.Context()
	image := filepath.Join(e.root, "image.tar.gz")
	copyFile(t, fixture(t, "tar.gz"), image)
	inst := e.instance("i")
	if _, err := e.m.Prepare(ctx, meta(imgID, "root-tar"), image, inst); err != nil {
		t.Fatal(err)
	}
	if err := e.m.RemoveBase(ctx, imgID); !errors.Is(err, ErrBaseInUse) {
		t.Errorf("RemoveBase of a used base: %v", err)
	}
	if err := e.m.Release(ctx, inst); err != nil {
		t.Fatal(err)
	}
	e.assertNoLeaks(imgID)
	// Warm: the image file is not needed any more.
	os.Remove(image)
	r, err := NewMounter(e.baseDir, testLogger(t)).Prepare(ctx, meta(imgID, "root-tar"), image, inst)
	if err != nil {
		t.Fatal(err)
	}
	checkRootfs(t, r, testMarkerContent)
	if err := e.m.Release(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if err := e.m.RemoveBase(ctx, imgID); err != nil {
		t.Fatal(err)
	}
	if err := e.m.RemoveBase(ctx, imgID); err != nil {
		t.Errorf("RemoveBase of a missing base: %v", err)
	}
	e.assertNoLeaks()
}

// TestPrepareQcow2ConcurrentInstances: many instances of one qcow2 image
// at once share one export and one loop device.
func TestPrepareQcow2ConcurrentInstances(t *testing.T) {
	image := fixture(t, "gpt.qcow2")
	e := newTestEnv(t)
	ctx := t.Context()
	errs := make(chan error, 8)
	for i := range 8 {
		go func() {
			_, err := e.m.Prepare(ctx, meta(imgID, "qcow2"), image, e.instance(string(rune('a'+i))))
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n := len(processesMentioning(e.root)); n != 1 {
		t.Errorf("%d qemu-storage-daemon processes, want 1", n)
	}
	for i := range 8 {
		if err := e.m.Release(ctx, e.instance(string(rune('a'+i)))); err != nil {
			t.Error(err)
		}
	}
	e.assertNoLeaks()
}

func TestCheckFormatAll(t *testing.T) {
	for _, tc := range []struct {
		disk, container string
		ok              bool
	}{
		{"raw", "bare", true}, {"", "", true}, {"qcow2", "bare", true}, {"root-tar", "bare", true},
		{"qcow2", "", true}, {"raw", "ovf", false}, {"iso", "bare", false}, {"vmdk", "bare", false},
		{"root-tar", "docker", false}, {"ami", "ami", false},
	} {
		err := CheckFormat(ImageMeta{ID: "x", DiskFormat: tc.disk, ContainerFormat: tc.container})
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrUnsupportedImage)) {
			t.Errorf("%s/%s: %v", tc.disk, tc.container, err)
		}
	}
}

func TestReadMeta(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, imgID+".json"), []byte(`{"id":"`+imgID+`","disk_format":"qcow2","container_format":"bare","properties":{"os_root_partition":"2"}}`), 0o644)
	os.WriteFile(filepath.Join(dir, "other.json"), []byte(`{"id":"someone-else"}`), 0o644)
	os.WriteFile(filepath.Join(dir, "broken.json"), []byte(`{`), 0o644)
	m, err := ReadMeta(dir, imgID)
	if err != nil || m.DiskFormat != "qcow2" || m.Properties[RootPartitionProperty] != "2" {
		t.Errorf("ReadMeta: %+v %v", m, err)
	}
	if _, err := ReadMeta(dir, "missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	for _, id := range []string{"other", "broken", "../x"} {
		if _, err := ReadMeta(dir, id); !errors.Is(err, ErrInvalidImage) {
			t.Errorf("%s: %v", id, err)
		}
	}
}

// TestLocalSourceFormats: the local image directory reports the disk
// format the bytes show, and a Cache+Mounter round trip works for each.
func TestLocalSourceFormats(t *testing.T) {
	e := newTestEnv(t)
	ctx := t.Context()
	src := filepath.Join(e.root, "images")
	os.Mkdir(src, 0o755)
	for id, fx := range map[string]string{"img-raw": "gpt", "img-qcow2": "ext4.qcow2", "img-tar": "tar.zst"} {
		copyFile(t, fixture(t, fx), filepath.Join(src, id))
	}
	c, err := NewCache(filepath.Join(e.root, "cache"), LocalSource{Dir: src}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{"img-raw": "raw", "img-qcow2": "qcow2", "img-tar": "root-tar"} {
		path, m, _, err := c.Fetch(ctx, id, "")
		if err != nil {
			t.Fatal(err)
		}
		if m.DiskFormat != want {
			t.Errorf("%s: disk_format %q, want %q", id, m.DiskFormat, want)
		}
		rm, err := ReadMeta(filepath.Join(e.root, "cache"), id)
		if err != nil || rm.DiskFormat != want {
			t.Errorf("ReadMeta(%s): %+v %v", id, rm, err)
		}
		r, err := e.m.Prepare(ctx, rm, path, e.instance(id))
		if err != nil {
			t.Fatal(err)
		}
		checkRootfs(t, r, testMarkerContent)
		if err := e.m.Release(ctx, e.instance(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.m.RemoveBase(ctx, "img-tar"); err != nil {
		t.Fatal(err)
	}
	e.assertNoLeaks()
}

// Benchmarks: Prepare+Release of one instance. Cold includes making the
// base (loop device and mount; FUSE export; extraction), warm only the
// overlay (another instance keeps the base).
func BenchmarkPrepareRelease(b *testing.B) {
	for _, fc := range []struct{ name, fixture, format string }{
		{"raw-ext4", "ext4", "raw"},
		{"raw-gpt", "gpt", "raw"},
		{"raw-squashfs", "squashfs", "raw"},
		{"qcow2-ext4", "ext4.qcow2", "qcow2"},
		{"qcow2-gpt", "gpt.qcow2", "qcow2"},
		{"root-tar", "tar", "root-tar"},
		{"root-tar-gz", "tar.gz", "root-tar"},
		{"root-tar-zst", "tar.zst", "root-tar"},
		{"root-tar-xz", "tar.xz", "root-tar"},
	} {
		for _, warm := range []bool{false, true} {
			name := fc.name + "/cold"
			if warm {
				name = fc.name + "/warm"
			}
			b.Run(name, func(b *testing.B) {
				image := fixture(b, fc.fixture)
				root := b.TempDir()
				cleanupMounts(b, root)
				m := NewMounter(filepath.Join(root, "base"), nil)
				m.qcow2Via = "fuse"
				ctx := context.Background()
				md := meta(imgID, fc.format)
				if warm {
					keeper := filepath.Join(root, "keeper")
					if _, err := m.Prepare(ctx, md, image, keeper); err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { m.Release(ctx, keeper) })
				}
				inst := filepath.Join(root, "inst")
				for b.Loop() {
					if _, err := m.Prepare(ctx, md, image, inst); err != nil {
						b.Fatal(err)
					}
					if err := m.Release(ctx, inst); err != nil {
						b.Fatal(err)
					}
					if !warm && fc.format == "root-tar" {
						if err := m.RemoveBase(ctx, imgID); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.Cleanup(func() { m.RemoveBase(ctx, imgID) })
			})
		}
	}
}

// TestTarBaseCountsInCacheBudget: an extracted root tarball counts in its
// image's cache entry, and evicting the image removes the extracted base
// too, so the budget bounds what the cache really takes on disk.
func TestTarBaseCountsInCacheBudget(t *testing.T) {
	e := newTestEnv(t)
	ctx := t.Context()
	data, err := os.ReadFile(fixture(t, "tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	g := newFakeGlance(t)
	g.add(imgID, data)
	inUse := &inUseSet{}
	cache, err := NewCache(filepath.Join(e.root, "cache"), g.source(), testLogger(t),
		WithBudget(1<<30), WithInUse(inUse.has), WithDerived(e.m))
	if err != nil {
		t.Fatal(err)
	}
	path, m, _, err := cache.Fetch(ctx, imgID, "")
	if err != nil {
		t.Fatal(err)
	}
	m.DiskFormat = "root-tar"
	before, _, err := cache.Usage()
	if err != nil {
		t.Fatal(err)
	}
	inst := e.instance("i")
	inUse.add(imgID)
	if _, err := e.m.Prepare(ctx, m, path, inst); err != nil {
		t.Fatal(err)
	}
	derived := e.m.DerivedSize(imgID)
	after, _, err := cache.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if derived <= 0 || after != before+derived {
		t.Fatalf("usage %d before extraction, %d after, extracted base %d bytes", before, after, derived)
	}
	if err := e.m.Release(ctx, inst); err != nil {
		t.Fatal(err)
	}
	inUse.done(imgID)
	// A budget below what is held evicts the image and its extracted base.
	cache.budget = 1
	rep, err := cache.Evict(ctx, nil)
	if err != nil || len(rep.Evicted) != 1 || rep.Freed != after {
		t.Fatalf("evict: %+v %v", rep, err)
	}
	if _, err := os.Stat(filepath.Join(e.baseDir, imgID)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("extracted base left after eviction: %v", err)
	}
	if n := e.m.DerivedSize(imgID); n != 0 {
		t.Errorf("DerivedSize after eviction = %d", n)
	}
	e.assertNoLeaks()
}

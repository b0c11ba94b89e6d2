package rootfs

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// mountEnv is one test's playground: an image, a base dir, instance dirs.
type mountEnv struct {
	t       *testing.T
	root    string
	image   string
	baseDir string
	m       *Mounter
}

func newMountEnv(t *testing.T) *mountEnv {
	t.Helper()
	requireRoot(t)
	root := t.TempDir()
	cleanupMounts(t, root)
	e := &mountEnv{t: t, root: root, baseDir: filepath.Join(root, "base")}
	e.image = buildTestImage(t, root)
	e.m = NewMounter(e.baseDir, testLogger(t))
	e.m.busyWait = 10 * time.Millisecond
	return e
}

func (e *mountEnv) instance(name string) string { return filepath.Join(e.root, "instances", name) }
func (e *mountEnv) base() string                { return filepath.Join(e.baseDir, imgID) }

func (e *mountEnv) mounts() []mountEntry {
	e.t.Helper()
	ms, err := readMountInfo()
	if err != nil {
		e.t.Fatal(err)
	}
	return ms
}

// assertClean checks that nothing of ours is mounted, no loop device backs
// the image and the base mount point is gone.
func (e *mountEnv) assertClean() {
	e.t.Helper()
	if left := mountsUnder(e.mounts(), e.root); len(left) > 0 {
		e.t.Errorf("mounts left: %v", left)
	}
	e.assertNoLoop()
	if _, err := os.Stat(e.base()); !errors.Is(err, os.ErrNotExist) {
		e.t.Errorf("base mount point %s left (%v)", e.base(), err)
	}
	if st, _ := os.ReadDir(filepath.Join(e.baseDir, stateDirName)); len(st) > 0 {
		e.t.Errorf("state directory not empty: %v", st)
	}
}

// assertNoLoop waits briefly for autoclear and checks no loop device
// backs the image.
func (e *mountEnv) assertNoLoop() {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		loops := loopDevicesFor(e.t, e.image)
		if len(loops) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Errorf("loop devices still backed by %s: %v", e.image, loops)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func TestPrepareRelease(t *testing.T) {
	e := newMountEnv(t)
	ctx := t.Context()
	before := fileSHA(t, e.image)
	inst := e.instance("i1")

	rootfs, err := e.m.Prepare(ctx, meta(imgID, "raw"), e.image, inst)
	if err != nil {
		t.Fatal(err)
	}
	if rootfs != filepath.Join(inst, "rootfs") {
		t.Errorf("rootfs = %s", rootfs)
	}
	b, err := os.ReadFile(filepath.Join(rootfs, testMarkerPath))
	if err != nil || string(b) != testMarkerContent {
		t.Fatalf("marker: %q, %v", b, err)
	}
	// The base is read-only, mounted once, on one loop device.
	if on := mountsAt(e.mounts(), e.base()); len(on) != 1 || on[0].fsType != "ext4" || !strings.HasPrefix(on[0].source, "/dev/loop") {
		t.Fatalf("base mounts: %+v", on)
	}
	if err := os.WriteFile(filepath.Join(e.base(), "x"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to base: %v, want EROFS", err)
	}
	if loops := loopDevicesFor(t, e.image); len(loops) != 1 {
		t.Errorf("loop devices for image: %v", loops)
	} else if ro, _ := os.ReadFile("/sys/block/" + loops[0] + "/ro"); strings.TrimSpace(string(ro)) != "1" {
		t.Errorf("%s is not read-only (ro=%q)", loops[0], ro)
	} else if ac, _ := os.ReadFile("/sys/block/" + loops[0] + "/loop/autoclear"); strings.TrimSpace(string(ac)) != "1" {
		t.Errorf("%s has no autoclear (%q)", loops[0], ac)
	}
	// The overlay's root has the image root's mode.
	if fi, err := os.Stat(rootfs); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("rootfs root mode %v (%v), want 0750 from the image", fi.Mode(), err)
	}
	// The overlay is writable; writes land in upper.
	if on := mountsAt(e.mounts(), rootfs); len(on) != 1 || on[0].fsType != "overlay" {
		t.Fatalf("rootfs mounts: %+v", on)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "root/hello"), []byte("hi"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, testMarkerPath), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(inst, "overlay/upper/root/hello")); err != nil || string(b) != "hi" {
		t.Errorf("upper: %q %v", b, err)
	}
	if b, _ := os.ReadFile(filepath.Join(e.base(), testMarkerPath)); string(b) != testMarkerContent {
		t.Errorf("base marker changed: %q", b)
	}
	// The rootfs runs busybox.
	cmd := exec.Command("/bin/sh", "-c", "cat "+testMarkerPath+"; echo ok")
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs}
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != "changed\nok\n" {
		t.Errorf("chroot busybox: %q %v", out, err)
	}

	if err := e.m.Release(ctx, inst); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
	assertDirHolds(t, inst) // instance dir kept, empty
	if after := fileSHA(t, e.image); after != before {
		t.Error("image file changed")
	}
	// Idempotent.
	if err := e.m.Release(ctx, inst); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if err := e.m.Release(ctx, e.instance("never-existed")); err != nil {
		t.Errorf("Release of unknown instance: %v", err)
	}
}

func TestPrepareSharedBase(t *testing.T) {
	e := newMountEnv(t)
	ctx := t.Context()
	a, b := e.instance("a"), e.instance("b")
	ra, err := e.m.Prepare(ctx, meta(imgID, "raw"), e.image, a)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := e.m.Prepare(ctx, meta(imgID, "raw"), e.image, b)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(mountsAt(e.mounts(), e.base())); n != 1 {
		t.Errorf("%d base mounts, want 1", n)
	}
	if loops := loopDevicesFor(t, e.image); len(loops) != 1 {
		t.Errorf("loop devices: %v, want 1", loops)
	}
	if users := overlaysUsing(e.mounts(), e.base()); len(users) != 2 {
		t.Errorf("overlays on base: %v", users)
	}
	// Instances are isolated.
	os.WriteFile(filepath.Join(ra, "tmp/only-a"), nil, 0o644)
	if _, err := os.Stat(filepath.Join(rb, "tmp/only-a")); err == nil {
		t.Error("write in a visible in b")
	}

	if err := e.m.Release(ctx, a); err != nil {
		t.Fatal(err)
	}
	if n := len(mountsAt(e.mounts(), e.base())); n != 1 {
		t.Fatalf("base unmounted while b uses it (%d mounts)", n)
	}
	if b, err := os.ReadFile(filepath.Join(rb, testMarkerPath)); err != nil || string(b) != testMarkerContent {
		t.Errorf("b after releasing a: %q %v", b, err)
	}
	if err := e.m.Release(ctx, b); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

func TestPrepareIdempotentAndReboot(t *testing.T) {
	e := newMountEnv(t)
	ctx := t.Context()
	inst := e.instance("i")
	r1, err := e.m.Prepare(ctx, meta(imgID, "raw"), e.image, inst)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := e.m.Prepare(ctx, meta(imgID, "raw"), e.image, inst)
	if err != nil || r2 != r1 {
		t.Fatalf("second Prepare: %s %v", r2, err)
	}
	if n := len(mountsAt(e.mounts(), r1)); n != 1 {
		t.Errorf("%d overlay mounts after two Prepares", n)
	}
	os.WriteFile(filepath.Join(r1, "root/persist"), []byte("kept"), 0o644)

	// Simulate a host reboot: everything unmounted, directories stay.
	if err := syscall.Unmount(r1, 0); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Unmount(e.base(), 0); err != nil {
		t.Fatal(err)
	}
	e.assertNoLoop()

	// A fresh Mounter (agent restart) brings the instance back with its changes.
	m2 := NewMounter(e.baseDir, testLogger(t))
	r3, err := m2.Prepare(ctx, meta(imgID, "raw"), e.image, inst)
	if err != nil || r3 != r1 {
		t.Fatalf("Prepare after reboot: %s %v", r3, err)
	}
	if b, err := os.ReadFile(filepath.Join(r3, "root/persist")); err != nil || string(b) != "kept" {
		t.Errorf("upper not reused: %q %v", b, err)
	}
	// Another restart: Release works without any state.
	if err := NewMounter(e.baseDir, nil).Release(ctx, inst); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

func TestPrepareFailuresLeaveNothing(t *testing.T) {
	e := newMountEnv(t)
	ctx := t.Context()

	t.Run("unsupported-image", func(t *testing.T) {
		for name, tc := range map[string]struct {
			content []byte
			want    error
		}{
			"random": {randomData(1 << 20), ErrUnsupportedImage},
			// disk_format raw, but the bytes say qcow2: a mismatch.
			"qcow2": {append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 1<<16)...), ErrInvalidImage},
			"tiny":  {[]byte("hello"), ErrUnsupportedImage},
		} {
			p := filepath.Join(e.root, name+".img")
			os.WriteFile(p, tc.content, 0o644)
			inst := e.instance("unsupported-" + name)
			_, err := e.m.Prepare(ctx, meta(imgID, "raw"), p, inst)
			if !errors.Is(err, tc.want) {
				t.Errorf("%s: err = %v, want %v", name, err, tc.want)
			}
			t.Log(err)
			if _, err := os.Stat(inst); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: instance dir created and left", name)
			}
			e.assertClean()
		}
	})

	t.Run("missing-image", func(t *testing.T) {
		if _, err := e.m.Prepare(ctx, meta(imgID, "raw"), filepath.Join(e.root, "nope"), e.instance("x")); err == nil {
			t.Error("no error")
		}
		e.assertClean()
	})

	t.Run("bad-id", func(t *testing.T) {
		if _, err := e.m.Prepare(ctx, meta("../x", "raw"), e.image, e.instance("x")); !errors.Is(err, ErrInvalidImage) {
			t.Errorf("err = %v", err)
		}
		if _, err := e.m.Prepare(ctx, meta(imgID, "raw"), e.image, filepath.Join(e.root, "a,b")); err == nil {
			t.Error("instance dir with a comma accepted")
		}
		e.assertClean()
	})

	for _, step := range []string{"base", "dirs", "overlay"} {
		t.Run("failpoint-"+step, func(t *testing.T) {
			e.m.failpoint = func(s string) error {
				if s == step {
					return errors.New("injected at " + s)
				}
				return nil
			}
			defer func() { e.m.failpoint = nil }()
			inst := e.instance("fp-" + step)
			if _, err := e.m.Prepare(ctx, meta(imgID, "raw"), e.image, inst); err == nil || !strings.Contains(err.Error(), "injected") {
				t.Fatalf("err = %v", err)
			}
			if _, err := os.Stat(inst); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("instance dir left (%v)", err)
			}
			e.assertClean()
		})
	}

	t.Run("overlay-dir-is-a-file", func(t *testing.T) {
		inst := e.instance("file-in-the-way")
		os.MkdirAll(inst, 0o755)
		os.WriteFile(filepath.Join(inst, "overlay"), []byte("in the way"), 0o644)
		os.WriteFile(filepath.Join(inst, "console.log"), nil, 0o644)
		_, err := e.m.Prepare(ctx, meta(imgID, "raw"), e.image, inst)
		if err == nil {
			t.Fatal("no error")
		}
		t.Log(err)
		assertDirHolds(t, inst, "console.log", "overlay") // pre-existing things untouched
		e.assertClean()
	})

	t.Run("upper-on-overlay-fails-mount", func(t *testing.T) {
		// The kernel refuses an overlay whose upper dir is itself on an
		// overlayfs: a real mount(2) failure after the base was mounted.
		host := e.instance("host")
		hostRootfs, err := e.m.Prepare(ctx, meta(imgID, "raw"), e.image, host)
		if err != nil {
			t.Fatal(err)
		}
		inst := filepath.Join(hostRootfs, "tmp", "nested")
		_, err = e.m.Prepare(ctx, meta(imgID, "raw"), e.image, inst)
		if err == nil {
			t.Fatal("nested overlay succeeded")
		}
		t.Log(err)
		if _, err := os.Stat(inst); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("nested instance dir left (%v)", err)
		}
		if len(mountsAt(e.mounts(), e.base())) != 1 {
			t.Error("failed Prepare unmounted the base another instance uses")
		}
		if err := e.m.Release(ctx, host); err != nil {
			t.Fatal(err)
		}
		e.assertClean()
	})

	t.Run("existing-upper-survives-failure", func(t *testing.T) {
		inst := e.instance("has-data")
		upper := filepath.Join(inst, "overlay", "upper")
		os.MkdirAll(upper, 0o755)
		os.WriteFile(filepath.Join(upper, "precious"), []byte("data"), 0o644)
		e.m.failpoint = func(s string) error {
			if s == "overlay" {
				return errors.New("injected")
			}
			return nil
		}
		defer func() { e.m.failpoint = nil }()
		if _, err := e.m.Prepare(ctx, meta(imgID, "raw"), e.image, inst); err == nil {
			t.Fatal("no error")
		}
		if b, err := os.ReadFile(filepath.Join(upper, "precious")); err != nil || string(b) != "data" {
			t.Errorf("pre-existing upper data lost: %v", err)
		}
		if _, err := os.Stat(filepath.Join(inst, "overlay", "work")); !errors.Is(err, os.ErrNotExist) {
			t.Error("work dir created by the failed call left")
		}
		e.assertClean()
	})

	t.Run("cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := e.m.Prepare(cctx, meta(imgID, "raw"), e.image, e.instance("c")); !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v", err)
		}
		e.assertClean()
	})
}

func TestReleaseBusy(t *testing.T) {
	e := newMountEnv(t)
	ctx := t.Context()
	inst := e.instance("busy")
	rootfs, err := e.m.Prepare(ctx, meta(imgID, "raw"), e.image, inst)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(rootfs, testMarkerPath))
	if err != nil {
		t.Fatal(err)
	}
	e.m.busyRetries = 2
	if err := e.m.Release(ctx, inst); err != nil { // EBUSY, retries, then lazy detach
		t.Fatal(err)
	}
	if left := mountsUnder(e.mounts(), e.root); len(left) > 0 {
		t.Errorf("mounts left: %v", left)
	}
	// The open file keeps the detached overlay, hence the loop device, alive.
	if len(loopDevicesFor(t, e.image)) != 1 {
		t.Error("loop device gone while a file on it is open")
	}
	f.Close()
	e.assertClean() // autoclear frees it once the last user is gone
}

func TestPrepareReleaseConcurrent(t *testing.T) {
	e := newMountEnv(t)
	ctx := t.Context()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 8 {
		wg.Go(func() {
			inst := e.instance(fmt.Sprint("c", i))
			for range 4 {
				rootfs, err := e.m.Prepare(ctx, meta(imgID, "raw"), e.image, inst)
				if err != nil {
					errs <- err
					return
				}
				if _, err := os.Stat(filepath.Join(rootfs, testMarkerPath)); err != nil {
					errs <- err
				}
				if err := e.m.Release(ctx, inst); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	e.assertClean()
}

func TestCacheThenMount(t *testing.T) {
	e := newMountEnv(t)
	ctx := t.Context()
	src := t.TempDir()
	if err := os.Rename(e.image, filepath.Join(src, imgID+".img")); err != nil {
		t.Fatal(err)
	}
	c, err := NewCache(filepath.Join(e.root, "cache"), LocalSource{Dir: src}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	path, meta, _, err := c.Fetch(ctx, imgID, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckFormat(meta); err != nil {
		t.Fatal(err)
	}
	e.image = path // for the loop device checks
	inst := e.instance("from-cache")
	rootfs, err := e.m.Prepare(ctx, meta, path, inst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "sbin/init")); err != nil {
		t.Error(err)
	}
	if err := e.m.Release(ctx, inst); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

// BenchmarkPrepareReleaseWarm measures Prepare+Release of one instance when
// the image is cached and its base already mounted (another instance keeps
// it): overlay mount, mkdirs, unmount, removal, mountinfo reads.
func BenchmarkPrepareReleaseWarm(b *testing.B) {
	requireRoot(b)
	root := b.TempDir()
	cleanupMounts(b, root)
	image := buildTestImage(b, root)
	m := NewMounter(filepath.Join(root, "base"), nil)
	ctx := context.Background()
	keeper := filepath.Join(root, "keeper")
	if _, err := m.Prepare(ctx, meta(imgID, "raw"), image, keeper); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := m.Release(ctx, keeper); err != nil {
			b.Error(err)
		}
	})
	inst := filepath.Join(root, "inst")
	b.ResetTimer()
	for b.Loop() {
		if _, err := m.Prepare(ctx, meta(imgID, "raw"), image, inst); err != nil {
			b.Fatal(err)
		}
		if err := m.Release(ctx, inst); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPrepareReleaseCold includes the loop device and base mount.
func BenchmarkPrepareReleaseCold(b *testing.B) {
	requireRoot(b)
	root := b.TempDir()
	cleanupMounts(b, root)
	image := buildTestImage(b, root)
	m := NewMounter(filepath.Join(root, "base"), nil)
	ctx := context.Background()
	inst := filepath.Join(root, "inst")
	for b.Loop() {
		if _, err := m.Prepare(ctx, meta(imgID, "raw"), image, inst); err != nil {
			b.Fatal(err)
		}
		if err := m.Release(ctx, inst); err != nil {
			b.Fatal(err)
		}
	}
}

func TestPrepareLoopSetFDFallback(t *testing.T) {
	e := newMountEnv(t)
	e.m.noLoopConfigure = true
	ctx := t.Context()
	inst := e.instance("old-kernel")
	rootfs, err := e.m.Prepare(ctx, meta(imgID, "raw"), e.image, inst)
	if err != nil {
		t.Fatal(err)
	}
	loops := loopDevicesFor(t, e.image)
	if len(loops) != 1 {
		t.Fatalf("loops %v", loops)
	}
	for file, want := range map[string]string{"ro": "1", "loop/autoclear": "1"} {
		if b, _ := os.ReadFile("/sys/block/" + loops[0] + "/" + file); strings.TrimSpace(string(b)) != want {
			t.Errorf("%s %s = %q, want %s", loops[0], file, b, want)
		}
	}
	if _, err := os.Stat(filepath.Join(rootfs, testMarkerPath)); err != nil {
		t.Error(err)
	}
	if err := e.m.Release(ctx, inst); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

package rootfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// crashAt makes Prepare stop at step as if the agent were killed there:
// nothing is undone.
func crashAt(m *Mounter, step string) {
	m.failpoint = func(s string) error {
		if s == step {
			return fmt.Errorf("at %s: %w", s, errSimulatedCrash)
		}
		return nil
	}
}

// TestRecoverAfterCrash kills (simulated) Prepare after each of its steps,
// for each kind of base, then has a new Mounter Recover: everything the
// dead one made is released, except an overlay that was fully mounted
// (reported as an orphan if its instance is unknown, then released by
// Release) and a completely extracted tarball (a cache).
func TestRecoverAfterCrash(t *testing.T) {
	type crashCase struct {
		fixture, format string
		step            string
	}
	var cases []crashCase
	for _, s := range []string{"record", "export", "loop", "base", "dirs", "overlay"} {
		cases = append(cases, crashCase{"gpt.qcow2", "qcow2", s})
	}
	for _, s := range []string{"record", "loop", "base", "overlay"} {
		cases = append(cases, crashCase{"mbr", "raw", s})
	}
	for _, s := range []string{"extract", "base", "overlay"} {
		cases = append(cases, crashCase{"tar.zst", "root-tar", s})
	}
	for _, tc := range cases {
		t.Run(tc.format+"-"+tc.step, func(t *testing.T) {
			image := fixture(t, tc.fixture)
			e := newTestEnv(t)
			ctx := t.Context()
			inst := e.instance("crashed")
			crashAt(e.m, tc.step)
			if _, err := e.m.Prepare(ctx, meta(imgID, tc.format), image, inst); !errors.Is(err, errSimulatedCrash) {
				t.Fatalf("Prepare: %v", err)
			}
			if tc.step != "record" && tc.format == "qcow2" && len(processesMentioning(e.root)) != 1 {
				t.Fatal("no qemu-storage-daemon running after the crash")
			}

			// The agent restarts.
			m2 := NewMounter(e.baseDir, testLogger(t))
			m2.qcow2Via = "fuse"
			rep, err := m2.Recover(ctx, func(string) bool { return false })
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("report: %+v", rep)
			tarCached := tc.format == "root-tar" && tc.step != "extract"
			switch {
			case tc.step == "overlay":
				if !slices.Contains(rep.OrphanInstances, inst) || !slices.Contains(rep.KeptBases, imgID) {
					t.Errorf("mounted overlay of an unknown instance: report %+v", rep)
				}
				checkRootfs(t, filepath.Join(inst, "rootfs"), testMarkerContent) // untouched
				if err := m2.Release(ctx, inst); err != nil {
					t.Fatal(err)
				}
			case tarCached:
				if !slices.Contains(rep.KeptBases, imgID) {
					t.Errorf("complete tar base not kept: %+v", rep)
				}
			default:
				if !slices.Contains(rep.ReleasedBases, imgID) {
					t.Errorf("base not released: %+v", rep)
				}
				if tc.format == "qcow2" && tc.step != "record" && len(rep.StoppedExports) != 1 {
					t.Errorf("export not stopped: %+v", rep)
				}
				// The instance's own directories are the build's to clean up.
				if err := m2.Release(ctx, inst); err != nil {
					t.Fatal(err)
				}
			}
			if tarCached {
				e.assertNoLeaks(imgID)
				if err := m2.RemoveBase(ctx, imgID); err != nil {
					t.Fatal(err)
				}
			}
			e.assertNoLeaks()
			// And the image still works.
			r, err := m2.Prepare(ctx, meta(imgID, tc.format), image, inst)
			if err != nil {
				t.Fatal(err)
			}
			checkRootfs(t, r, testMarkerContent)
			must(t, m2.Release(ctx, inst))
			must(t, m2.RemoveBase(ctx, imgID))
			e.assertNoLeaks()
		})
	}
}

// TestPrepareAfterCrashWithoutRecover: a Prepare of the same image after a
// crash cleans up the half-made base itself.
func TestPrepareAfterCrashWithoutRecover(t *testing.T) {
	for _, step := range []string{"export", "loop"} {
		t.Run(step, func(t *testing.T) {
			image := fixture(t, "ext4.qcow2")
			e := newTestEnv(t)
			ctx := t.Context()
			crashAt(e.m, step)
			if _, err := e.m.Prepare(ctx, meta(imgID, "qcow2"), image, e.instance("a")); !errors.Is(err, errSimulatedCrash) {
				t.Fatal(err)
			}
			e.m.failpoint = nil
			r, err := e.m.Prepare(ctx, meta(imgID, "qcow2"), image, e.instance("b"))
			if err != nil {
				t.Fatal(err)
			}
			checkRootfs(t, r, testMarkerContent)
			if n := len(processesMentioning(e.root)); n != 1 {
				t.Errorf("%d qemu-storage-daemon processes, want 1", n)
			}
			must(t, e.m.Release(ctx, e.instance("b")))
			must(t, e.m.Release(ctx, e.instance("a")))
			e.assertNoLeaks()
		})
	}
}

// TestRecoverKeepsUsedBases: Recover at a restart while instances run
// leaves them alone, and only reports those it does not know.
func TestRecoverKeepsUsedBases(t *testing.T) {
	e := newTestEnv(t)
	ctx := t.Context()
	known, unknown := e.instance("known"), e.instance("unknown")
	for _, inst := range []string{known, unknown} {
		if _, err := e.m.Prepare(ctx, meta(imgID, "qcow2"), fixture(t, "gpt.qcow2"), inst); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.m.Prepare(ctx, meta("tarimg", "root-tar"), fixture(t, "tar.gz"), e.instance("t")); err != nil {
		t.Fatal(err)
	}
	inUse := func(dir string) bool { return dir != unknown }
	rep, err := NewMounter(e.baseDir, testLogger(t)).Recover(ctx, inUse)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.ReleasedBases)+len(rep.StoppedExports)+len(rep.DetachedLoops)+len(rep.RemovedTemp) > 0 ||
		!slices.Equal(rep.OrphanInstances, []string{unknown}) || len(rep.KeptBases) != 2 {
		t.Errorf("report %+v", rep)
	}
	for _, inst := range []string{known, unknown, e.instance("t")} {
		checkRootfs(t, filepath.Join(inst, "rootfs"), testMarkerContent)
		must(t, e.m.Release(ctx, inst))
	}
	must(t, e.m.RemoveBase(ctx, "tarimg"))
	e.assertNoLeaks()
}

// TestRecoverOrphanProcessesAndLoops: a qemu-storage-daemon whose pid was
// never recorded, and a loop device without autoclear bound to an image
// of the image directory, are found and released.
func TestRecoverOrphanProcessesAndLoops(t *testing.T) {
	imgDir := t.TempDir()
	e := newTestEnv(t, WithImageDir(imgDir))
	ctx := t.Context()
	baseDir, err := e.m.resolvedBaseDir()
	must(t, err)
	// A daemon started for image "orphan" by an agent killed before it
	// wrote anything down.
	ex := exportRecord{Mountpoint: exportFilePath(baseDir, "orphan"), PIDFile: pidFilePath(baseDir, "orphan")}
	if err := startExport(ctx, fixture(t, "ext4.qcow2"), &ex); err != nil {
		t.Fatal(err)
	}
	// One whose record says pid 0 (killed between start and record).
	ex2 := exportRecord{Mountpoint: exportFilePath(baseDir, "half"), PIDFile: pidFilePath(baseDir, "half")}
	if err := startExport(ctx, fixture(t, "gpt.qcow2"), &ex2); err != nil {
		t.Fatal(err)
	}
	must(t, saveRecord(baseDir, &baseRecord{Version: recordVersion, ImageID: "half", Kind: baseMount, Format: "qcow2",
		BootID: bootID(), Export: &exportRecord{Mountpoint: ex2.Mountpoint, PIDFile: ex2.PIDFile}}))
	// A loop device from the LOOP_SET_FD fallback (no autoclear yet).
	img := filepath.Join(imgDir, "img")
	copyFile(t, fixture(t, "ext4"), img)
	out, err := exec.Command("losetup", "-r", "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("losetup: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { detachLoopDevice(loop) })
	// A temporary extraction directory.
	must(t, os.MkdirAll(filepath.Join(baseDir, tmpPrefix+"tarimg-123/etc"), 0o755))

	rep, err := e.m.Recover(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report: %+v", rep)
	slices.Sort(rep.StoppedExports)
	want := []int{ex.PID, ex2.PID}
	slices.Sort(want)
	if !slices.Equal(rep.StoppedExports, want) {
		t.Errorf("stopped %v, want %v", rep.StoppedExports, want)
	}
	if !slices.Contains(rep.DetachedLoops, loop) {
		t.Errorf("loop %s not detached: %v", loop, rep.DetachedLoops)
	}
	if _, ok := loopSysState(loop); ok {
		if st, _ := loopSysState(loop); st.backing == img {
			t.Errorf("%s still bound to %s", loop, img)
		}
	}
	e.assertNoLeaks()
}

// TestRecoverAfterReboot: after a host reboot nothing is mounted and the
// records are stale: Recover removes them and their files, and touches no
// process or device by a number from the earlier boot.
func TestRecoverAfterReboot(t *testing.T) {
	e := newTestEnv(t)
	ctx := t.Context()
	inst := e.instance("i")
	image := fixture(t, "ext4.qcow2")
	r, err := e.m.Prepare(ctx, meta(imgID, "qcow2"), image, inst)
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(r, "root/kept"), []byte("kept"), 0o644))
	baseDir, _ := e.m.resolvedBaseDir()
	rec, err := loadRecord(baseDir, imgID)
	if err != nil || rec == nil || rec.Export == nil {
		t.Fatal(rec, err)
	}
	// The "reboot": everything unmounted, the daemon gone, devices freed.
	must(t, syscall.Unmount(r, 0))
	must(t, syscall.Unmount(filepath.Join(baseDir, imgID), 0))
	must(t, stopProcess(ctx, rec.Export.PID, time.Second))
	waitNoLoop(t, rec.Loop.Device, rec.Loop.Backing)
	// An innocent process now has the recorded pid (another boot's numbers).
	sleeper := exec.Command("sleep", "60")
	must(t, sleeper.Start())
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	_, start, _ := procStat(sleeper.Process.Pid)
	rec.BootID = "00000000-0000-0000-0000-000000000000"
	rec.Export.PID, rec.Export.StartTime = sleeper.Process.Pid, start
	b, _ := json.Marshal(rec)
	must(t, os.WriteFile(recordPath(baseDir, imgID), b, 0o644))
	if !exists(rec.Export.Mountpoint) {
		t.Fatal("export file gone with the daemon")
	}

	rep, err := NewMounter(e.baseDir, testLogger(t)).Recover(ctx, func(string) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report: %+v", rep)
	if !procAlive(sleeper.Process.Pid) {
		t.Fatal("Recover killed a process by a pid of an earlier boot")
	}
	if !slices.Contains(rep.ReleasedBases, imgID) || len(rep.StoppedExports) != 0 {
		t.Errorf("report %+v", rep)
	}
	e.assertNoLeaks()
	// The instance comes back with its changes.
	r, err = NewMounter(e.baseDir, testLogger(t)).Prepare(ctx, meta(imgID, "qcow2"), image, inst)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(r, "root/kept")); err != nil || string(b) != "kept" {
		t.Errorf("upper lost: %q %v", b, err)
	}
	must(t, e.m.Release(ctx, inst))
	e.assertNoLeaks()
}

func waitNoLoop(t *testing.T, dev, backing string) {
	t.Helper()
	must(t, waitLoopFree(context.Background(), dev, backing, 0, 5*time.Second))
}

func TestQsdMountpoint(t *testing.T) {
	args := append([]string{"qemu-storage-daemon"}, qsdArgs("/img/a,b.qcow2", "/base/.state/x.fuse", "/base/.state/x.pid")...)
	if mp := qsdMountpoint(args); mp != "/base/.state/x.fuse" {
		t.Errorf("mountpoint %q", mp)
	}
	if !slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, `"backing":null`) }) {
		t.Errorf("no backing:null in %q", args)
	}
	for _, bad := range [][]string{nil, {"sleep", "10"}, {"x", "--export", "type=fuse,mountpoint=/m"}, {"x", "--export"}} {
		if mp := qsdMountpoint(bad); mp != "" {
			t.Errorf("%q: %q", bad, mp)
		}
	}
}

// TestReleaseDoesNotWaitForOtherImages: while another image's base is
// being built (its lock held, as during a long extraction), releasing an
// instance of this image does not wait for it; the other image's leftovers
// are collected later.
func TestReleaseDoesNotWaitForOtherImages(t *testing.T) {
	e := newTestEnv(t)
	ctx := t.Context()
	inst := e.instance("i")
	if _, err := e.m.Prepare(ctx, meta(imgID, "raw"), fixture(t, "ext4"), inst); err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(e.baseDir, "slow-image")
	must(t, os.Mkdir(leftover, 0o755))
	unlock, err := e.m.locks.lock(ctx, "slow-image")
	must(t, err)
	done := make(chan error, 1)
	go func() { done <- e.m.Release(ctx, inst) }()
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Release waits for another image's lock")
	}
	if !exists(leftover) {
		t.Error("a base whose lock is held was collected")
	}
	unlock()
	must(t, e.m.Release(ctx, inst))
	if exists(leftover) {
		t.Error("leftover base not collected once free")
	}
	e.assertNoLeaks()
}

// TestFailedPrepareReleasesReusedBase: a Prepare that reused an unused
// base (left mounted by a crash) and then failed releases it.
func TestFailedPrepareReleasesReusedBase(t *testing.T) {
	e := newTestEnv(t)
	ctx := t.Context()
	image := fixture(t, "ext4.qcow2")
	crashAt(e.m, "dirs") // base made, no overlay
	if _, err := e.m.Prepare(ctx, meta(imgID, "qcow2"), image, e.instance("a")); !errors.Is(err, errSimulatedCrash) {
		t.Fatal(err)
	}
	e.m.failpoint = func(s string) error {
		if s == "overlay" {
			return errors.New("injected")
		}
		return nil
	}
	if _, err := e.m.Prepare(ctx, meta(imgID, "qcow2"), image, e.instance("b")); err == nil {
		t.Fatal("no error")
	}
	e.m.failpoint = nil
	must(t, os.RemoveAll(e.instance("a"))) // the crashed build's directories
	e.assertNoLeaks()
}

package drivertest

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/lxc-agent/lxc-agent/internal/testenv"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/rootfs"
)

// UnprivilegedMaps are the id maps of the Unprivileged subtest: container
// ids 0..65535 are host ids 100000..165535, for uids and gids.
var UnprivilegedMaps = []driver.IDMap{
	{Kind: 'u', ContainerID: 0, HostID: 100000, Count: 65536},
	{Kind: 'g', ContainerID: 0, HostID: 100000, Count: 65536},
}

// unprivileged runs a container in a user namespace from a busybox image
// prepared by pkg/rootfs for the map, once on an ext4 image (a loop-mounted
// base) and once on a root tarball (an extracted directory), and checks
// from the host what the map must do and what it must not.
func (s *suite) unprivileged(t *testing.T) {
	if !s.h.Real && !s.h.Unprivileged {
		t.Skip("the backend does not run containers in user namespaces (Harness.Real or Unprivileged)")
	}
	for _, format := range []string{"ext4", "tar"} {
		t.Run(format, func(t *testing.T) { s.unprivilegedFrom(t, format) })
	}
}

// logWriter sends a Mounter's log lines to t.Log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// busyboxImage builds the busybox root filesystem of BuildBusyboxRootfs as
// an image file of format "ext4" (raw) or "tar" (root-tar) in dir.
func busyboxImage(t *testing.T, dir, format string) (path string, meta rootfs.ImageMeta) {
	t.Helper()
	tree := filepath.Join(dir, "tree")
	if err := BuildBusyboxRootfs(tree); err != nil {
		t.Fatalf("busybox rootfs: %v", err)
	}
	meta = rootfs.ImageMeta{ID: "drivertest-" + format + "-" + uuid.NewString()[:8], ContainerFormat: "bare"}
	switch format {
	case "ext4":
		path, meta.DiskFormat = filepath.Join(dir, "busybox.ext4"), rootfs.DiskFormatRaw
		testenv.MakeExt4Image(t, tree, path, 64)
	default:
		path, meta.DiskFormat = filepath.Join(dir, "busybox.tar"), rootfs.DiskFormatRootTar
		if out, err := exec.Command("tar", "--numeric-owner", "-C", tree, "-cf", path, ".").CombinedOutput(); err != nil {
			t.Fatalf("tar: %v: %s", err, out)
		}
	}
	return path, meta
}

// owners lists "path uid:gid mode" for every entry under dir, to compare
// a tree before and after.
func owners(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		fmt.Fprintf(&b, "%s %d:%d %v\n", strings.TrimPrefix(p, dir), st.Uid, st.Gid, fi.Mode())
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return b.String()
}

func ownerOf(t *testing.T, p string) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatalf("stat %s: %v", p, err)
	}
	return fmt.Sprintf("%d:%d", st.Uid, st.Gid)
}

// procField returns the fields of the line key ("Uid:") of /proc/pid/status.
func procField(t *testing.T, pid int, key string) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, key); ok {
			return strings.Fields(rest)
		}
	}
	t.Fatalf("/proc/%d/status has no %s line", pid, key)
	return nil
}

// mountsUnder lists the mount points at or below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for l := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

func (s *suite) unprivilegedFrom(t *testing.T, format string) {
	ctx := s.ctx(t)
	work := t.TempDir()
	// The container's root (host uid 100000) must be able to reach the
	// rootfs: t.TempDir makes 0700 directories.
	for _, d := range []string{filepath.Dir(work), work} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	image, meta := busyboxImage(t, work, format)
	baseDir := filepath.Join(work, "bases")
	logger := slog.New(slog.NewTextHandler(logWriter{t}, nil))
	unpriv := rootfs.NewMounter(baseDir, logger, rootfs.WithIDMap(UnprivilegedMaps))
	priv := rootfs.NewMounter(baseDir, logger)
	// Runs after the Destroys registered below (cleanups run last-first).
	var instDirs []string
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, dir := range instDirs {
			if err := unpriv.Release(cctx, dir); err != nil {
				t.Errorf("release %s: %v", dir, err)
			}
		}
		if err := unpriv.RemoveBase(cctx, meta.ID); err != nil {
			t.Errorf("remove base: %v", err)
		}
		if left := mountsUnder(t, work); len(left) > 0 {
			t.Errorf("mounts left after Destroy and Release: %v", left)
			for _, m := range slices.Backward(left) {
				_ = syscall.Unmount(m, syscall.MNT_DETACH)
			}
		}
	})
	prepare := func(m *rootfs.Mounter, name string, maps []driver.IDMap) driver.Spec {
		t.Helper()
		sp := s.spec(t, driver.Limits{})
		dir := filepath.Join(work, "instances", name)
		instDirs = append(instDirs, dir)
		t0 := time.Now()
		r, err := m.Prepare(ctx, meta, image, dir)
		if err != nil {
			t.Fatalf("prepare rootfs: %v", err)
		}
		t.Logf("%s: rootfs prepared in %v", name, time.Since(t0).Round(time.Millisecond))
		sp.InstanceDir, sp.Rootfs, sp.ConsoleLog, sp.IDMaps = dir, r, filepath.Join(dir, "console.log"), maps
		return sp
	}

	d := s.h.New(t)
	spec := prepare(unpriv, "unprivileged", UnprivilegedMaps)
	base := filepath.Join(baseDir, meta.ID)
	baseBefore := owners(t, base)
	if !strings.Contains(baseBefore, "/bin/busybox 0:0 ") {
		t.Fatalf("base %s: busybox not owned by 0:0 on disk:\n%s", base, firstLines(baseBefore, 10))
	}
	s.create(t, d, spec)
	info := s.start(t, d, spec.ID)
	pid := info.InitPID
	waitFor(t, "the boot line", 15*time.Second, func() bool { return countIn(spec.ConsoleLog, s.h.BootLine) >= 1 })

	// The user namespace, seen from the host.
	for _, f := range []string{"uid_map", "gid_map"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(strings.Fields(string(b)), " "); got != "0 100000 65536" {
			t.Errorf("/proc/%d/%s = %q, want \"0 100000 65536\"", pid, f, got)
		}
	}
	for _, key := range []string{"Uid:", "Gid:"} {
		if got := procField(t, pid, key); len(got) != 4 || slices.ContainsFunc(got, func(v string) bool { return v != "100000" }) {
			t.Errorf("init's %s %v, want 100000 (real, effective, saved, fs)", key, got)
		}
	}

	// Inside: root, owning the image's files; what it creates in /.
	out, err := s.inContainer(t, d, spec.ID, "/bin/sh", "-c",
		"id -u; id -g; stat -c '%u:%g' / /bin/busybox /etc/inittab; echo made-inside > /created; stat -c '%u:%g' /created; cat /proc/self/uid_map")
	if err != nil {
		t.Fatalf("in the container: %v: %s", err, out)
	}
	t.Logf("inside:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{"0", "0", "0:0", "0:0", "0:0", "0:0"}
	if len(lines) < len(want) || !slices.Equal(lines[:len(want)], want) {
		t.Errorf("inside the container: id -u, id -g, owners of /, /bin/busybox, /etc/inittab, /created = %q, want %q", lines, want)
	}

	// Outside: the container's file in the overlay's upper dir, with its
	// host ids; the image's files as the idmapped view shows them.
	upper := filepath.Join(spec.InstanceDir, "overlay", "upper")
	if got := ownerOf(t, filepath.Join(upper, "created")); got != "100000:100000" {
		t.Errorf("upper/created owned by %s, want 100000:100000 (the container's root)", got)
	}
	if b, err := os.ReadFile(filepath.Join(upper, "created")); err != nil || string(b) != "made-inside\n" {
		t.Errorf("upper/created: %q, %v", b, err)
	}
	if got := ownerOf(t, filepath.Join(spec.Rootfs, "bin", "busybox")); got != "100000:100000" {
		t.Errorf("rootfs/bin/busybox seen from the host: %s, want 100000:100000 (idmapped)", got)
	}
	if _, err := os.Stat(filepath.Join(base, "created")); err == nil {
		t.Errorf("the container's file reached the base")
	}

	// A privileged container of the same image, for comparison (and to
	// show that both kinds share the base).
	pspec := prepare(priv, "privileged", nil)
	s.create(t, d, pspec)
	pinfo := s.start(t, d, pspec.ID)
	if got := procField(t, pinfo.InitPID, "Uid:"); got[0] != "0" {
		t.Errorf("privileged init runs as host uid %s", got[0])
	}

	// Start latency, a few rounds each (s.start logs every one).
	var lat [2][]time.Duration
	for range 3 {
		for i, id := range []string{spec.ID, pspec.ID} {
			if err := d.Stop(ctx, id, 0); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			t0 := time.Now()
			s.start(t, d, id)
			lat[i] = append(lat[i], time.Since(t0))
		}
	}
	for i := range lat {
		slices.Sort(lat[i])
	}
	t.Logf("start latency (%s base, median of 3): unprivileged %v, privileged %v",
		format, lat[0][1].Round(time.Millisecond), lat[1][1].Round(time.Millisecond))

	// A graceful stop works in the user namespace too.
	if err := d.Stop(ctx, spec.ID, 30*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	s.wantState(t, d, spec.ID, driver.Shutdown)
	if countIn(spec.ConsoleLog, s.h.ShutdownLine) < 1 {
		t.Errorf("no shutdown line after a graceful stop of the unprivileged container")
	}
	for _, id := range []string{spec.ID, pspec.ID} {
		if err := d.Destroy(ctx, id); err != nil {
			t.Fatalf("Destroy %s: %v", id, err)
		}
	}
	if after := owners(t, base); after != baseBefore {
		t.Errorf("the base on disk changed:\n%s\nwas:\n%s", firstLines(after, 20), firstLines(baseBefore, 20))
	}
	if left := mountsUnder(t, filepath.Join(work, "instances")); len(left) != 2 {
		t.Errorf("after Destroy the two overlays (and nothing else) stay mounted until Release: %v", left)
	}
}

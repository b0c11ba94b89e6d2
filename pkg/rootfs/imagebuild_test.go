package rootfs

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Test image layout.
const (
	testMarkerPath    = "/etc/lxc-agent-marker"
	testMarkerContent = "built by imagebuild_test.go\n"
	testImageSize     = 32 << 20
)

// requireRoot skips tests that mount: they need root and the tools below.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices, mount)")
	}
	for _, p := range []string{"/dev/loop-control", "/bin/busybox"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s: %v", p, err)
		}
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("needs mkfs.ext4 (e2fsprogs)")
	}
}

// buildRootfsTree writes a minimal busybox root filesystem into dir.
func buildRootfsTree(t testing.TB, dir string) {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("read busybox: %v", err)
	}
	for _, d := range []string{"bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "root", "var/log"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(rel string, data []byte, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, rel), data, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("bin/busybox", bb, 0o755)
	for _, l := range []struct{ target, link string }{
		{"busybox", "bin/sh"},
		{"busybox", "bin/cat"},
		{"busybox", "bin/echo"},
		{"../bin/busybox", "sbin/init"},
	} {
		if err := os.Symlink(l.target, filepath.Join(dir, l.link)); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/inittab", []byte("::sysinit:/bin/echo booted\n::respawn:-/bin/sh\n::ctrlaltdel:/sbin/reboot\n::shutdown:/bin/echo bye\n"), 0o644)
	write("etc/hostname", []byte("busybox\n"), 0o644)
	write(strings.TrimPrefix(testMarkerPath, "/"), []byte(testMarkerContent), 0o644)
}

// buildTestImage builds a 32 MiB ext4 image of a busybox rootfs in dir and
// returns its path.
func buildTestImage(t testing.TB, dir string) string {
	t.Helper()
	tree := filepath.Join(dir, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	buildRootfsTree(t, tree)
	img := filepath.Join(dir, "busybox.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(testImageSize); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, img).CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	// mkfs.ext4 -d does not copy the root directory's mode: give the
	// image's root an unusual one, to check the overlay root inherits it.
	out, err = exec.Command("debugfs", "-w", "-R", "sif / mode 040750", img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v: %s", err, out)
	}
	if err := os.RemoveAll(tree); err != nil {
		t.Fatal(err)
	}
	return img
}

// cleanupMounts registers a last-resort cleanup that lazily unmounts
// anything still mounted under dir, so that a failing test leaves no mount
// behind and t.TempDir can delete dir. Call it after t.TempDir.
func cleanupMounts(t testing.TB, dir string) {
	t.Helper()
	t.Cleanup(func() {
		ms, err := readMountInfo()
		if err != nil {
			t.Error(err)
			return
		}
		left := mountsUnder(ms, dir)
		for i := len(left) - 1; i >= 0; i-- {
			t.Errorf("mount left behind: %s", left[i])
			_ = unix.Unmount(left[i], unix.MNT_DETACH)
		}
	})
}

// loopDevicesFor lists the loop devices whose backing file is path.
func loopDevicesFor(t testing.TB, path string) []string {
	t.Helper()
	files, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // detached meanwhile
		}
		b = bytes.TrimSpace(b)
		b = bytes.TrimSuffix(b, []byte(" (deleted)"))
		if string(b) == path {
			out = append(out, strings.Split(f, "/")[3])
		}
	}
	return out
}

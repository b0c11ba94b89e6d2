package testenv

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BusyboxBin is the statically linked busybox (Debian package busybox-static)
// copied into the rootfs.
const BusyboxBin = "/bin/busybox"

// BootLine is what the default inittab prints to /dev/console when the
// container's init runs.
const BootLine = "lxc-agent: init started"

// DefaultInittab is the /etc/inittab BuildBusyboxRootfs writes when none is
// given: it prints BootLine to /dev/console and keeps a sleep running so the
// container has a second process. busybox init itself never exits. Note that
// busybox init stops on SIGUSR2 (poweroff), SIGUSR1 (halt) or SIGTERM
// (reboot), not on SIGPWR (LXC's default lxc.signal.halt).
const DefaultInittab = `::sysinit:/bin/echo "` + BootLine + `" > /dev/console
::respawn:/bin/sleep 1000000
::shutdown:/bin/echo "lxc-agent: init stopping" > /dev/console
`

// busyboxLinks are the applets linked in the rootfs (dir -> names).
var busyboxLinks = map[string][]string{
	"bin": {"sh", "ash", "ip", "sleep", "echo", "cat", "ifconfig", "mount", "umount",
		"hostname", "ls", "ps", "mkdir", "touch", "kill", "true", "false", "test",
		"sync", "uname", "grep", "date", "env", "id", "cp", "rm", "ln", "mknod", "printf"},
	"sbin": {"init", "halt", "poweroff", "reboot"},
}

// BuildBusyboxRootfs builds a minimal busybox-static root filesystem in dir
// (created if needed): /bin/busybox with relative symlinks for the applets
// (sh, ip, sleep, echo, cat, ifconfig, mount, hostname, ...), /sbin/init,
// the usual empty dirs (proc sys dev tmp run etc root), /etc/inittab
// (inittab, or DefaultInittab when empty), /etc/passwd and /etc/group.
func BuildBusyboxRootfs(dir, inittab string) error {
	if inittab == "" {
		inittab = DefaultInittab
	}
	dirs := []struct {
		name string
		mode os.FileMode
	}{
		{"bin", 0o755}, {"sbin", 0o755}, {"etc", 0o755}, {"proc", 0o555}, {"sys", 0o555},
		{"dev", 0o755}, {"tmp", 0o1777}, {"run", 0o755}, {"root", 0o700},
		{"var", 0o755}, {"usr/bin", 0o755}, {"usr/sbin", 0o755},
	}
	for _, d := range dirs {
		p := filepath.Join(dir, d.name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(p, d.mode); err != nil { // MkdirAll is subject to umask
			return err
		}
	}
	if err := copyFile(BusyboxBin, filepath.Join(dir, "bin", "busybox"), 0o755); err != nil {
		return fmt.Errorf("copy busybox (package busybox-static): %w", err)
	}
	for sub, names := range busyboxLinks {
		target := "busybox"
		if sub != "bin" {
			target = "../bin/busybox"
		}
		for _, n := range names {
			p := filepath.Join(dir, sub, n)
			_ = os.Remove(p)
			if err := os.Symlink(target, p); err != nil {
				return err
			}
		}
	}
	files := map[string]string{
		"etc/inittab":  inittab,
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":    "root:x:0:\n",
		"etc/hostname": "lxc-agent-test\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}

// BuildExt4Image makes a raw ext4 image (no partition table) of sizeMB MiB
// at imgPath holding the contents of rootfsDir: truncate + mkfs.ext4 -d.
// Run as root so the files in the image are owned by root.
func BuildExt4Image(rootfsDir, imgPath string, sizeMB int) error {
	if sizeMB <= 0 {
		return fmt.Errorf("ext4 image size %d MiB", sizeMB)
	}
	if err := os.Remove(imgPath); err != nil && !os.IsNotExist(err) {
		return err
	}
	out, err := exec.Command("truncate", "-s", fmt.Sprintf("%dM", sizeMB), imgPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("truncate %s: %v: %s", imgPath, err, out)
	}
	cmd := exec.Command("/usr/sbin/mkfs.ext4", "-q", "-F", "-d", rootfsDir, imgPath)
	cmd.Env = serviceEnv(nil)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(imgPath)
		return fmt.Errorf("mkfs.ext4 -d %s %s: %v: %s", rootfsDir, imgPath, err, out)
	}
	return nil
}

// BusyboxRootfs is BuildBusyboxRootfs for tests (t.Fatal on error).
func BusyboxRootfs(t testing.TB, dir, inittab string) {
	t.Helper()
	if err := BuildBusyboxRootfs(dir, inittab); err != nil {
		t.Fatalf("busybox rootfs: %v", err)
	}
}

// MakeExt4Image is BuildExt4Image for tests (t.Fatal on error).
func MakeExt4Image(t testing.TB, rootfsDir, imgPath string, sizeMB int) {
	t.Helper()
	if err := BuildExt4Image(rootfsDir, imgPath, sizeMB); err != nil {
		t.Fatalf("ext4 image: %v", err)
	}
}

package drivertest

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// Console lines of the busybox root file system built by BuildBusyboxRootfs.
const (
	// BootLine is printed to the console by init's sysinit action.
	BootLine = "drivertest: init is up"
	// ShutdownLine is printed to the console by init's shutdown action,
	// i.e. only when init handled the halt signal.
	ShutdownLine = "drivertest: init is halting"
)

// BusyboxBin is the statically linked busybox (Debian package
// busybox-static) copied into the root file system.
const BusyboxBin = "/bin/busybox"

// Inittab is the /etc/inittab of the busybox root file system: it prints
// BootLine, keeps a second process running, and prints ShutdownLine when
// init halts (busybox init halts on SIGUSR1, SIGUSR2, SIGTERM and SIGPWR).
const Inittab = "::sysinit:/bin/busybox echo " + BootLine + "\n" +
	"::respawn:/bin/busybox sleep 3600\n" +
	"::shutdown:/bin/busybox echo " + ShutdownLine + "\n"

var (
	appletsOnce sync.Once
	applets     []string
	appletsErr  error
)

// busyboxApplets lists the applets of BusyboxBin ("busybox --list").
func busyboxApplets() ([]string, error) {
	appletsOnce.Do(func() {
		out, err := exec.Command(BusyboxBin, "--list").Output()
		if err != nil {
			appletsErr = fmt.Errorf("%s --list (package busybox-static): %w", BusyboxBin, err)
			return
		}
		for _, a := range strings.Fields(string(out)) {
			if a != "busybox" && !strings.ContainsAny(a, "/[") {
				applets = append(applets, a)
			}
		}
	})
	return applets, appletsErr
}

// BuildBusyboxRootfs builds a bootable root file system in dir (created if
// needed): /bin/busybox with a symlink in /bin for every applet (sh, sleep,
// head, tail, dd, ps, ...), /sbin/init, the usual empty directories, and
// /etc/inittab = Inittab.
func BuildBusyboxRootfs(dir string) error {
	names, err := busyboxApplets()
	if err != nil {
		return err
	}
	for _, d := range []string{"bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "var", "usr/bin", "usr/sbin"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := copyFile(BusyboxBin, filepath.Join(dir, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	for _, a := range names {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil && !os.IsExist(err) {
			return err
		}
	}
	if err := os.Symlink("../bin/busybox", filepath.Join(dir, "sbin", "init")); err != nil && !os.IsExist(err) {
		return err
	}
	files := map[string]string{
		"etc/inittab":  Inittab,
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":    "root:x:0:\n",
		"etc/hostname": "drivertest\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// BusyboxSpec returns a bootable spec for id: a fresh busybox root file
// system (BuildBusyboxRootfs) in a test temporary directory that also
// holds the console log. No limits, no NICs.
func BusyboxSpec(t testing.TB, id string) driver.Spec {
	t.Helper()
	inst := t.TempDir()
	root := filepath.Join(inst, "rootfs")
	if err := BuildBusyboxRootfs(root); err != nil {
		t.Fatalf("busybox rootfs: %v", err)
	}
	short := id
	if len(short) > 8 {
		short = short[:8]
	}
	return driver.Spec{
		ID:          id,
		Hostname:    "dt-" + short,
		InstanceDir: inst,
		Rootfs:      root,
		ConsoleLog:  filepath.Join(inst, "console.log"),
		Init:        "/sbin/init",
	}
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

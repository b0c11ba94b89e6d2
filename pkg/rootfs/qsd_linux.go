package rootfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// qsdArgs builds the qemu-storage-daemon command line that exposes the
// qcow2 image as a read-only raw file at mountpoint over FUSE. JSON syntax
// keeps any file name intact (no comma escaping) and lets "backing": null
// forbid a backing file even if the header check were wrong.
func qsdArgs(image, mountpoint, pidfile string) []string {
	js := marshalJSON
	type blockdev struct {
		Driver   string `json:"driver"`
		NodeName string `json:"node-name"`
		Filename string `json:"filename,omitempty"`
		File     string `json:"file,omitempty"`
		ReadOnly bool   `json:"read-only"`
		Backing  *int   `json:"backing"`
	}
	file := struct {
		Driver   string `json:"driver"`
		NodeName string `json:"node-name"`
		Filename string `json:"filename"`
		ReadOnly bool   `json:"read-only"`
	}{"file", "file0", image, true}
	return []string{
		"--blockdev", js(file),
		"--blockdev", js(blockdev{Driver: "qcow2", NodeName: "disk0", File: "file0", ReadOnly: true}),
		"--export", js(struct {
			Type       string `json:"type"`
			ID         string `json:"id"`
			NodeName   string `json:"node-name"`
			Mountpoint string `json:"mountpoint"`
			Writable   bool   `json:"writable"`
		}{"fuse", "export0", "disk0", mountpoint, false}),
		"--daemonize",
		"--pidfile", pidfile,
	}
}

// qsdMountpoint returns the FUSE export mountpoint in a
// qemu-storage-daemon command line, or "".
func qsdMountpoint(cmdline []string) string {
	for i, a := range cmdline {
		if a != "--export" || i+1 >= len(cmdline) || !strings.HasPrefix(cmdline[i+1], "{") {
			continue
		}
		var e struct {
			Type       string `json:"type"`
			Mountpoint string `json:"mountpoint"`
		}
		if json.Unmarshal([]byte(cmdline[i+1]), &e) == nil && e.Type == "fuse" {
			return e.Mountpoint
		}
	}
	return ""
}

// startExport starts qemu-storage-daemon exporting image at ex.Mountpoint
// (created here as an empty file) and fills in ex.PID and ex.StartTime.
// With --daemonize the command returns once the export is up, or fails
// with QEMU's message.
func startExport(ctx context.Context, image string, ex *exportRecord) error {
	bin, err := exec.LookPath("qemu-storage-daemon")
	if err != nil {
		return fmt.Errorf("qcow2 images need qemu-storage-daemon (Debian package qemu-system-common) or the nbd kernel module: %w", ErrUnsupportedImage)
	}
	f, err := os.OpenFile(ex.Mountpoint, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create export file: %w", err)
	}
	f.Close()
	// Output to a file, not a pipe: the daemon must not hold our pipe open.
	logf, err := os.CreateTemp(stateDirOf(ex.Mountpoint), ".qsd-log-*")
	if err != nil {
		return err
	}
	os.Remove(logf.Name())
	defer logf.Close()
	cmd := exec.CommandContext(ctx, bin, qsdArgs(image, ex.Mountpoint, ex.PIDFile)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	if err := cmd.Run(); err != nil {
		out, _ := io.ReadAll(io.NewSectionReader(logf, 0, 4096))
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("qemu-storage-daemon: %w: %s", err, strings.TrimSpace(string(out)))
	}
	b, err := os.ReadFile(ex.PIDFile)
	if err != nil {
		return fmt.Errorf("qemu-storage-daemon pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return fmt.Errorf("qemu-storage-daemon pid file %s holds %q", ex.PIDFile, b)
	}
	_, start, ok := procStat(pid)
	if !ok {
		return fmt.Errorf("qemu-storage-daemon (pid %d) exited after start", pid)
	}
	ex.PID, ex.StartTime = pid, start
	ms, err := readMountInfo()
	if err != nil {
		return err
	}
	if on := mountsAt(ms, ex.Mountpoint); len(on) == 0 || !strings.HasPrefix(on[len(on)-1].fsType, "fuse") {
		return fmt.Errorf("qemu-storage-daemon (pid %d) started but %s is not a FUSE mount", pid, ex.Mountpoint)
	}
	return nil
}

func stateDirOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		return p[:i]
	}
	return "."
}

// qsdProcesses returns the pids of the processes serving the FUSE export
// at mountpoint: the recorded pid if its start time and command line
// still match, else (pid unknown, or from a pid file) every process whose
// command line exports exactly that mountpoint.
func qsdProcesses(ex exportRecord) []int {
	if ex.PID > 0 {
		if _, start, ok := procStat(ex.PID); ok && start == ex.StartTime && qsdMountpoint(procCmdline(ex.PID)) == ex.Mountpoint {
			return []int{ex.PID}
		}
	}
	var out []int
	for _, pid := range allPIDs() {
		if pid != os.Getpid() && qsdMountpoint(procCmdline(pid)) == ex.Mountpoint {
			out = append(out, pid)
		}
	}
	return out
}

// stopExport ends the export: the daemon is sent SIGTERM (SIGKILL after
// timeout), a FUSE mount left behind is detached, and the export and pid
// files are removed. sameBoot=false (a record from before a reboot) skips
// the processes: the pid may belong to someone else now. It returns the
// pids it stopped.
func stopExport(ctx context.Context, ex exportRecord, sameBoot bool, timeout time.Duration, log *slog.Logger) ([]int, error) {
	var stopped []int
	if sameBoot {
		for _, pid := range qsdProcesses(ex) {
			if err := stopProcess(ctx, pid, timeout); err != nil {
				return stopped, fmt.Errorf("stop qemu-storage-daemon (pid %d): %w", pid, err)
			}
			log.Info("qemu-storage-daemon stopped", "pid", pid, "export", ex.Mountpoint)
			stopped = append(stopped, pid)
		}
	}
	// A daemon that died leaves its FUSE mount ("transport endpoint is not
	// connected"); so does a SIGKILL.
	for range 8 {
		ms, err := readMountInfo()
		if err != nil {
			return stopped, err
		}
		if len(mountsAt(ms, ex.Mountpoint)) == 0 {
			break
		}
		if err := unix.Unmount(ex.Mountpoint, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) {
			return stopped, fmt.Errorf("unmount export %s: %w", ex.Mountpoint, err)
		}
	}
	for _, p := range []string{ex.Mountpoint, ex.PIDFile} {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return stopped, err
		}
	}
	return stopped, nil
}

// stopProcess sends SIGTERM and waits for pid to exit, then SIGKILL.
func stopProcess(ctx context.Context, pid int, timeout time.Duration) error {
	wait := func(d time.Duration) bool {
		deadline := time.Now().Add(d)
		for sleep := time.Millisecond; ; sleep = min(2*sleep, 20*time.Millisecond) {
			if !procAlive(pid) {
				return true
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return false
			}
			time.Sleep(sleep)
		}
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		return err
	}
	if wait(timeout) {
		return nil
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	if wait(2 * time.Second) {
		return nil
	}
	return fmt.Errorf("pid %d still alive after SIGKILL", pid)
}

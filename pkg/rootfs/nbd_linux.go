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
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// nbdAllocator hands out free /dev/nbdN devices. A device is free when
// /sys/block/nbdN/pid is absent (no qemu-nbd serves it). To keep two
// builds (in this agent or another process) from taking the same device
// between that check and the moment qemu-nbd is connected, the check and
// the connect run under an exclusive flock of <lockDir>/lxc-agent-nbdN.lock,
// held until the pid file appears.
type nbdAllocator struct {
	sysBlock string // /sys/block
	devDir   string // /dev
	lockDir  string // /run/lock
	timeout  time.Duration
	// connect attaches the image to dev (qemu-nbd --connect), disconnect
	// detaches it; tests fake them.
	connect    func(ctx context.Context, dev, image string) error
	disconnect func(ctx context.Context, dev string) error
}

func newNBDAllocator() *nbdAllocator {
	return &nbdAllocator{sysBlock: "/sys/block", devDir: "/dev", lockDir: "/run/lock",
		timeout: 10 * time.Second, connect: qemuNBDConnect, disconnect: qemuNBDDisconnect}
}

// devices lists nbdN in numeric order.
func (a *nbdAllocator) devices() []int {
	ents, _ := os.ReadDir(a.sysBlock)
	var ns []int
	for _, e := range ents {
		if s, ok := strings.CutPrefix(e.Name(), "nbd"); ok {
			if n, err := strconv.Atoi(s); err == nil {
				ns = append(ns, n)
			}
		}
	}
	slices.Sort(ns)
	return ns
}

func (a *nbdAllocator) inUse(n int) bool {
	_, err := os.Stat(filepath.Join(a.sysBlock, fmt.Sprintf("nbd%d", n), "pid"))
	return err == nil
}

// allocate connects image to the first free device and returns its path.
func (a *nbdAllocator) allocate(ctx context.Context, image string) (string, error) {
	ns := a.devices()
	if len(ns) == 0 {
		return "", fmt.Errorf("no nbd devices in %s", a.sysBlock)
	}
	for _, n := range ns {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		if a.inUse(n) {
			continue
		}
		dev, ok, err := a.tryDevice(ctx, n, image)
		if err != nil {
			return "", err
		}
		if ok {
			return dev, nil
		}
	}
	return "", fmt.Errorf("no free nbd device (of %d)", len(ns))
}

// tryDevice takes device n if its lock is free and it is still unused.
func (a *nbdAllocator) tryDevice(ctx context.Context, n int, image string) (string, bool, error) {
	lock := filepath.Join(a.lockDir, fmt.Sprintf("lxc-agent-nbd%d.lock", n))
	fd, err := unix.Open(lock, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("nbd lock: %w", &os.PathError{Op: "open", Path: lock, Err: err})
	}
	defer unix.Close(fd) // releases the flock
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return "", false, nil // another build is connecting it
		}
		return "", false, fmt.Errorf("flock %s: %w", lock, err)
	}
	if a.inUse(n) {
		return "", false, nil
	}
	dev := filepath.Join(a.devDir, fmt.Sprintf("nbd%d", n))
	if err := a.connect(ctx, dev, image); err != nil {
		return "", false, fmt.Errorf("connect %s to %s: %w", image, dev, err)
	}
	deadline := time.Now().Add(a.timeout)
	for !a.inUse(n) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = a.disconnect(context.WithoutCancel(ctx), dev)
			return "", false, fmt.Errorf("%s: no server after %v", dev, a.timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return dev, true, nil
}

// qemuNBDJSON is the image as a json: pseudo-filename: qcow2 with no
// backing file allowed.
func qemuNBDJSON(image string) string {
	return "json:" + marshalJSON(map[string]any{
		"driver":  "qcow2",
		"backing": nil,
		"file":    map[string]any{"driver": "file", "filename": image},
	})
}

// nbdImage returns the image file in a qemu-nbd command line made by
// qemuNBDConnect, or "".
func nbdImage(cmdline []string) string {
	for _, a := range cmdline {
		if js, ok := strings.CutPrefix(a, "json:"); ok {
			var v struct {
				File struct {
					Filename string `json:"filename"`
				} `json:"file"`
			}
			if json.Unmarshal([]byte(js), &v) == nil {
				return v.File.Filename
			}
		}
	}
	return ""
}

// marshalJSON encodes v without HTML escaping (file names stay as they are).
func marshalJSON(v any) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	return strings.TrimSuffix(b.String(), "\n")
}

func qemuNBDConnect(ctx context.Context, dev, image string) error {
	out, err := exec.CommandContext(ctx, "qemu-nbd", "--read-only", "--fork", "--connect="+dev, qemuNBDJSON(image)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-nbd: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func qemuNBDDisconnect(ctx context.Context, dev string) error {
	out, err := exec.CommandContext(ctx, "qemu-nbd", "--disconnect", dev).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-nbd --disconnect %s: %w: %s", dev, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// release flushes the device's buffers (BLKFLSBUF), disconnects it and
// waits for its server to go.
func (a *nbdAllocator) release(ctx context.Context, dev string) error {
	n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dev), "nbd"))
	if err != nil {
		return fmt.Errorf("not an nbd device: %s", dev)
	}
	if !a.inUse(n) {
		return nil
	}
	if fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		_ = unix.IoctlSetInt(fd, unix.BLKFLSBUF, 0)
		unix.Close(fd)
	}
	if err := a.disconnect(ctx, dev); err != nil {
		return err
	}
	deadline := time.Now().Add(a.timeout)
	for a.inUse(n) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still connected after disconnect", dev)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// nbdServer returns the pid serving dev and its command line, if any.
func (a *nbdAllocator) server(dev string) (int, []string) {
	b, err := os.ReadFile(filepath.Join(a.sysBlock, filepath.Base(dev), "pid"))
	if err != nil {
		return 0, nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, nil
	}
	return pid, procCmdline(pid)
}

// nbdAvailable reports whether the nbd driver is there, trying
// "modprobe nbd" once per Mounter.
func (m *Mounter) nbdAvailable(ctx context.Context) bool {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		return true
	}
	m.nbdProbe.Do(func() {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "modprobe", "nbd", "max_part=0").CombinedOutput(); err != nil {
			m.log.Info("no nbd module: qcow2 images go through qemu-storage-daemon FUSE exports",
				"modprobe", strings.TrimSpace(string(out)))
		}
	})
	_, err := os.Stat("/sys/module/nbd")
	return err == nil
}

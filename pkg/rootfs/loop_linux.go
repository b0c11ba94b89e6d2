package rootfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// loopDevice is an attached loop device whose fd is still open. With
// LO_FLAGS_AUTOCLEAR the kernel detaches it when the last user goes away:
// after a successful mount, close the fd and the device is freed at
// unmount; without a mount, detach() frees it at once.
type loopDevice struct {
	path string
	fd   int
}

const loopAttachTries = 64

// attachLoop binds the bytes [offset, offset+sizeLimit) of backing (opened
// read-only; sizeLimit 0: to the end) to a free loop device with
// LO_FLAGS_READ_ONLY|LO_FLAGS_AUTOCLEAR. It uses LOOP_CONFIGURE and falls
// back to LOOP_SET_FD + LOOP_SET_STATUS64 on kernels without it (< 5.8).
// Losing the race for a free device (EBUSY) is retried. tryConfigure=false
// forces the fallback (tests).
func attachLoop(ctx context.Context, backing string, offset, sizeLimit int64, tryConfigure bool) (*loopDevice, error) {
	bfd, err := unix.Open(backing, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: backing, Err: err}
	}
	defer unix.Close(bfd) // the loop device holds its own reference

	ctl, err := unix.Open("/dev/loop-control", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: "/dev/loop-control", Err: err}
	}
	defer unix.Close(ctl)

	info := unix.LoopInfo64{
		Flags:     unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR,
		Offset:    uint64(offset),
		Sizelimit: uint64(sizeLimit),
	}
	copy(info.File_name[:len(info.File_name)-1], backing)
	useConfigure := tryConfigure

	for try := 0; try < loopAttachTries; try++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		path := fmt.Sprintf("/dev/loop%d", n)
		fd, err := openLoopNode(path, n)
		if err != nil {
			return nil, err
		}
		if useConfigure {
			err = unix.IoctlLoopConfigure(fd, &unix.LoopConfig{Fd: uint32(bfd), Info: info})
			switch {
			case err == nil:
				return &loopDevice{path: path, fd: fd}, nil
			case errors.Is(err, unix.EBUSY):
				unix.Close(fd) // taken by someone else meanwhile
				continue
			case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY):
				useConfigure = false // old kernel: fall through to LOOP_SET_FD
			default:
				unix.Close(fd)
				return nil, fmt.Errorf("LOOP_CONFIGURE %s: %w", path, err)
			}
		}
		if err := unix.IoctlSetInt(fd, unix.LOOP_SET_FD, bfd); err != nil {
			unix.Close(fd)
			if errors.Is(err, unix.EBUSY) {
				continue
			}
			return nil, fmt.Errorf("LOOP_SET_FD %s: %w", path, err)
		}
		if err := unix.IoctlLoopSetStatus64(fd, &info); err != nil {
			_ = unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
			unix.Close(fd)
			return nil, fmt.Errorf("LOOP_SET_STATUS64 %s: %w", path, err)
		}
		return &loopDevice{path: path, fd: fd}, nil
	}
	return nil, fmt.Errorf("no free loop device after %d tries", loopAttachTries)
}

// openLoopNode opens /dev/loopN read-only, creating the node if the /dev in
// use (a container's) lacks it.
func openLoopNode(path string, n int) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		if err := unix.Mknod(path, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, &os.PathError{Op: "mknod", Path: path, Err: err}
		}
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

// release closes the fd. Once the device is mounted this hands its
// lifetime to the mount (autoclear at unmount).
func (l *loopDevice) release() {
	if l.fd >= 0 {
		unix.Close(l.fd)
		l.fd = -1
	}
}

// detach unbinds an unused device and closes the fd.
func (l *loopDevice) detach() {
	if l.fd >= 0 {
		_ = unix.IoctlSetInt(l.fd, unix.LOOP_CLR_FD, 0)
		l.release()
	}
}

// loopState is a bound loop device as sysfs shows it.
type loopState struct {
	dev     string // /dev/loopN
	backing string // backing file, without " (deleted)"
	offset  int64
}

// boundLoops lists the bound loop devices (sysfs /sys/block/loopN/loop).
func boundLoops() []loopState {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []loopState
	for _, f := range files {
		name := strings.Split(f, "/")[3]
		if st, ok := loopSysState("/dev/" + name); ok {
			out = append(out, st)
		}
	}
	return out
}

// loopSysState reads what dev (/dev/loopN) is bound to; false if unbound.
func loopSysState(dev string) (loopState, bool) {
	sys := filepath.Join("/sys/block", filepath.Base(dev), "loop")
	b, err := os.ReadFile(filepath.Join(sys, "backing_file"))
	if err != nil {
		return loopState{}, false
	}
	st := loopState{dev: dev, backing: strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")}
	if o, err := os.ReadFile(filepath.Join(sys, "offset")); err == nil {
		st.offset, _ = strconv.ParseInt(strings.TrimSpace(string(o)), 10, 64)
	}
	return st, true
}

// waitLoopFree waits up to timeout for dev to be unbound from backing (at
// offset): autoclear runs when its last user (the mount) goes away. If it
// is still bound then, it is detached explicitly, unless someone still
// holds it (a lazily unmounted filesystem with open files): with autoclear
// set, the kernel frees it when they go. A device meanwhile bound to
// something else is left alone.
func waitLoopFree(ctx context.Context, dev, backing string, offset int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, ok := loopSysState(dev)
		if !ok || st.backing != backing || st.offset != offset {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			err := detachLoopDevice(dev)
			if errors.Is(err, unix.EBUSY) && loopAutoclear(dev) {
				return nil
			}
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func loopAutoclear(dev string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop/autoclear"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// detachLoopDevice unbinds dev unless it is in use: it is opened with
// O_EXCL, which fails (EBUSY) while a filesystem is mounted from it.
func detachLoopDevice(dev string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_EXCL, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENXIO) {
			return nil
		}
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("LOOP_CLR_FD %s: %w", dev, err)
	}
	return nil
}

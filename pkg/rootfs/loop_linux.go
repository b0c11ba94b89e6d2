package rootfs

import (
	"context"
	"errors"
	"fmt"
	"os"

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

// attachLoop binds backing (opened read-only) to a free loop device with
// LO_FLAGS_READ_ONLY|LO_FLAGS_AUTOCLEAR. It uses LOOP_CONFIGURE and falls
// back to LOOP_SET_FD + LOOP_SET_STATUS64 on kernels without it (< 5.8).
// Losing the race for a free device (EBUSY) is retried. tryConfigure=false
// forces the fallback (tests).
func attachLoop(ctx context.Context, backing string, tryConfigure bool) (*loopDevice, error) {
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

	info := unix.LoopInfo64{Flags: unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR}
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

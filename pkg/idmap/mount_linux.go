package idmap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// ErrUnsupported: the kernel, or the filesystem to be mapped, cannot make
// idmapped mounts (mount_setattr is missing, or the filesystem type does
// not allow MOUNT_ATTR_IDMAP: overlayfs itself, for one). ShiftedCopy is
// the fallback.
var ErrUnsupported = errors.New("idmapped mounts not supported")

// NewUserns returns a handle on a new user namespace with maps, for
// mount_setattr. A helper process is created in the namespace (the
// system's cat, reading a pipe, so that it also ends if this process
// dies), its /proc/<pid>/ns/user opened, and the helper ended again: the
// handle alone keeps the namespace alive. The caller closes it.
func NewUserns(ctx context.Context, maps []driver.IDMap) (*os.File, error) {
	if err := Validate(maps); err != nil {
		return nil, err
	}
	cat, err := exec.LookPath("cat")
	if err != nil {
		return nil, fmt.Errorf("user namespace: %w", err)
	}
	cmd := exec.CommandContext(ctx, cat)
	cmd.Env = []string{}
	cmd.Dir = "/"
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("user namespace: %w", err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER}
	for _, m := range maps {
		r := syscall.SysProcIDMap{ContainerID: m.ContainerID, HostID: m.HostID, Size: m.Count}
		if m.Kind == 'u' {
			cmd.SysProcAttr.UidMappings = append(cmd.SysProcAttr.UidMappings, r)
		} else {
			cmd.SysProcAttr.GidMappings = append(cmd.SysProcAttr.GidMappings, r)
		}
	}
	// The maps are written before the child execs: once Start returns,
	// the namespace is complete.
	if err := cmd.Start(); err != nil {
		stdin.Close()
		return nil, fmt.Errorf("user namespace: start %s: %w", cat, err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	// The child is ours and not reaped before Wait: its pid cannot have
	// been reused.
	f, err := os.Open("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/ns/user")
	if err != nil {
		return nil, fmt.Errorf("user namespace: %w", err)
	}
	return f, nil
}

// MountIDMapped attaches at dst (an existing directory) an idmapped clone
// of the mount or directory tree at src, through which a file owned on
// disk by id N appears owned by the host id that the maps give container
// id N, and a file created through it by host id H is stored owned by
// container id M if H maps to M. Submounts of src are not included. With
// readOnly the clone is read-only. Errors wrap ErrUnsupported when the
// kernel or the filesystem of src cannot idmap. Nothing is left mounted on
// error.
func MountIDMapped(ctx context.Context, src, dst string, maps []driver.IDMap, readOnly bool) error {
	ns, err := NewUserns(ctx, maps)
	if err != nil {
		return err
	}
	defer ns.Close()
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			err = fmt.Errorf("%w (%w: needs Linux 5.2)", err, ErrUnsupported)
		}
		return &os.PathError{Op: "open_tree", Path: src, Err: err}
	}
	// A detached tree that is never attached goes away with its last fd.
	defer unix.Close(fd)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(ns.Fd())}
	if readOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		switch {
		case errors.Is(err, unix.ENOSYS):
			err = fmt.Errorf("%w (%w: needs Linux 5.12)", err, ErrUnsupported)
		case errors.Is(err, unix.EINVAL):
			// The filesystem type lacks FS_ALLOW_IDMAP (or the kernel
			// lacks MOUNT_ATTR_IDMAP).
			err = fmt.Errorf("%w (%w by the filesystem of %s, %s)", err, ErrUnsupported, src, fsTypeName(src))
		}
		return &os.PathError{Op: "mount_setattr idmap", Path: src, Err: err}
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return &os.PathError{Op: "move_mount", Path: dst, Err: err}
	}
	return nil
}

// Probe reports whether an idmapped mount of dir can be made, by making
// one (detached, never attached) with a one-id map. nil means yes; an
// error wrapping ErrUnsupported means the kernel or filesystem cannot.
func Probe(ctx context.Context, dir string) error {
	maps := []driver.IDMap{{Kind: 'u', ContainerID: 0, HostID: 1<<31 - 1, Count: 1}, {Kind: 'g', ContainerID: 0, HostID: 1<<31 - 1, Count: 1}}
	ns, err := NewUserns(ctx, maps)
	if err != nil {
		return err
	}
	defer ns.Close()
	fd, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("open_tree: %w", ErrUnsupported)
		}
		return &os.PathError{Op: "open_tree", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(ns.Fd())}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("mount_setattr idmap on %s (%s): %w: %w", dir, fsTypeName(dir), err, ErrUnsupported)
		}
		return &os.PathError{Op: "mount_setattr idmap", Path: dir, Err: err}
	}
	return nil
}

// fsTypeName names the filesystem type of path for messages.
func fsTypeName(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "unknown filesystem"
	}
	switch uint32(st.Type) {
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.EXT4_SUPER_MAGIC:
		return "ext2/3/4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.SQUASHFS_MAGIC:
		return "squashfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.FUSE_SUPER_MAGIC:
		return "fuse"
	}
	return fmt.Sprintf("filesystem magic %#x", uint32(st.Type))
}

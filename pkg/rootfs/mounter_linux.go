package rootfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mounter builds instance root filesystems: one read-only loop mount per
// image at <baseDir>/<imageID>, shared by all instances of that image, and
// per instance an overlayfs at <instanceDir>/rootfs whose upper and work
// directories are <instanceDir>/overlay/{upper,work}.
//
// It keeps no state of its own: /proc/self/mountinfo is the truth, so a new
// Mounter (after an agent restart) can Release what an old one Prepared.
// Prepare and Release are serialized per image for the base mounts; calls
// for one instanceDir must not run concurrently (the caller serializes
// operations per instance anyway). Needs root (CAP_SYS_ADMIN).
type Mounter struct {
	baseDir string
	log     *slog.Logger
	locks   keyLocks

	// failpoint, if set (tests only), is called after each step of Prepare
	// and makes it fail with the returned error.
	failpoint func(step string) error
	// noLoopConfigure forces LOOP_SET_FD+LOOP_SET_STATUS64 (tests).
	noLoopConfigure bool
	// busyRetries and busyWait bound the EBUSY retries of unmount.
	busyRetries int
	busyWait    time.Duration
}

// NewMounter returns a Mounter keeping base mounts under baseDir (created
// on first use, mode 0711, and kept). A nil logger discards.
func NewMounter(baseDir string, logger *slog.Logger) *Mounter {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Mounter{baseDir: baseDir, log: logger, busyRetries: 5, busyWait: 50 * time.Millisecond}
}

// Prepare makes the root filesystem of the instance in instanceDir from the
// raw filesystem image at imagePath (as returned by Cache.Fetch) and
// returns its path, <instanceDir>/rootfs.
//
// The image is loop-mounted read-only at <baseDir>/<imageID> unless already
// mounted there; then an overlayfs with that as lowerdir and
// <instanceDir>/overlay/{upper,work} is mounted at <instanceDir>/rootfs.
// Existing upper/work directories are reused, so after a host reboot
// Prepare brings back the instance's filesystem with its changes. If the
// rootfs is already mounted on this image, Prepare returns it unchanged.
// imagePath is only read when the base is not mounted yet; the caller must
// keep the file in place while instances use it.
//
// On error nothing this call created remains (no mount, no loop device, no
// directory). Errors wrap ErrUnsupportedImage if the image holds no
// supported filesystem and ErrInvalidImage for a bad image id.
func (m *Mounter) Prepare(ctx context.Context, imageID, imagePath, instanceDir string) (rootfs string, err error) {
	rootfs, err = m.prepare(ctx, imageID, imagePath, instanceDir)
	if err != nil {
		return "", fmt.Errorf("prepare rootfs of %s from image %s: %w", instanceDir, imageID, err)
	}
	return rootfs, nil
}

func (m *Mounter) prepare(ctx context.Context, imageID, imagePath, instanceDir string) (_ string, err error) {
	if err := ValidateID(imageID); err != nil {
		return "", err
	}
	if imagePath == "" || instanceDir == "" {
		return "", errors.New("empty image path or instance dir")
	}
	unlock, err := m.locks.lock(ctx, imageID)
	if err != nil {
		return "", err
	}
	defer unlock() // deferred first, runs last: undo happens under the lock
	var u undoStack
	defer func() {
		if err != nil {
			// Undo even if ctx was the reason for failing.
			u.run(context.WithoutCancel(ctx), m)
		}
	}()

	baseDir, err := m.resolvedBaseDir()
	if err != nil {
		return "", err
	}
	instanceDir, err = filepath.Abs(instanceDir)
	if err != nil {
		return "", err
	}
	if err := mkdirAllUndo(&u, instanceDir, 0o755); err != nil {
		return "", err
	}
	// Mount points in mountinfo are symlink-free: compare resolved paths.
	if instanceDir, err = filepath.EvalSymlinks(instanceDir); err != nil {
		return "", err
	}
	if err := checkMountPath(instanceDir); err != nil {
		return "", err
	}
	var (
		base    = filepath.Join(baseDir, imageID)
		rootfs  = filepath.Join(instanceDir, "rootfs")
		overlay = filepath.Join(instanceDir, "overlay")
		upper   = filepath.Join(overlay, "upper")
		work    = filepath.Join(overlay, "work")
	)

	mounts, err := readMountInfo()
	if err != nil {
		return "", err
	}
	if on := mountsAt(mounts, rootfs); len(on) > 0 {
		top := on[len(on)-1]
		if top.fsType == "overlay" && slices.Contains(top.lowerDirs(), base) {
			m.log.Debug("rootfs already mounted", "rootfs", rootfs, "image", imageID)
			return rootfs, nil
		}
		return "", fmt.Errorf("%s is already mounted (%s %s, lowerdir %v), not from image %s",
			rootfs, top.fsType, top.source, top.lowerDirs(), imageID)
	}

	if len(mountsAt(mounts, base)) == 0 {
		if err := m.mountBase(ctx, &u, imagePath, base); err != nil {
			return "", err
		}
	} else {
		m.log.Debug("reusing base mount", "image", imageID, "base", base)
	}
	if err := m.fail("base"); err != nil {
		return "", err
	}

	newUpper := false
	for _, d := range []struct {
		path string
		perm os.FileMode
	}{{overlay, 0o700}, {upper, 0o755}, {work, 0o700}, {rootfs, 0o755}} {
		created, err := mkdirUndo(&u, d.path, d.perm)
		if err != nil {
			return "", err
		}
		newUpper = newUpper || (created && d.path == upper)
	}
	if newUpper {
		// The overlay's root directory takes its owner and mode from the
		// upper dir: give it those of the image's root.
		if err := copyDirAttrs(base, upper); err != nil {
			return "", err
		}
	}
	if err := m.fail("dirs"); err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}

	data := "lowerdir=" + base + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", rootfs, "overlay", 0, data); err != nil {
		return "", fmt.Errorf("mount overlay on %s (%s): %w", rootfs, data, err)
	}
	u.push("unmount "+rootfs, func(ctx context.Context) error { return m.unmount(ctx, rootfs) })
	if err := m.fail("overlay"); err != nil {
		return "", err
	}
	m.log.Info("rootfs mounted", "rootfs", rootfs, "image", imageID)
	return rootfs, nil
}

// mountBase loop-mounts imagePath read-only at base. Called with the
// image's lock held and base not mounted.
func (m *Mounter) mountBase(ctx context.Context, u *undoStack, imagePath, base string) error {
	fstype, err := detectFS(imagePath)
	if err != nil {
		return err
	}
	if _, err := mkdirUndo(u, base, 0o755); err != nil {
		return err
	}
	loop, err := attachLoop(ctx, imagePath, !m.noLoopConfigure)
	if err != nil {
		return fmt.Errorf("attach %s to a loop device: %w", imagePath, err)
	}
	if err := unix.Mount(loop.path, base, fstype, unix.MS_RDONLY, ""); err != nil {
		loop.detach()
		return fmt.Errorf("mount %s (%s, %s) on %s: %w", loop.path, imagePath, fstype, base, err)
	}
	// The mount holds the device now; closing our fd arms autoclear, so
	// unmounting base frees the loop device.
	loop.release()
	u.push("unmount base "+base, func(ctx context.Context) error { return m.unmountBaseIfUnused(ctx, base) })
	m.log.Info("image mounted", "image", filepath.Base(base), "path", imagePath, "device", loop.path, "fstype", fstype, "base", base)
	return nil
}

// Release unmounts and deletes the instance's root filesystem
// (<instanceDir>/rootfs and <instanceDir>/overlay, i.e. all changes the
// instance made), then unmounts every base mount that no overlay uses any
// more. instanceDir itself is left. Releasing what is not there is not an
// error. The container must be stopped first.
func (m *Mounter) Release(ctx context.Context, instanceDir string) error {
	if err := m.release(ctx, instanceDir); err != nil {
		return fmt.Errorf("release rootfs of %s: %w", instanceDir, err)
	}
	return nil
}

func (m *Mounter) release(ctx context.Context, instanceDir string) error {
	if instanceDir == "" {
		return errors.New("empty instance dir")
	}
	instanceDir, err := filepath.Abs(instanceDir)
	if err != nil {
		return err
	}
	resolved, err := filepath.EvalSymlinks(instanceDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Nothing of the instance left; still collect unused bases.
	case err != nil:
		return err
	default:
		if err := m.releaseInstance(ctx, resolved); err != nil {
			return err
		}
	}
	return m.collectBases(ctx)
}

func (m *Mounter) releaseInstance(ctx context.Context, instanceDir string) error {
	rootfs := filepath.Join(instanceDir, "rootfs")
	overlay := filepath.Join(instanceDir, "overlay")
	for i := 0; ; i++ {
		mounts, err := readMountInfo()
		if err != nil {
			return err
		}
		if len(mountsAt(mounts, rootfs)) == 0 {
			break
		}
		if i == 8 {
			return fmt.Errorf("%s is still mounted after %d unmounts", rootfs, i)
		}
		if err := m.unmount(ctx, rootfs); err != nil {
			return err
		}
		m.log.Info("rootfs unmounted", "rootfs", rootfs)
	}
	if err := removeAllNoMounts(overlay); err != nil {
		return err
	}
	if err := os.Remove(rootfs); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// collectBases unmounts every base mount no overlay uses and removes the
// mount points (also leftover empty ones).
func (m *Mounter) collectBases(ctx context.Context) error {
	baseDir, err := filepath.Abs(m.baseDir)
	if err != nil {
		return err
	}
	if baseDir, err = filepath.EvalSymlinks(baseDir); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	mounts, err := readMountInfo()
	if err != nil {
		return err
	}
	ids := map[string]bool{}
	for _, e := range mounts {
		if filepath.Dir(e.mountPoint) == baseDir {
			ids[filepath.Base(e.mountPoint)] = true
		}
	}
	ents, err := os.ReadDir(baseDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			ids[e.Name()] = true
		}
	}
	var errs []error
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		if ValidateID(id) != nil {
			continue // not ours
		}
		if err := m.collectBase(ctx, id, filepath.Join(baseDir, id)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *Mounter) collectBase(ctx context.Context, id, base string) error {
	unlock, err := m.locks.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	return m.unmountBaseIfUnused(ctx, base)
}

// unmountBaseIfUnused unmounts base if no overlay uses it and removes the
// empty mount point. The image's lock must be held.
func (m *Mounter) unmountBaseIfUnused(ctx context.Context, base string) error {
	for i := 0; ; i++ {
		mounts, err := readMountInfo()
		if err != nil {
			return err
		}
		if len(mountsAt(mounts, base)) == 0 {
			break
		}
		if users := overlaysUsing(mounts, base); len(users) > 0 {
			m.log.Debug("base mount still in use", "base", base, "users", users)
			return nil
		}
		if i == 8 {
			return fmt.Errorf("%s is still mounted after %d unmounts", base, i)
		}
		if err := m.unmount(ctx, base); err != nil {
			return err
		}
		m.log.Info("image unmounted", "base", base)
	}
	err := os.Remove(base)
	switch {
	case err == nil, errors.Is(err, fs.ErrNotExist):
	case errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST):
		m.log.Warn("base mount point is not mounted but not empty either, leaving it", "base", base)
	default:
		return fmt.Errorf("remove base mount point: %w", err)
	}
	return nil
}

// unmount unmounts target, retrying while it is busy; as a last resort it
// detaches it lazily (MNT_DETACH) and logs a warning. Not mounted is nil.
func (m *Mounter) unmount(ctx context.Context, target string) error {
	wait := m.busyWait
	for i := 0; ; i++ {
		err := unix.Unmount(target, unix.UMOUNT_NOFOLLOW)
		switch {
		case err == nil, errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // EINVAL: not a mount point (any more)
		case !errors.Is(err, unix.EBUSY):
			return fmt.Errorf("unmount %s: %w", target, err)
		}
		if i >= m.busyRetries {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("unmount %s: busy: %w", target, ctx.Err())
		case <-time.After(wait):
		}
		wait *= 2
	}
	m.log.Warn("mount still busy, detaching it lazily", "target", target)
	if err := unix.Unmount(target, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s (lazy): %w", target, err)
	}
	return nil
}

func (m *Mounter) fail(step string) error {
	if m.failpoint == nil {
		return nil
	}
	return m.failpoint(step)
}

func (m *Mounter) resolvedBaseDir() (string, error) {
	d, err := filepath.Abs(m.baseDir)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(d, 0o711); err != nil {
		return "", err
	}
	if d, err = filepath.EvalSymlinks(d); err != nil {
		return "", err
	}
	return d, checkMountPath(d)
}

// checkMountPath refuses paths that overlayfs options cannot carry.
func checkMountPath(p string) error {
	if i := strings.IndexFunc(p, func(r rune) bool {
		return r == ',' || r == ':' || r == '\\' || r < 0x20 || r == 0x7f
	}); i >= 0 {
		return fmt.Errorf("path %q: character %q is not allowed in overlayfs paths", p, p[i])
	}
	return nil
}

// undoStack collects the inverse of every step taken, run last-first.
type undoStack struct {
	steps []undoStep
}

type undoStep struct {
	what string
	fn   func(context.Context) error
}

func (u *undoStack) push(what string, fn func(context.Context) error) {
	u.steps = append(u.steps, undoStep{what, fn})
}

func (u *undoStack) run(ctx context.Context, m *Mounter) {
	for i := len(u.steps) - 1; i >= 0; i-- {
		s := u.steps[i]
		if err := s.fn(ctx); err != nil {
			m.log.Error("undo failed", "step", s.what, "err", err)
		}
	}
	u.steps = nil
}

// mkdirUndo creates dir (its parent must exist) unless it exists, and if
// it created it, registers its removal and reports true.
func mkdirUndo(u *undoStack, dir string, perm os.FileMode) (bool, error) {
	err := os.Mkdir(dir, perm)
	if errors.Is(err, fs.ErrExist) {
		fi, serr := os.Stat(dir)
		if serr == nil && fi.IsDir() {
			return false, nil
		}
		return false, fmt.Errorf("%s exists and is not a directory", dir)
	}
	if err != nil {
		return false, err
	}
	u.push("remove "+dir, func(context.Context) error { return removeAllNoMounts(dir) })
	return true, nil
}

// copyDirAttrs gives dst the owner and permission bits of src.
func copyDirAttrs(src, dst string) error {
	var st unix.Stat_t
	if err := unix.Stat(src, &st); err != nil {
		return &os.PathError{Op: "stat", Path: src, Err: err}
	}
	if err := unix.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return &os.PathError{Op: "chown", Path: dst, Err: err}
	}
	if err := unix.Chmod(dst, st.Mode&0o7777); err != nil {
		return &os.PathError{Op: "chmod", Path: dst, Err: err}
	}
	return nil
}

// mkdirAllUndo is mkdirUndo for dir and its missing parents.
func mkdirAllUndo(u *undoStack, dir string, perm os.FileMode) error {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	for _, d := range slices.Backward(missing) {
		if _, err := mkdirUndo(u, d, perm); err != nil {
			return err
		}
	}
	return nil
}

// removeAllNoMounts deletes dir and its contents, but refuses if anything
// is mounted at or below it (os.RemoveAll would delete the mounted files).
func removeAllNoMounts(dir string) error {
	mounts, err := readMountInfo()
	if err != nil {
		return err
	}
	if mps := mountsUnder(mounts, dir); len(mps) > 0 {
		return fmt.Errorf("not removing %s: mounts below it: %v", dir, mps)
	}
	return os.RemoveAll(dir)
}

package rootfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/idmap"
)

// Mounter builds instance root filesystems: one read-only base per image
// at <baseDir>/<imageID>, shared by all instances of that image, and per
// instance an overlayfs at <instanceDir>/rootfs whose upper and work
// directories are <instanceDir>/overlay/{upper,work}.
//
// The base is a read-only mount of the image's root filesystem (raw and
// qcow2 images, through a loop device, and for qcow2 an nbd device or a
// qemu-storage-daemon FUSE export), or the directory a root tarball was
// extracted to. What Prepare creates for a base is persisted in a record
// under <baseDir>/.state before it is created, so that Recover can release
// it after a crash; the mount table is the truth about what is in use.
//
// Prepare and Release are serialized per image; calls for one instanceDir
// must not run concurrently (the caller serializes operations per instance
// anyway). Needs root (CAP_SYS_ADMIN).
type Mounter struct {
	baseDir   string
	log       *slog.Logger
	locks     keyLocks
	tarOpts   TarOptions
	imageDirs []string

	nbd      *nbdAllocator
	nbdProbe sync.Once

	// idmaps is the id map of new instances (WithIDMap); nil: privileged.
	idmaps []driver.IDMap

	// failpoint, if set (tests only), is called after each step of Prepare
	// and makes it fail with the returned error. errSimulatedCrash makes
	// Prepare return without undoing anything, like a killed agent.
	failpoint func(step string) error
	// noLoopConfigure forces LOOP_SET_FD+LOOP_SET_STATUS64 (tests).
	noLoopConfigure bool
	// noIDMappedMounts makes unprivileged instances use shifted copies
	// as if the kernel could not idmap (tests).
	noIDMappedMounts bool
	// qcow2Via forces "nbd" or "fuse" for qcow2 images (tests); "" picks
	// nbd if the module is there.
	qcow2Via string
	// busyRetries and busyWait bound the EBUSY retries of unmount.
	busyRetries int
	busyWait    time.Duration
	// stopTimeout bounds the wait for a qemu-storage-daemon to exit after
	// SIGTERM before it is killed.
	stopTimeout time.Duration
	// loopFreeTimeout bounds the wait for autoclear to free a loop device
	// after its unmount, before it is detached explicitly.
	loopFreeTimeout time.Duration
}

// errSimulatedCrash, returned by a failpoint, stops Prepare as a kill
// would: nothing is undone (tests of Recover).
var errSimulatedCrash = errors.New("simulated crash")

// MounterOption configures a Mounter.
type MounterOption func(*Mounter)

// WithTarOptions sets what root tarballs may create (default: the zero
// TarOptions, i.e. no device nodes, no setuid/setgid bits).
func WithTarOptions(o TarOptions) MounterOption { return func(m *Mounter) { m.tarOpts = o } }

// WithImageDir names a directory holding image files (the Cache's): Recover
// detaches unmounted loop devices backed by files in it, besides those
// backed by files under baseDir or by an image a base record names.
func WithImageDir(dir string) MounterOption {
	return func(m *Mounter) {
		if abs, err := filepath.Abs(dir); err == nil {
			m.imageDirs = append(m.imageDirs, abs)
		}
	}
}

// NewMounter returns a Mounter keeping bases under baseDir (created on
// first use, mode 0711, and kept). A nil logger discards.
func NewMounter(baseDir string, logger *slog.Logger, opts ...MounterOption) *Mounter {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := &Mounter{baseDir: baseDir, log: logger, busyRetries: 5, busyWait: 50 * time.Millisecond,
		nbd: newNBDAllocator(), stopTimeout: 10 * time.Second, loopFreeTimeout: 500 * time.Millisecond}
	for _, o := range opts {
		o(m)
	}
	return m
}

// Prepare makes the root filesystem of the instance in instanceDir from
// the image at imagePath (as returned by Cache.Fetch), whose metadata is
// meta, and returns its path, <instanceDir>/rootfs.
//
// The image's base is made at <baseDir>/<meta.ID> unless it is there
// already: see the package documentation for the formats. Then an overlayfs
// with the base as lowerdir and <instanceDir>/overlay/{upper,work} is
// mounted at <instanceDir>/rootfs. Existing upper/work directories are
// reused, so after a host reboot Prepare brings back the instance's
// filesystem with its changes. If the rootfs is already mounted on this
// image, Prepare returns it unchanged. imagePath is only read when the base
// is not there yet; the caller must keep the file in place while instances
// use it.
//
// With WithIDMap, a new instance gets the Mounter's id map, recorded in
// <instanceDir>/overlay/idmap: its lower layer is an idmapped view of the
// base (or a shifted copy of it) and its upper directory starts owned by
// the mapped root. An existing instance keeps the map it was created with
// (none for one created privileged), whatever the Mounter's is now, so
// that its files and its container's configuration stay consistent.
//
// On error nothing this call created remains (no mount, loop or nbd device,
// FUSE export, temporary file or directory). Errors wrap
// ErrUnsupportedImage (format or content not supported), ErrInvalidImage
// (bad id or metadata, data that does not match the metadata, a truncated
// or corrupt image) or ErrUnsafeImage (hostile content).
func (m *Mounter) Prepare(ctx context.Context, meta ImageMeta, imagePath, instanceDir string) (rootfs string, err error) {
	rootfs, err = m.prepare(ctx, meta, imagePath, instanceDir)
	if err != nil {
		return "", fmt.Errorf("prepare rootfs of %s from image %s: %w", instanceDir, meta.ID, err)
	}
	return rootfs, nil
}

func (m *Mounter) prepare(ctx context.Context, meta ImageMeta, imagePath, instanceDir string) (_ string, err error) {
	imageID := meta.ID
	if err := ValidateID(imageID); err != nil {
		return "", err
	}
	if err := CheckFormat(meta); err != nil {
		return "", err
	}
	if len(m.idmaps) > 0 {
		if err := idmap.Validate(m.idmaps); err != nil {
			return "", err
		}
	}
	if imagePath == "" || instanceDir == "" {
		return "", errors.New("empty image path or instance dir")
	}
	if imagePath, err = filepath.Abs(imagePath); err != nil {
		return "", err
	}
	unlock, err := m.locks.lock(ctx, imageID)
	if err != nil {
		return "", err
	}
	defer unlock() // deferred first, runs last: undo happens under the lock
	var u undoStack
	var baseDir string
	defer func() {
		if err != nil && !errors.Is(err, errSimulatedCrash) {
			// Undo even if ctx was the reason for failing.
			uctx := context.WithoutCancel(ctx)
			u.run(uctx, m)
			// A base this call reused may be unused now (its last instance
			// was released meanwhile, which skipped it while we held the lock).
			if baseDir != "" {
				if _, rerr := m.releaseBase(uctx, baseDir, imageID, false, nil); rerr != nil {
					m.log.Error("release unused base after a failed prepare", "image", imageID, "err", rerr)
				}
			}
		}
	}()

	baseDir, err = m.resolvedBaseDir()
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

	maps, newInstance, err := m.instanceMaps(overlay)
	if err != nil {
		return "", err
	}
	if !newInstance && !idmap.Equal(maps, m.idmaps) {
		m.log.Info("instance keeps the id map it was created with", "instance_dir", instanceDir,
			"idmap", idmap.Key(maps), "configured", idmap.Key(m.idmaps))
	}

	mounts, err := readMountInfo()
	if err != nil {
		return "", err
	}
	if on := mountsAt(mounts, rootfs); len(on) > 0 {
		top := on[len(on)-1]
		want := []string{base}
		if len(maps) > 0 {
			want = []string{viewPath(baseDir, maps, imageID), copyPath(baseDir, maps, imageID)}
		}
		if top.fsType == "overlay" && slices.ContainsFunc(top.lowerDirs(), func(l string) bool { return slices.Contains(want, l) }) {
			m.log.Debug("rootfs already mounted", "rootfs", rootfs, "image", imageID)
			return rootfs, nil
		}
		return "", fmt.Errorf("%s is already mounted (%s %s, lowerdir %v), not from image %s with id map %q",
			rootfs, top.fsType, top.source, top.lowerDirs(), imageID, idmap.Key(maps))
	}

	if err := m.ensureBase(ctx, &u, meta, imagePath, baseDir, mounts); err != nil {
		return "", err
	}
	if err := m.fail("base"); err != nil {
		return "", err
	}
	lower := base
	if len(maps) > 0 {
		if mounts, err = readMountInfo(); err != nil {
			return "", err
		}
		if lower, err = m.ensureLower(ctx, &u, baseDir, imageID, maps, mounts); err != nil {
			return "", err
		}
		if err := m.fail("idmap"); err != nil {
			return "", err
		}
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
		// upper dir: give it those of the image's root (as the idmapped
		// view shows it: owned by the mapped root). The one chown an
		// unprivileged instance needs, of an empty directory; the files
		// the container creates get its ids from the kernel.
		if err := copyDirAttrs(lower, upper); err != nil {
			return "", err
		}
		if err := writeInstanceMaps(&u, overlay, maps); err != nil {
			return "", err
		}
	}
	if err := m.fail("dirs"); err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}

	data := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", rootfs, "overlay", 0, data); err != nil {
		return "", fmt.Errorf("mount overlay on %s (%s): %w", rootfs, data, err)
	}
	u.push("unmount "+rootfs, func(ctx context.Context) error { return m.unmount(ctx, rootfs) })
	if err := m.fail("overlay"); err != nil {
		return "", err
	}
	m.log.Info("rootfs mounted", "rootfs", rootfs, "image", imageID, "idmap", idmap.Key(maps))
	return rootfs, nil
}

// ensureBase makes the image's base unless it is there. Called with the
// image's lock held.
func (m *Mounter) ensureBase(ctx context.Context, u *undoStack, meta ImageMeta, imagePath, baseDir string, mounts []mountEntry) error {
	id := meta.ID
	base := filepath.Join(baseDir, id)
	if len(mountsAt(mounts, base)) > 0 {
		m.log.Debug("reusing base mount", "image", id, "base", base)
		return nil
	}
	rec, rerr := loadRecord(baseDir, id)
	if rerr != nil {
		m.log.Warn("base record unusable, cleaning up by convention", "image", id, "err", rerr)
	}
	if isDir(base) {
		if rec != nil && rec.Kind == baseTar && rec.Complete {
			m.log.Debug("reusing extracted base", "image", id, "base", base)
			return nil
		}
		if users := overlaysUsingBase(mounts, baseDir, id); len(users) > 0 {
			// A tar base whose record was lost: it is complete (it is only
			// ever renamed into place whole) and in use.
			m.log.Warn("base in use without a record: rewriting it", "image", id, "users", users)
			return saveRecord(baseDir, &baseRecord{Version: recordVersion, ImageID: id, Kind: baseTar,
				Format: DiskFormatRootTar, Image: imagePath, BootID: bootID(), Created: time.Now(), Complete: true})
		}
	}
	// Leftovers of an earlier attempt (a crash, a reboot): release first.
	if rec != nil || rerr != nil || exists(base) || exists(exportFilePath(baseDir, id)) {
		if _, err := m.releaseBase(ctx, baseDir, id, true, nil); err != nil {
			return fmt.Errorf("release leftovers of an earlier base: %w", err)
		}
	}

	f, err := os.Open(imagePath)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("image %s is not a regular file: %w", imagePath, ErrInvalidImage)
	}
	kind, comp, what, err := sniffData(f)
	if err != nil {
		return fmt.Errorf("image %s: %w", imagePath, err)
	}
	switch df := meta.DiskFormat; {
	case df == DiskFormatQcow2 && kind != dataQcow2:
		return fmt.Errorf("disk_format is qcow2 but the image is %s, not a qcow2 image: %w", what, ErrInvalidImage)
	case df == DiskFormatRootTar && kind != dataTar:
		return fmt.Errorf("disk_format is root-tar but the image is %s, not a tar archive: %w", what, ErrInvalidImage)
	case df == DiskFormatRaw && kind == dataQcow2:
		return fmt.Errorf("disk_format is raw but the image is a qcow2 image: %w", ErrInvalidImage)
	}
	if kind == dataTar {
		return m.buildTarBase(ctx, u, id, f, comp, what, imagePath, baseDir)
	}
	rec = &baseRecord{Version: recordVersion, ImageID: id, Kind: baseMount, Format: DiskFormatRaw,
		Image: imagePath, BootID: bootID(), Created: time.Now()}
	view := imagePath
	if kind == dataQcow2 {
		rec.Format = DiskFormatQcow2
		if _, err := checkQcow2(f); err != nil {
			return err
		}
		if err := qemuImgCheck(ctx, imagePath); err != nil {
			return err
		}
	}
	if err := saveRecord(baseDir, rec); err != nil {
		return err
	}
	u.push("remove base record", func(context.Context) error { return removeRecord(baseDir, id) })
	if err := m.fail("record"); err != nil {
		return err
	}
	if kind == dataQcow2 {
		if view, err = m.exposeQcow2(ctx, u, rec, baseDir); err != nil {
			return err
		}
	}
	return m.mountBase(ctx, u, rec, meta, view, baseDir)
}

// exposeQcow2 makes the qcow2 image readable as a raw disk: an nbd device
// when the nbd module is there, else a qemu-storage-daemon FUSE export (a
// file). It returns the raw view's path.
func (m *Mounter) exposeQcow2(ctx context.Context, u *undoStack, rec *baseRecord, baseDir string) (string, error) {
	id := rec.ImageID
	useNBD := m.qcow2Via == "nbd" || (m.qcow2Via == "" && m.nbdAvailable(ctx))
	if useNBD {
		dev, err := m.nbd.allocate(ctx, rec.Image)
		if err != nil {
			return "", err
		}
		u.push("disconnect "+dev, func(ctx context.Context) error { return m.nbd.release(ctx, dev) })
		rec.NBD = dev
		if err := saveRecord(baseDir, rec); err != nil {
			return "", err
		}
		m.log.Info("qcow2 image connected", "image", id, "device", dev)
		return dev, m.fail("export")
	}
	ex := &exportRecord{Mountpoint: exportFilePath(baseDir, id), PIDFile: pidFilePath(baseDir, id)}
	rec.Export = ex
	if err := saveRecord(baseDir, rec); err != nil {
		return "", err
	}
	u.push("stop export "+ex.Mountpoint, func(ctx context.Context) error {
		_, err := stopExport(ctx, *ex, true, m.stopTimeout, m.log)
		return err
	})
	if err := startExport(ctx, rec.Image, ex); err != nil {
		return "", err
	}
	if err := saveRecord(baseDir, rec); err != nil {
		return "", err
	}
	m.log.Info("qcow2 image exported", "image", id, "export", ex.Mountpoint, "pid", ex.PID)
	return ex.Mountpoint, m.fail("export")
}

// mountBase finds the root filesystem in view (the image file, FUSE export
// or nbd device), attaches it to a read-only loop device (with the
// partition's offset and size) and mounts it read-only at the base.
func (m *Mounter) mountBase(ctx context.Context, u *undoStack, rec *baseRecord, meta ImageMeta, view, baseDir string) error {
	base := filepath.Join(baseDir, rec.ImageID)
	vf, err := os.Open(view)
	if err != nil {
		return err
	}
	size, err := vf.Seek(0, io.SeekEnd)
	if err == nil {
		var l diskLayout
		l, err = probeDisk(vf, size, meta.Properties[RootPartitionProperty])
		rec.FSType, rec.Layout = l.fsType, l.String()
		rec.Loop = &loopRecord{Backing: view, Offset: l.offset}
		if l.part != 0 {
			rec.Loop.SizeLimit = l.size
		}
	}
	vf.Close()
	if err != nil {
		return fmt.Errorf("image %s (%s): %w", rec.Image, rec.Format, err)
	}
	if _, err := mkdirUndo(u, base, 0o755); err != nil {
		return err
	}
	if err := saveRecord(baseDir, rec); err != nil {
		return err
	}
	loop, err := attachLoop(ctx, view, rec.Loop.Offset, rec.Loop.SizeLimit, !m.noLoopConfigure)
	if err != nil {
		return fmt.Errorf("attach %s to a loop device: %w", view, err)
	}
	// Closing the fd (as a kill would) arms autoclear: once mounted, the
	// unmount frees the device; unmounted, the close frees it.
	defer loop.release()
	lr := *rec.Loop
	lr.Device = loop.path
	u.push("free "+loop.path, func(ctx context.Context) error {
		return waitLoopFree(ctx, lr.Device, lr.Backing, lr.Offset, m.loopFreeTimeout)
	})
	rec.Loop.Device = loop.path
	if err := saveRecord(baseDir, rec); err != nil {
		loop.detach()
		return err
	}
	if err := m.fail("loop"); err != nil {
		return err
	}
	if err := unix.Mount(loop.path, base, rec.FSType, unix.MS_RDONLY, ""); err != nil {
		loop.detach()
		return fmt.Errorf("mount %s (%s of %s) on %s: %w", loop.path, rec.Layout, rec.Image, base, err)
	}
	u.push("unmount base "+base, func(ctx context.Context) error { return m.unmount(ctx, base) })
	m.log.Info("image mounted", "image", rec.ImageID, "path", rec.Image, "format", rec.Format,
		"layout", rec.Layout, "device", loop.path, "base", base)
	return nil
}

// buildTarBase extracts the root tarball f into a temporary directory
// under baseDir and renames it to the base. A tarball holding an LXD-style
// image (rootfs/ next to metadata.yaml and templates/) is unpacked from its
// rootfs/ directory.
func (m *Mounter) buildTarBase(ctx context.Context, u *undoStack, id string, f *os.File, comp, what, imagePath, baseDir string) error {
	start := time.Now()
	base := filepath.Join(baseDir, id)
	tmp, err := os.MkdirTemp(baseDir, tmpPrefix+id+"-")
	if err != nil {
		return err
	}
	u.push("remove "+tmp, func(context.Context) error { return removeAllNoMounts(tmp) })
	if err := os.Chmod(tmp, 0o755); err != nil { // the root's mode unless the tarball has "./"
		return err
	}
	rec := &baseRecord{Version: recordVersion, ImageID: id, Kind: baseTar, Format: DiskFormatRootTar,
		Image: imagePath, BootID: bootID(), Created: time.Now(), Temp: tmp}
	if err := saveRecord(baseDir, rec); err != nil {
		return err
	}
	u.push("remove base record", func(context.Context) error { return removeRecord(baseDir, id) })
	r, closeR, err := openTarStream(ctx, f, comp)
	if err != nil {
		return fmt.Errorf("image %s: %s: %v: %w", imagePath, what, err, ErrInvalidImage)
	}
	defer closeR()
	st, err := extractTar(ctx, r, tmp, m.tarOpts, m.log.With("image", id))
	if err != nil {
		return fmt.Errorf("image %s (%s): %w", imagePath, what, err)
	}
	if err := m.fail("extract"); err != nil {
		return err
	}
	src := tmp
	if lxdLayout(tmp) {
		src = filepath.Join(tmp, "rootfs")
		m.log.Info("root tarball holds an LXD image: using its rootfs/", "image", id)
	}
	// The base must be complete on disk before it is renamed into place.
	if d, err := os.Open(tmp); err == nil {
		_ = unix.Syncfs(int(d.Fd()))
		d.Close()
	}
	if err := os.Rename(src, base); err != nil {
		return fmt.Errorf("rename extracted image into place: %w", err)
	}
	u.push("remove base "+base, func(context.Context) error { return removeAllNoMounts(base) })
	if src != tmp {
		if err := os.RemoveAll(tmp); err != nil {
			return err
		}
	}
	rec.Temp, rec.Complete = "", true
	rec.DiskBytes = diskUsage(base)
	if err := saveRecord(baseDir, rec); err != nil {
		return err
	}
	m.log.Info("image extracted", "image", id, "path", imagePath, "format", what, "base", base,
		"entries", st.entries, "bytes", st.bytes, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// lxdLayout reports whether dir holds an LXD image: a rootfs/ directory and
// nothing but metadata.yaml and templates/ besides.
func lxdLayout(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	hasRootfs := false
	for _, e := range ents {
		switch e.Name() {
		case "rootfs":
			hasRootfs = e.IsDir() && e.Type()&fs.ModeSymlink == 0
		case "metadata.yaml", "templates":
		default:
			return false
		}
	}
	return hasRootfs
}

// Release unmounts and deletes the instance's root filesystem
// (<instanceDir>/rootfs and <instanceDir>/overlay, i.e. all changes the
// instance made), then releases every base that no overlay uses any more:
// unmount, loop/nbd device, FUSE export, mount point and record. Extracted
// tarball bases are kept (they are a cache, see RemoveBase). instanceDir
// itself is left. Releasing what is not there is not an error. The
// container must be stopped first.
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
	own := map[string]bool{} // the instance's own bases: waited for
	resolved, err := filepath.EvalSymlinks(instanceDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Nothing of the instance left; still collect unused bases.
	case err != nil:
		return err
	default:
		if err := m.releaseInstance(ctx, resolved, own); err != nil {
			return err
		}
	}
	return m.collectBases(ctx, nil, own)
}

// releaseInstance unmounts the instance's overlay and deletes its
// directories; own gets the ids of the bases the overlay used.
func (m *Mounter) releaseInstance(ctx context.Context, instanceDir string, own map[string]bool) error {
	rootfs := filepath.Join(instanceDir, "rootfs")
	overlay := filepath.Join(instanceDir, "overlay")
	for i := 0; ; i++ {
		mounts, err := readMountInfo()
		if err != nil {
			return err
		}
		on := mountsAt(mounts, rootfs)
		if len(on) == 0 {
			break
		}
		for _, e := range on {
			for _, l := range e.lowerDirs() {
				own[filepath.Base(l)] = true
			}
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

// RemoveBase deletes the base of an image no instance uses: an extracted
// tarball's directory (which Release keeps), or a mounted base with all
// its devices. It is for cache eviction. An error wrapping ErrBaseInUse
// says that an overlay still uses it; a missing base is not an error.
func (m *Mounter) RemoveBase(ctx context.Context, imageID string) error {
	if err := ValidateID(imageID); err != nil {
		return err
	}
	baseDir, err := m.resolvedBaseDir()
	if err != nil {
		return err
	}
	unlock, err := m.locks.lock(ctx, imageID)
	if err != nil {
		return err
	}
	defer unlock()
	done, err := m.releaseBase(ctx, baseDir, imageID, true, nil)
	if err != nil {
		return fmt.Errorf("remove base of image %s: %w", imageID, err)
	}
	if !done {
		return fmt.Errorf("remove base of image %s: %w", imageID, ErrBaseInUse)
	}
	return nil
}

// baseIDs lists the image ids that have anything under baseDir: a mount
// or directory <id>, a record, an export file or a temporary directory.
func baseIDs(baseDir string, mounts []mountEntry) []string {
	ids := map[string]bool{}
	for _, e := range mounts {
		if filepath.Dir(e.mountPoint) == baseDir {
			ids[filepath.Base(e.mountPoint)] = true
		}
	}
	ents, _ := os.ReadDir(baseDir)
	for _, e := range ents {
		name := e.Name()
		if rest, ok := strings.CutPrefix(name, tmpPrefix); ok {
			if i := strings.LastIndexByte(rest, '-'); i > 0 {
				ids[rest[:i]] = true
			}
			continue
		}
		if e.IsDir() {
			ids[name] = true
		}
	}
	for _, id := range recordIDs(baseDir) {
		ids[id] = true
	}
	for _, id := range lowerIDs(baseDir) {
		ids[id] = true
	}
	sents, _ := os.ReadDir(stateDir(baseDir))
	for _, e := range sents {
		for _, suf := range []string{".fuse", ".pid"} {
			if id, ok := strings.CutSuffix(e.Name(), suf); ok {
				ids[id] = true
			}
		}
	}
	var out []string
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		if ValidateID(id) == nil {
			out = append(out, id)
		}
	}
	return out
}

// collectBases releases every base no overlay uses (tar bases are kept).
// It waits for the locks of the images in wait (nil: all); the others are
// skipped while someone holds their lock (a long extraction must not hold
// up the release of other images' instances): that holder leaves its base
// used or released.
func (m *Mounter) collectBases(ctx context.Context, rep *Report, wait map[string]bool) error {
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
	var errs []error
	for _, id := range baseIDs(baseDir, mounts) {
		if err := m.collectBase(ctx, baseDir, id, rep, wait == nil || wait[id]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *Mounter) collectBase(ctx context.Context, baseDir, id string, rep *Report, wait bool) error {
	var unlock func()
	if wait {
		var err error
		if unlock, err = m.locks.lock(ctx, id); err != nil {
			return err
		}
	} else {
		var ok bool
		if unlock, ok = m.locks.lockNoWait(id); !ok {
			m.log.Debug("base busy, not collecting it now", "image", id)
			return nil
		}
	}
	defer unlock()
	_, err := m.releaseBase(ctx, baseDir, id, false, rep)
	return err
}

// releaseBase releases the base of image id unless an overlay uses it:
// the base mount, then what its record lists (loop device, nbd device,
// FUSE export and its daemon, temporary directory), the mount point, and
// the record once all of it is gone. A complete tar base is kept unless
// removeTar. Records of an earlier boot only have their files cleaned:
// their device numbers and pids may belong to others now. It reports
// whether the base is gone (false: in use or kept). The image's lock must
// be held.
func (m *Mounter) releaseBase(ctx context.Context, baseDir, id string, removeTar bool, rep *Report) (bool, error) {
	base := filepath.Join(baseDir, id)
	mounts, err := readMountInfo()
	if err != nil {
		return false, err
	}
	if users := overlaysUsingBase(mounts, baseDir, id); len(users) > 0 {
		m.log.Debug("base still in use", "base", base, "users", users)
		rep.keep(id)
		return false, nil
	}
	// Its idmapped views go first: they hold the base's filesystem.
	didLowers, err := m.releaseLowers(ctx, baseDir, id, removeTar)
	if err != nil {
		return false, err
	}
	if mounts, err = readMountInfo(); err != nil {
		return false, err
	}
	rec, rerr := loadRecord(baseDir, id)
	if rerr != nil {
		m.log.Warn("base record unusable, cleaning up by convention", "image", id, "err", rerr)
	}
	mounted := len(mountsAt(mounts, base)) > 0
	if !removeTar && !mounted && rec != nil && rec.Kind == baseTar && rec.Complete && isDir(base) {
		rep.keep(id)
		return false, nil
	}
	did := didLowers
	for i := 0; mounted; i++ {
		if i == 8 {
			return false, fmt.Errorf("%s is still mounted after %d unmounts", base, i)
		}
		if err := m.unmount(ctx, base); err != nil {
			return false, err
		}
		m.log.Info("image unmounted", "base", base)
		did = true
		if mounts, err = readMountInfo(); err != nil {
			return false, err
		}
		mounted = len(mountsAt(mounts, base)) > 0
	}

	var errs []error
	sameBoot := rec != nil && rec.BootID == bootID()
	if rec != nil && sameBoot && rec.Loop != nil && rec.Loop.Device != "" {
		if err := waitLoopFree(ctx, rec.Loop.Device, rec.Loop.Backing, rec.Loop.Offset, m.loopFreeTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	if rec != nil && sameBoot && rec.NBD != "" {
		if pid, cmd := m.nbd.server(rec.NBD); pid > 0 && nbdImage(cmd) == rec.Image {
			if err := m.nbd.release(ctx, rec.NBD); err != nil {
				errs = append(errs, err)
			} else {
				did = true
			}
		}
	}
	// The export, by the record or by convention (the record may be lost).
	ex := exportRecord{Mountpoint: exportFilePath(baseDir, id), PIDFile: pidFilePath(baseDir, id)}
	if rec != nil && rec.Export != nil {
		ex = *rec.Export
	}
	if exists(ex.Mountpoint) || exists(ex.PIDFile) || (sameBoot && ex.PID > 0) {
		stopped, err := stopExport(ctx, ex, rec == nil || sameBoot, m.stopTimeout, m.log)
		if err != nil {
			errs = append(errs, err)
		}
		if rep != nil {
			rep.StoppedExports = append(rep.StoppedExports, stopped...)
		}
		did = true
	}
	// Temporary extraction directories.
	tmps, _ := filepath.Glob(filepath.Join(baseDir, tmpPrefix+id+"-*"))
	for _, t := range tmps {
		if err := removeAllNoMounts(t); err != nil {
			errs = append(errs, err)
		} else {
			if rep != nil {
				rep.RemovedTemp = append(rep.RemovedTemp, t)
			}
			did = true
		}
	}
	// The base directory: a mount point (empty) or an extracted tarball.
	if isDir(base) {
		var err error
		if (rec != nil && rec.Kind == baseTar) || removeTar {
			err = removeAllNoMounts(base)
		} else if err = os.Remove(base); errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			m.log.Warn("base mount point is not mounted but not empty either, leaving it", "base", base)
			err = nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove base: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return false, err // the record stays, for the next try
	}
	if rec != nil || rerr != nil {
		if err := removeRecord(baseDir, id); err != nil {
			return false, err
		}
		did = true
	}
	if did && rep != nil {
		rep.ReleasedBases = append(rep.ReleasedBases, id)
	}
	return true, nil
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
	if err := os.Mkdir(stateDir(d), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
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

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func isDir(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.IsDir()
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

// diskUsage is the space the files under dir take (allocated blocks; hard
// links counted once); unreadable entries count nothing.
func diskUsage(dir string) int64 {
	var total int64
	seen := map[[2]uint64]bool{}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil {
			return nil
		}
		if st.Nlink > 1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			k := [2]uint64{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		total += st.Blocks * 512
		return nil
	})
	return total
}

// DerivedSize implements Derived: the disk space of image id's extracted
// tarball base (mounted bases take no space of their own).
func (m *Mounter) DerivedSize(imageID string) int64 {
	if ValidateID(imageID) != nil {
		return 0
	}
	baseDir, err := m.resolvedBaseDir()
	if err != nil {
		return 0
	}
	copies := copiesSize(baseDir, imageID)
	rec, err := loadRecord(baseDir, imageID)
	if err != nil || rec == nil || rec.Kind != baseTar || !rec.Complete {
		return copies
	}
	if rec.DiskBytes == 0 { // a base extracted before sizes were recorded
		return copies + diskUsage(filepath.Join(baseDir, imageID))
	}
	return copies + rec.DiskBytes
}

// RemoveDerived implements Derived with RemoveBase.
func (m *Mounter) RemoveDerived(ctx context.Context, imageID string) error {
	return m.RemoveBase(ctx, imageID)
}

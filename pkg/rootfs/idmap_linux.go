package rootfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/idmap"
)

const (
	// idmapDirName holds, per id map, the idmapped views of the bases
	// (<key>/<id>, mount points) and their shifted copies (<key>.copy/<id>).
	// The per-map directories are kept once made.
	idmapDirName = ".idmap"
	copySuffix   = ".copy"
	// instanceMapName is the instance's id map in its overlay directory.
	instanceMapName = "idmap"
)

// WithIDMap makes Prepare build the root filesystems of new instances for
// unprivileged containers running with maps (nova's [libvirt] uid_maps
// and gid_maps): the overlay's lower layer is an idmapped view of the
// base, so the image's files, owned by 0..N on disk, appear owned by the
// mapped host ids, and the upper directory starts owned by the mapped
// root. Nothing is chowned but that empty directory. See the package
// documentation ("Unprivileged instances").
func WithIDMap(maps []driver.IDMap) MounterOption {
	return func(m *Mounter) { m.idmaps = idmap.Canonical(maps) }
}

// IDMap returns the id map Prepare gives new instances (nil: privileged).
func (m *Mounter) IDMap() []driver.IDMap { return m.idmaps }

func idmapDir(baseDir string) string { return filepath.Join(baseDir, idmapDirName) }

// viewPath is the mount point of the idmapped view of base id for maps.
func viewPath(baseDir string, maps []driver.IDMap, id string) string {
	return filepath.Join(idmapDir(baseDir), idmap.Key(maps), id)
}

// copyPath is the shifted copy of base id for maps.
func copyPath(baseDir string, maps []driver.IDMap, id string) string {
	return filepath.Join(idmapDir(baseDir), idmap.Key(maps)+copySuffix, id)
}

// lowerBase returns the image id whose base lower (an overlay's lower
// directory) is: the base itself or one of its views or shifted copies.
func lowerBase(baseDir, lower string) (string, bool) {
	switch filepath.Dir(lower) {
	case baseDir:
		return filepath.Base(lower), true
	}
	if filepath.Dir(filepath.Dir(lower)) == idmapDir(baseDir) {
		return filepath.Base(lower), true
	}
	return "", false
}

// overlaysUsingBase returns the mount points of overlays whose lower
// layer is base id or a view or shifted copy of it.
func overlaysUsingBase(ms []mountEntry, baseDir, id string) []string {
	var out []string
	for _, e := range ms {
		if e.fsType != "overlay" {
			continue
		}
		for _, l := range e.lowerDirs() {
			if got, ok := lowerBase(baseDir, l); ok && got == id {
				out = append(out, e.mountPoint)
				break
			}
		}
	}
	return out
}

// instanceMaps returns the id map of the instance whose overlay directory
// is overlay: the one recorded when its upper directory was made (nil:
// privileged), or, for a new instance (no upper directory yet), the
// Mounter's.
func (m *Mounter) instanceMaps(overlay string) (maps []driver.IDMap, isNew bool, err error) {
	if _, err := os.Lstat(filepath.Join(overlay, "upper")); errors.Is(err, fs.ErrNotExist) {
		return m.idmaps, true, nil
	} else if err != nil {
		return nil, false, err
	}
	maps, err = InstanceIDMap(filepath.Dir(overlay))
	return maps, false, err
}

// InstanceIDMap returns the id map the instance in instanceDir was made
// with, as Prepare recorded it (nil: privileged). A snapshot of its root
// filesystem maps the owners back through it.
func InstanceIDMap(instanceDir string) ([]driver.IDMap, error) {
	b, err := os.ReadFile(filepath.Join(instanceDir, "overlay", instanceMapName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	maps, err := idmap.Parse(string(b))
	if err == nil {
		err = idmap.Validate(maps)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(instanceDir, "overlay", instanceMapName), err)
	}
	return idmap.Canonical(maps), nil
}

// ensureLower returns the lower directory of an overlay on base id for
// maps: the idmapped view of the base (mounted now unless it is), or, where
// idmapped mounts cannot be used, its shifted copy (made now, once, unless
// it is there). Called with the image's lock held, after ensureBase.
func (m *Mounter) ensureLower(ctx context.Context, u *undoStack, baseDir, id string, maps []driver.IDMap, mounts []mountEntry) (string, error) {
	base := filepath.Join(baseDir, id)
	cp := copyPath(baseDir, maps, id)
	if isDir(cp) {
		m.log.Debug("reusing shifted copy", "image", id, "copy", cp)
		return cp, nil
	}
	view := viewPath(baseDir, maps, id)
	if len(mountsAt(mounts, view)) > 0 {
		m.log.Debug("reusing idmapped view", "image", id, "view", view)
		return view, nil
	}
	reason := m.idmappedLayers()
	if reason == nil {
		// The per-map directories are shared by all images (whose
		// Prepares run concurrently) and kept.
		if err := os.MkdirAll(filepath.Dir(view), 0o711); err != nil {
			return "", err
		}
		if _, err := mkdirUndo(u, view, 0o755); err != nil {
			return "", err
		}
		err := idmap.MountIDMapped(ctx, base, view, maps, true)
		if err == nil {
			u.push("unmount "+view, func(ctx context.Context) error { return m.unmount(ctx, view) })
			m.log.Info("idmapped view of the base mounted", "image", id, "view", view)
			return view, nil
		}
		if !errors.Is(err, idmap.ErrUnsupported) {
			return "", fmt.Errorf("idmapped view of %s: %w", base, err)
		}
		reason = err
	}
	m.log.Warn("idmapped mounts unusable for this base, making a shifted copy once", "image", id, "reason", reason)
	if err := os.MkdirAll(filepath.Dir(cp), 0o711); err != nil {
		return "", err
	}
	tmp := filepath.Join(filepath.Dir(cp), tmpPrefix+id+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	t0 := time.Now()
	st, err := idmap.ShiftedCopy(ctx, base, tmp, maps)
	if err != nil {
		return "", err
	}
	if err := os.Rename(tmp, cp); err != nil {
		_ = os.RemoveAll(tmp)
		return "", err
	}
	// The copy is a cache, like an extracted tarball: kept until RemoveBase.
	m.log.Info("shifted copy of the base made", "image", id, "copy", cp, "took", time.Since(t0),
		"files", st.Files, "bytes", st.Bytes, "unmapped_owners", st.Unmapped, "skipped", len(st.Skipped))
	if len(st.Skipped) > 0 {
		m.log.Warn("shifted copy: entries or attributes not copied", "image", id, "skipped", firstOf(st.Skipped, 5))
	}
	return cp, nil
}

func firstOf(s []string, n int) string {
	if len(s) > n {
		return strings.Join(s[:n], ", ") + fmt.Sprintf(" and %d more", len(s)-n)
	}
	return strings.Join(s, ", ")
}

// idmappedLayers says why idmapped mounts cannot be overlayfs layers here
// (nil: they can). Linux 5.19 made overlayfs accept idmapped layers.
func (m *Mounter) idmappedLayers() error {
	if m.noIDMappedMounts {
		return fmt.Errorf("disabled (test): %w", idmap.ErrUnsupported)
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return err
	}
	rel := unix.ByteSliceToString(u.Release[:])
	var major, minor int
	if _, err := fmt.Sscanf(rel, "%d.%d", &major, &minor); err != nil {
		return fmt.Errorf("kernel release %q: %w", rel, err)
	}
	if major < 5 || (major == 5 && minor < 19) {
		return fmt.Errorf("kernel %s: overlayfs takes idmapped layers from Linux 5.19: %w", rel, idmap.ErrUnsupported)
	}
	return nil
}

// writeInstanceMaps records a new instance's id map in its overlay
// directory (nothing for a privileged instance).
func writeInstanceMaps(u *undoStack, overlay string, maps []driver.IDMap) error {
	if len(maps) == 0 {
		return nil
	}
	p := filepath.Join(overlay, instanceMapName)
	if err := os.WriteFile(p, []byte(idmap.Format(maps)), 0o644); err != nil {
		return err
	}
	u.push("remove "+p, func(context.Context) error { return os.Remove(p) })
	return nil
}

// releaseLowers unmounts and removes the idmapped views of base id (no
// overlay uses the base: the caller checked), removes half-made shifted
// copies, and, with removeCopies, the shifted copies. It reports whether
// it did anything.
func (m *Mounter) releaseLowers(ctx context.Context, baseDir, id string, removeCopies bool) (bool, error) {
	ents, err := os.ReadDir(idmapDir(baseDir))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	did := false
	var errs []error
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(idmapDir(baseDir), e.Name())
		if strings.HasSuffix(e.Name(), copySuffix) {
			tmps, _ := filepath.Glob(filepath.Join(dir, tmpPrefix+id+"-*"))
			if cp := filepath.Join(dir, id); removeCopies && exists(cp) {
				tmps = append(tmps, cp)
			}
			for _, p := range tmps {
				if err := removeAllNoMounts(p); err != nil {
					errs = append(errs, err)
					continue
				}
				m.log.Info("shifted copy removed", "image", id, "path", p)
				did = true
			}
		} else {
			view := filepath.Join(dir, id)
			for i := 0; ; i++ {
				mounts, err := readMountInfo()
				if err != nil {
					return did, err
				}
				if len(mountsAt(mounts, view)) == 0 {
					break
				}
				if i == 8 {
					return did, fmt.Errorf("%s is still mounted after %d unmounts", view, i)
				}
				if err := m.unmount(ctx, view); err != nil {
					return did, err
				}
				m.log.Info("idmapped view unmounted", "image", id, "view", view)
				did = true
			}
			if err := os.Remove(view); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove view mount point: %w", err))
			}
		}
	}
	return did, errors.Join(errs...)
}

// lowerIDs lists the image ids that have a view, a shifted copy or a
// half-made copy under the idmap directory.
func lowerIDs(baseDir string) []string {
	var out []string
	keys, _ := os.ReadDir(idmapDir(baseDir))
	for _, k := range keys {
		ents, _ := os.ReadDir(filepath.Join(idmapDir(baseDir), k.Name()))
		for _, e := range ents {
			name := e.Name()
			if rest, ok := strings.CutPrefix(name, tmpPrefix); ok {
				if i := strings.LastIndexByte(rest, '-'); i > 0 {
					out = append(out, rest[:i])
				}
				continue
			}
			out = append(out, name)
		}
	}
	return out
}

// copiesSize is the disk space of image id's shifted copies.
func copiesSize(baseDir, id string) int64 {
	var total int64
	keys, _ := os.ReadDir(idmapDir(baseDir))
	for _, k := range keys {
		if strings.HasSuffix(k.Name(), copySuffix) {
			if cp := filepath.Join(idmapDir(baseDir), k.Name(), id); isDir(cp) {
				total += diskUsage(cp)
			}
		}
	}
	return total
}

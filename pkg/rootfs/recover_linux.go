package rootfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Report says what Recover found and did.
type Report struct {
	// ReleasedBases are the images whose unused base (mount, loop or nbd
	// device, FUSE export, temporary directory, stale record) was released.
	ReleasedBases []string
	// KeptBases are the images whose base is in use, or is a cached tarball.
	KeptBases []string
	// OrphanInstances are instance directories whose overlay is mounted on
	// one of the bases but that inUse does not know. They are reported
	// only: their data is not touched, and their bases are kept.
	OrphanInstances []string
	// StoppedExports are the pids of the qemu-storage-daemon processes
	// stopped.
	StoppedExports []int
	// DetachedLoops are loop devices detached that were bound, unmounted,
	// to a file under the base directory or to an image file.
	DetachedLoops []string
	// DisconnectedNBD are nbd devices disconnected.
	DisconnectedNBD []string
	// RemovedTemp are temporary directories and files removed.
	RemovedTemp []string
}

func (r *Report) keep(id string) {
	if r != nil && !slices.Contains(r.KeptBases, id) {
		r.KeptBases = append(r.KeptBases, id)
	}
}

// Recover releases, at agent start, what a killed agent or a host reboot
// left behind under the base directory:
//
//   - instance overlays mounted on a base whose instanceDir inUse does not
//     know are reported in OrphanInstances (not unmounted, data kept; their
//     bases stay). A nil inUse treats every instance as in use;
//   - every base no overlay uses is released as Release would do it
//     (unmount, loop device, nbd device, FUSE export, mount point), driven
//     by its record; half-built bases (a crash between two steps of
//     Prepare) included, as well as temporary extraction directories. A
//     complete extracted tarball stays cached. Records of an earlier boot
//     are only cleaned up: nothing they list exists any more;
//   - qemu-storage-daemon processes exporting into the base directory that
//     no base uses are stopped (identified by pid, start time and the export
//     mountpoint in their command line, never by name);
//   - loop devices bound to a file under the base directory, to an image a
//     record names, or to a file in a WithImageDir directory, and not
//     mounted, are detached; so are nbd devices served for such an image
//     that nothing uses.
//
// Errors of single items are joined; the report lists what was done.
func (m *Mounter) Recover(ctx context.Context, inUse func(instanceDir string) bool) (Report, error) {
	var rep Report
	baseDir, err := m.resolvedBaseDir()
	if err != nil {
		return rep, fmt.Errorf("recover: %w", err)
	}
	mounts, err := readMountInfo()
	if err != nil {
		return rep, fmt.Errorf("recover: %w", err)
	}
	// Orphan instances: overlays on our bases that the caller does not know.
	for _, e := range mounts {
		if e.fsType != "overlay" || !slices.ContainsFunc(e.lowerDirs(), func(l string) bool { _, ok := lowerBase(baseDir, l); return ok }) {
			continue
		}
		dir := e.mountPoint
		if filepath.Base(dir) == "rootfs" {
			dir = filepath.Dir(dir)
		}
		if inUse != nil && !inUse(dir) {
			rep.OrphanInstances = append(rep.OrphanInstances, dir)
			m.log.Warn("recover: instance overlay mounted but not known, leaving it", "instance_dir", dir)
		}
	}
	// Image files named by records, for the loop and nbd scans below (the
	// records are gone once their bases are released).
	images := map[string]string{} // image path -> id
	for _, id := range recordIDs(baseDir) {
		if rec, err := loadRecord(baseDir, id); err == nil && rec != nil && rec.Image != "" {
			images[rec.Image] = id
		}
	}

	var errs []error
	if err := m.collectBases(ctx, &rep, nil); err != nil {
		errs = append(errs, err)
	}
	if err := m.recoverExports(ctx, baseDir, &rep); err != nil {
		errs = append(errs, err)
	}
	if err := m.recoverLoops(ctx, baseDir, images, &rep); err != nil {
		errs = append(errs, err)
	}
	if err := m.recoverNBD(ctx, baseDir, images, &rep); err != nil {
		errs = append(errs, err)
	}
	// Stray files in the state directory (a record's temporary file).
	if ents, err := os.ReadDir(stateDir(baseDir)); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".rec-") || strings.HasPrefix(e.Name(), ".qsd-log-") {
				p := filepath.Join(stateDir(baseDir), e.Name())
				if err := os.Remove(p); err == nil {
					rep.RemovedTemp = append(rep.RemovedTemp, p)
				}
			}
		}
	}
	m.log.Info("recover: done", "released", rep.ReleasedBases, "kept", rep.KeptBases,
		"orphan_instances", rep.OrphanInstances, "stopped_exports", rep.StoppedExports,
		"detached_loops", rep.DetachedLoops, "disconnected_nbd", rep.DisconnectedNBD, "removed", rep.RemovedTemp)
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("recover: %w", err)
	}
	return rep, nil
}

// recoverExports stops the qemu-storage-daemon processes exporting into
// the state directory that no base record claims (after collectBases,
// only the records of bases in use remain).
func (m *Mounter) recoverExports(ctx context.Context, baseDir string, rep *Report) error {
	sd := stateDir(baseDir)
	claimed := map[string]bool{}
	for _, id := range recordIDs(baseDir) {
		if rec, err := loadRecord(baseDir, id); err == nil && rec != nil && rec.Export != nil {
			claimed[rec.Export.Mountpoint] = true
		}
	}
	var errs []error
	for _, pid := range allPIDs() {
		mp := qsdMountpoint(procCmdline(pid))
		if mp == "" || filepath.Dir(mp) != sd || claimed[mp] {
			continue
		}
		id := strings.TrimSuffix(filepath.Base(mp), ".fuse")
		err := func() error {
			if ValidateID(id) == nil {
				unlock, err := m.locks.lock(ctx, id)
				if err != nil {
					return err
				}
				defer unlock()
			}
			stopped, err := stopExport(ctx, exportRecord{Mountpoint: mp}, true, m.stopTimeout, m.log)
			rep.StoppedExports = append(rep.StoppedExports, stopped...)
			return err
		}()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// recoverLoops detaches unmounted loop devices bound to our files.
func (m *Mounter) recoverLoops(ctx context.Context, baseDir string, images map[string]string, rep *Report) error {
	mounts, err := readMountInfo()
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range boundLoops() {
		id, ours := "", false
		switch {
		case under(l.backing, baseDir):
			ours = true
			if filepath.Dir(l.backing) == stateDir(baseDir) {
				id = strings.TrimSuffix(filepath.Base(l.backing), ".fuse")
			}
		case images[l.backing] != "":
			ours, id = true, images[l.backing]
		default:
			for _, d := range m.imageDirs {
				if under(l.backing, d) {
					ours, id = true, filepath.Base(l.backing)
				}
			}
		}
		if !ours || slices.ContainsFunc(mounts, func(e mountEntry) bool { return e.source == l.dev }) {
			continue
		}
		if holders, _ := os.ReadDir(filepath.Join("/sys/block", filepath.Base(l.dev), "holders")); len(holders) > 0 {
			continue
		}
		err := func() error {
			if ValidateID(id) == nil {
				unlock, err := m.locks.lock(ctx, id)
				if err != nil {
					return err
				}
				defer unlock()
			}
			// Re-check under the lock: still bound to the same file, unmounted.
			if st, ok := loopSysState(l.dev); !ok || st.backing != l.backing {
				return nil
			}
			if ms, err := readMountInfo(); err != nil {
				return err
			} else if slices.ContainsFunc(ms, func(e mountEntry) bool { return e.source == l.dev }) {
				return nil
			}
			if err := detachLoopDevice(l.dev); err != nil {
				if errors.Is(err, fs.ErrPermission) {
					return err
				}
				return fmt.Errorf("detach %s (%s): %w", l.dev, l.backing, err)
			}
			rep.DetachedLoops = append(rep.DetachedLoops, l.dev)
			m.log.Info("recover: loop device detached", "device", l.dev, "backing", l.backing)
			return nil
		}()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// recoverNBD disconnects nbd devices serving one of our images that no
// loop device or mount uses.
func (m *Mounter) recoverNBD(ctx context.Context, baseDir string, images map[string]string, rep *Report) error {
	var ns []int
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		ns = m.nbd.devices()
	}
	if len(ns) == 0 {
		return nil
	}
	mounts, err := readMountInfo()
	if err != nil {
		return err
	}
	loops := boundLoops()
	var errs []error
	for _, n := range ns {
		dev := filepath.Join(m.nbd.devDir, fmt.Sprintf("nbd%d", n))
		pid, cmd := m.nbd.server(dev)
		if pid == 0 {
			continue
		}
		img := nbdImage(cmd)
		ours := img != "" && (images[img] != "" || slices.ContainsFunc(append([]string{baseDir}, m.imageDirs...),
			func(d string) bool { return under(img, d) }))
		if !ours {
			continue
		}
		used := slices.ContainsFunc(mounts, func(e mountEntry) bool { return e.source == dev })
		for _, l := range loops {
			if l.backing != dev {
				continue
			}
			if slices.ContainsFunc(mounts, func(e mountEntry) bool { return e.source == l.dev }) {
				used = true
			} else if err := detachLoopDevice(l.dev); err != nil {
				used = true
				errs = append(errs, err)
			} else {
				rep.DetachedLoops = append(rep.DetachedLoops, l.dev)
			}
		}
		if used {
			continue
		}
		if err := m.nbd.release(ctx, dev); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.DisconnectedNBD = append(rep.DisconnectedNBD, dev)
	}
	return errors.Join(errs...)
}

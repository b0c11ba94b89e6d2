package golxc

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/idmap"
)

// Shadow's subordinate id files, which newuidmap and newgidmap consult.
const (
	subUIDFile = "/etc/subuid"
	subGIDFile = "/etc/subgid"
)

// CheckIDMaps tells whether liblxc can start containers with maps on this
// host: the maps must be valid (idmap.Validate) and, when the setuid
// newuidmap and newgidmap (package uidmap) are on PATH, /etc/subuid and
// /etc/subgid must give root the mapped host ranges, because liblxc then
// writes the maps through those tools, even when it runs as root (it
// writes them itself only when they are missing). The error names the
// lines to add. The agent calls it at startup; Create checks it again.
func CheckIDMaps(maps []driver.IDMap) error {
	if len(maps) == 0 {
		return nil
	}
	if err := idmap.Validate(maps); err != nil {
		return err
	}
	uidTool, gidTool := privilegedOnPath("newuidmap"), privilegedOnPath("newgidmap")
	if uidTool == "" || gidTool == "" {
		return nil
	}
	var missing []string
	for _, f := range []struct {
		kind byte
		file string
	}{{'u', subUIDFile}, {'g', subGIDFile}} {
		ranges, err := readSubIDs(f.file, "root", "0")
		if err != nil {
			return fmt.Errorf("lxc.idmap: %w", err)
		}
		for _, m := range maps {
			if m.Kind == f.kind && !covered(ranges, m.HostID, m.Count) {
				missing = append(missing, fmt.Sprintf("root:%d:%d in %s", m.HostID, m.Count, f.file))
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("lxc.idmap: liblxc maps ids through %s and %s, which only map host ids that %s and %s give the caller (root); add %s",
			uidTool, gidTool, subUIDFile, subGIDFile, strings.Join(missing, ", "))
	}
	return nil
}

// privilegedOnPath returns the path of tool on PATH if it is setuid root
// or has file capabilities (what liblxc's idmaptool_on_path_and_privileged
// accepts), else "".
func privilegedOnPath(tool string) string {
	p, err := exec.LookPath(tool)
	if err != nil {
		return ""
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return ""
	}
	if st.Mode&unix.S_ISUID != 0 && st.Uid == 0 {
		return p
	}
	if _, err := unix.Getxattr(p, "security.capability", nil); err == nil {
		return p
	}
	return ""
}

type subRange struct{ start, count int }

// readSubIDs returns the ranges file gives to the owner named name or
// numbered uid ("name:start:count" lines). A missing file gives none.
func readSubIDs(file, name, uid string) ([]subRange, error) {
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []subRange
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(fields) != 3 || (fields[0] != name && fields[0] != uid) {
			continue
		}
		start, err1 := strconv.Atoi(fields[1])
		count, err2 := strconv.Atoi(fields[2])
		if err1 != nil || err2 != nil || start < 0 || count <= 0 {
			continue
		}
		out = append(out, subRange{start, count})
	}
	return out, sc.Err()
}

// covered reports whether [start, start+count) lies within the union of
// ranges (as shadow's have_range sees it: adjacent ranges join).
func covered(ranges []subRange, start, count int) bool {
	end := start + count // exclusive
	for start < end {
		i := slices.IndexFunc(ranges, func(r subRange) bool { return start >= r.start && start < r.start+r.count })
		if i < 0 {
			return false
		}
		start = ranges[i].start + ranges[i].count
	}
	return true
}

// checkRootfsOwner refuses a rootfs that the container's root could not
// use: one whose top directory is owned by a host uid or gid outside the
// maps (an unshifted tree, e.g. a rootfs prepared without the id map, or
// its mount missing). The driver never chowns a rootfs.
func checkRootfsOwner(spec driver.Spec) error {
	if len(spec.IDMaps) == 0 {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(spec.Rootfs, &st); err != nil {
		return &os.PathError{Op: "stat", Path: spec.Rootfs, Err: err}
	}
	_, uok := idmap.ContainerID(spec.IDMaps, 'u', int(st.Uid))
	_, gok := idmap.ContainerID(spec.IDMaps, 'g', int(st.Gid))
	if !uok || !gok {
		return fmt.Errorf("rootfs %s is owned by host %d:%d, outside the container's id map %s: it must be prepared for the map (pkg/rootfs WithIDMap: an idmapped lower layer); the driver does not chown it",
			spec.Rootfs, st.Uid, st.Gid, idmap.Key(spec.IDMaps))
	}
	return nil
}

// checkSearchable refuses dir if a directory on its path (dir included)
// does not let host uid and gid search it: liblxc resolves the lxcpath and
// the rootfs as the container's root once it is in the user namespace
// ("Could not access … Please grant it x access").
func checkSearchable(dir string, uid, gid int) error {
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return &os.PathError{Op: "stat", Path: p, Err: err}
		}
		ok := st.Mode&0o001 != 0 ||
			(int(st.Uid) == uid && st.Mode&0o100 != 0) ||
			(int(st.Gid) == gid && st.Mode&0o010 != 0)
		if !ok {
			return fmt.Errorf("%s (mode %04o, owner %d:%d) is not searchable by the container's root (host %d:%d): unprivileged containers need o+x on every directory above the lxcpath and the rootfs",
				p, st.Mode&0o7777, st.Uid, st.Gid, uid, gid)
		}
		if p == "/" {
			return nil
		}
	}
}

// checkPaths checks that the container's root reaches the lxcpath and the
// rootfs.
func checkPaths(lxcpath string, spec driver.Spec) error {
	uid, _ := idmap.HostID(spec.IDMaps, 'u', 0)
	gid, _ := idmap.HostID(spec.IDMaps, 'g', 0)
	if err := checkSearchable(lxcpath, uid, gid); err != nil {
		return err
	}
	return checkSearchable(spec.Rootfs, uid, gid)
}

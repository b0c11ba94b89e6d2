package libvirtlxc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/cgroupfs"
)

// libvirt 9.0 has no pids limit in its domain XML, and on a cgroup v1 (or
// hybrid) host it does not put LXC domains into the pids hierarchy at all.
// The driver does it itself: the domain is started paused (frozen), a pids
// cgroup is made at the same path as libvirt's memory cgroup of the domain,
// pids.max is written, every process of the container is moved in, and only
// then is the domain resumed. On a cgroup2 host the domain's own cgroup
// gets pids.max.

// pidsCgroup puts the container whose init is initPID under a pids limit
// and returns the directory it made ("" when it wrote into libvirt's own
// cgroup2 directory).
func pidsCgroup(initPID, limit int) (made string, err error) {
	max := "max"
	if limit > 0 {
		max = strconv.Itoa(limit)
	}
	cgs, err := cgroupfs.Of(initPID)
	if err != nil {
		return "", err
	}
	ms, err := cgroupfs.Mounts()
	if err != nil {
		return "", err
	}
	var memPath, v2Path string
	for _, cg := range cgs {
		switch {
		case cg.Controllers == "":
			v2Path = cg.Path
		case cg.Has("memory"):
			memPath = cg.Path
		}
	}
	if memPath == "" { // cgroup2: libvirt's domain cgroup has every controller
		for _, m := range ms {
			if m.V2 {
				return "", os.WriteFile(filepath.Join(m.Join(v2Path), "pids.max"), []byte(max), 0)
			}
		}
		return "", fmt.Errorf("pids limit: no cgroup hierarchy for pid %d: %w", initPID, fs.ErrNotExist)
	}
	pidsMount, ok := cgroupfs.V1(ms, "pids")
	if !ok {
		return "", fmt.Errorf("pids limit: no pids cgroup hierarchy mounted: %w", fs.ErrNotExist)
	}
	memMount, _ := cgroupfs.V1(ms, "memory")
	dir := pidsMount.Join(memPath)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("pids cgroup: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pids.max"), []byte(max), 0); err != nil {
		return dir, fmt.Errorf("pids cgroup: %w", err)
	}
	procs, err := os.ReadFile(filepath.Join(memMount.Join(memPath), "cgroup.procs"))
	if err != nil {
		return dir, fmt.Errorf("pids cgroup: %w", err)
	}
	for _, p := range strings.Fields(string(procs)) {
		// A process that exited meanwhile (ESRCH) needs no moving.
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(p), 0); err != nil &&
			!errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ESRCH) {
			return dir, fmt.Errorf("pids cgroup: move %s: %w", p, err)
		}
	}
	return dir, nil
}

// removePidsCgroups removes the pids cgroups the driver made for domain
// name (libvirt names its v1 cgroups "lxc-<controller pid>-<name>.libvirt-lxc"
// under its partition); a cgroup with processes left is kept.
func removePidsCgroups(name string) {
	ms, err := cgroupfs.Mounts()
	if err != nil {
		return
	}
	pids, ok := cgroupfs.V1(ms, "pids")
	if !ok {
		return
	}
	pidsRoot := pids.Dir
	matches, _ := filepath.Glob(filepath.Join(pidsRoot, "machine*", "lxc-*-"+name+".libvirt-lxc"))
	for _, dir := range matches {
		for i := 0; i < 20; i++ { // the last tasks may still be exiting
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(25 * time.Millisecond)
		}
	}
}

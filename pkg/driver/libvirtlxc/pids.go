package libvirtlxc

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/procfs"
)

// libvirt 9.0 has no pids limit in its domain XML, and on a cgroup v1 (or
// hybrid) host it does not put LXC domains into the pids hierarchy at all.
// The driver does it itself: the domain is started paused (frozen), a pids
// cgroup is made at the same path as libvirt's memory cgroup of the domain,
// pids.max is written, every process of the container is moved in, and only
// then is the domain resumed. On a cgroup2 host the domain's own cgroup
// gets pids.max.

// cgroupLine is one line of /proc/<pid>/cgroup.
type cgroupLine struct {
	controllers []string // empty for the cgroup2 line
	path        string
}

func readProcCgroup(pid int) ([]cgroupLine, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	var out []cgroupLine
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var ctrls []string
		if parts[1] != "" {
			ctrls = strings.Split(parts[1], ",")
		}
		out = append(out, cgroupLine{controllers: ctrls, path: parts[2]})
	}
	return out, nil
}

// cgroupMount finds the mount point of the v1 hierarchy with controller, or
// of the cgroup2 hierarchy when controller is "".
func cgroupMount(controller string) (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		i := slices.Index(fields, "-")
		if i < 0 || i+3 >= len(fields) {
			continue
		}
		fstype, opts := fields[i+1], fields[i+3]
		mp := procfs.UnescapeMountinfo(fields[4])
		switch {
		case controller == "" && fstype == "cgroup2":
			return mp, nil
		case controller != "" && fstype == "cgroup" && slices.Contains(strings.Split(opts, ","), controller):
			return mp, nil
		}
	}
	return "", fmt.Errorf("no %q cgroup hierarchy mounted: %w", controller, fs.ErrNotExist)
}

// pidsCgroup puts the container whose init is initPID under a pids limit
// and returns the directory it made ("" when it wrote into libvirt's own
// cgroup2 directory).
func pidsCgroup(initPID, limit int) (made string, err error) {
	max := "max"
	if limit > 0 {
		max = strconv.Itoa(limit)
	}
	lines, err := readProcCgroup(initPID)
	if err != nil {
		return "", err
	}
	var memPath, v2Path string
	for _, l := range lines {
		switch {
		case len(l.controllers) == 0:
			v2Path = l.path
		case slices.Contains(l.controllers, "memory"):
			memPath = l.path
		}
	}
	if memPath == "" { // cgroup2: libvirt's domain cgroup has every controller
		root, err := cgroupMount("")
		if err != nil {
			return "", err
		}
		dir := filepath.Join(root, v2Path)
		return "", os.WriteFile(filepath.Join(dir, "pids.max"), []byte(max), 0)
	}
	pidsRoot, err := cgroupMount("pids")
	if err != nil {
		return "", err
	}
	memRoot, err := cgroupMount("memory")
	if err != nil {
		return "", err
	}
	dir := filepath.Join(pidsRoot, memPath)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("pids cgroup: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pids.max"), []byte(max), 0); err != nil {
		return dir, fmt.Errorf("pids cgroup: %w", err)
	}
	procs, err := os.ReadFile(filepath.Join(memRoot, memPath, "cgroup.procs"))
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
	pidsRoot, err := cgroupMount("pids")
	if err != nil {
		return
	}
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

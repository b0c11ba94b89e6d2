package golxc

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// liblxc (5.0) moves the process that calls start (our forklxc helper, the
// "transient pid") into the container's lxc.monitor.<name> cgroup. When a
// start fails, the monitor tries to remove that cgroup while the helper may
// still be exiting, gets EBUSY and leaves an empty lxc.monitor.<name> behind
// in every hierarchy (the next start then uses lxc.monitor.<name>-1, ...).
// A monitor that is killed leaves lxc.payload.<name> too. These functions
// remove such empty leftovers; rmdir(2) refuses a cgroup that still has
// processes, so this can never disturb a running container.

// cgroupBases returns the directories under which liblxc creates a root
// container's cgroups: for every cgroup hierarchy, init's cgroup (minus a
// trailing init.scope) below the hierarchy's mount point, as liblxc's
// cgfsng does for containers started by root.
func cgroupBases(mountinfo, pid1cgroup string) []string {
	type hier struct{ mnt, fstype, super string }
	var hs []hier
	if f, err := os.Open(mountinfo); err == nil {
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			mnt, fstype, super, ok := parseMountinfo(sc.Text())
			if ok && (fstype == "cgroup" || fstype == "cgroup2") {
				hs = append(hs, hier{mnt, fstype, super})
			}
		}
		f.Close()
	}
	// /proc/1/cgroup: "N:ctrl,ctrl:/path" (v1), "0::/path" (v2).
	paths := map[string]string{}
	if b, err := os.ReadFile(pid1cgroup); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.SplitN(l, ":", 3)
			if len(f) == 3 {
				paths[f[1]] = f[2]
			}
		}
	}
	seen := map[string]bool{}
	var bases []string
	add := func(p string) {
		if p = filepath.Clean(p); !seen[p] {
			seen[p] = true
			bases = append(bases, p)
		}
	}
	for _, h := range hs {
		rel, found := "", false
		if h.fstype == "cgroup2" {
			rel, found = paths[""]
		} else {
			opts := strings.Split(h.super, ",")
			for ctrls, p := range paths {
				if ctrls == "" {
					continue
				}
				all := true
				for _, c := range strings.Split(ctrls, ",") {
					if !containsStr(opts, c) {
						all = false
						break
					}
				}
				if all {
					rel, found = p, true
					break
				}
			}
		}
		if found {
			if rel == "/init.scope" {
				rel = "/"
			}
			rel = strings.TrimSuffix(rel, "/init.scope")
			add(filepath.Join(h.mnt, rel))
		}
		add(h.mnt)
	}
	return bases
}

func containsStr(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// isContainerCgroup reports whether a cgroup directory name is one liblxc
// creates for container name: lxc.monitor.<name>, lxc.payload.<name>, or
// either with a "-<n>" suffix.
func isContainerCgroup(dirName, name string) bool {
	for _, p := range []string{"lxc.monitor." + name, "lxc.payload." + name} {
		if dirName == p {
			return true
		}
		if rest, ok := strings.CutPrefix(dirName, p+"-"); ok && rest != "" && strings.Trim(rest, "0123456789") == "" {
			return true
		}
	}
	return false
}

// removeContainerCgroups removes the empty cgroups liblxc left behind for
// container name under bases. It returns the cgroups that could not be
// removed (still populated, or an error other than ENOENT).
func removeContainerCgroups(bases []string, name string) (left []string) {
	for _, b := range bases {
		ents, err := os.ReadDir(b)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.IsDir() && isContainerCgroup(e.Name(), name) {
				p := filepath.Join(b, e.Name())
				if err := rmdirTree(p); err != nil {
					left = append(left, p)
				}
			}
		}
	}
	return left
}

// rmdirTree removes an empty cgroup and its empty children, depth first.
func rmdirTree(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	for _, e := range ents {
		if e.IsDir() {
			if err := rmdirTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

// cleanCgroups removes container id's leftover cgroups, retrying for a
// short while (the exiting monitor or helper may still be inside them).
func (d *Driver) cleanCgroups(ctx context.Context, id string, patience time.Duration) {
	bases := cgroupBases("/proc/self/mountinfo", "/proc/1/cgroup")
	deadline := time.Now().Add(patience)
	for {
		left := removeContainerCgroups(bases, id)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) || sleepCtx(ctx, 50*time.Millisecond) != nil {
			d.log.Warn("leftover container cgroups (still in use?)", "id", id, "cgroups", left)
			return
		}
	}
}

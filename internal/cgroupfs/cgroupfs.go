// Package cgroupfs finds cgroup hierarchies and a process's cgroups on v1,
// v2 and hybrid hosts, from /proc/self/mountinfo and /proc/<pid>/cgroup.
package cgroupfs

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/lxc-agent/lxc-agent/internal/procfs"
)

// Mount is one mounted cgroup hierarchy.
type Mount struct {
	Dir   string   // mount point
	Root  string   // the cgroup mounted there ("/" unless in a cgroup namespace)
	V2    bool     // cgroup2
	Opts  []string // super options (v1: the controllers, name=…)
	Ctrls []string // v2: cgroup.controllers of the mount's root
}

// Mounts lists the cgroup hierarchies mounted in this mount namespace.
func Mounts() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ms []Mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		sep := slices.Index(fl, "-")
		if sep < 5 || len(fl) < sep+4 {
			continue
		}
		fstype := fl[sep+1]
		if fstype != "cgroup" && fstype != "cgroup2" {
			continue
		}
		m := Mount{Dir: procfs.UnescapeMountinfo(fl[4]), Root: procfs.UnescapeMountinfo(fl[3]), V2: fstype == "cgroup2",
			Opts: strings.Split(fl[sep+3], ",")}
		if m.V2 {
			b, _ := os.ReadFile(filepath.Join(m.Dir, "cgroup.controllers"))
			m.Ctrls = strings.Fields(string(b))
		}
		ms = append(ms, m)
	}
	return ms, sc.Err()
}

// Join maps a cgroup path from /proc/<pid>/cgroup to a directory under m.
func (m Mount) Join(p string) string {
	if m.Root != "/" {
		if rel, ok := strings.CutPrefix(p, m.Root); ok {
			p = rel
		}
	}
	return filepath.Join(m.Dir, p)
}

// V1 finds the v1 hierarchy carrying controller.
func V1(ms []Mount, controller string) (Mount, bool) {
	for _, m := range ms {
		if !m.V2 && slices.Contains(m.Opts, controller) {
			return m, true
		}
	}
	return Mount{}, false
}

// Membership is one line of /proc/<pid>/cgroup.
type Membership struct {
	Controllers string // "memory", "cpu,cpuacct", …; "" for cgroup2
	Path        string
}

// Has reports whether the membership is of the v1 hierarchy with controller.
func (c Membership) Has(controller string) bool {
	return c.Controllers != "" && slices.Contains(strings.Split(c.Controllers, ","), controller)
}

// Of parses /proc/<pid>/cgroup.
func Of(pid int) ([]Membership, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	var out []Membership
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 {
			out = append(out, Membership{Controllers: f[1], Path: f[2]})
		}
	}
	return out, nil
}

// Dir returns the cgroup directory of process pid for a controller named
// as in cgroup v1 ("memory", "cpu", "pids", "blkio", ...): the v1 hierarchy
// carrying the controller if there is one, else the process's cgroup2
// directory if the cgroup2 hierarchy offers the controller ("blkio" is
// "io" there).
func Dir(pid int, controller string) (string, error) {
	ms, err := Mounts()
	if err != nil {
		return "", err
	}
	cgs, err := Of(pid)
	if err != nil {
		return "", err
	}
	for _, cg := range cgs {
		if !cg.Has(controller) {
			continue
		}
		if m, ok := V1(ms, controller); ok {
			return m.Join(cg.Path), nil
		}
	}
	v2name := controller
	if v2name == "blkio" {
		v2name = "io"
	}
	for _, cg := range cgs {
		if cg.Controllers != "" {
			continue
		}
		for _, m := range ms {
			if m.V2 && slices.Contains(m.Ctrls, v2name) {
				return m.Join(cg.Path), nil
			}
		}
	}
	return "", fmt.Errorf("pid %d: no cgroup hierarchy with the %s controller", pid, controller)
}

package drivertest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// cgroupMount is one mounted cgroup hierarchy.
type cgroupMount struct {
	dir   string   // mount point
	root  string   // the cgroup mounted there ("/" unless in a cgroup namespace)
	v2    bool     // cgroup2
	opts  []string // super options (v1: the controllers, name=…)
	ctrls []string // v2: cgroup.controllers of the mount's root
}

func cgroupMounts() ([]cgroupMount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ms []cgroupMount
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
		m := cgroupMount{dir: unescape(fl[4]), root: unescape(fl[3]), v2: fstype == "cgroup2",
			opts: strings.Split(fl[sep+3], ",")}
		if m.v2 {
			b, _ := os.ReadFile(filepath.Join(m.dir, "cgroup.controllers"))
			m.ctrls = strings.Fields(string(b))
		}
		ms = append(ms, m)
	}
	return ms, sc.Err()
}

func unescape(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// join maps a cgroup path from /proc/<pid>/cgroup to a directory under m.
func (m cgroupMount) join(p string) string {
	if m.root != "/" {
		if rel, ok := strings.CutPrefix(p, m.root); ok {
			p = rel
		}
	}
	return filepath.Join(m.dir, p)
}

// pidCgroups parses /proc/<pid>/cgroup into (controllers, path) pairs;
// the cgroup2 entry has controllers "".
func pidCgroups(pid int) ([][2]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	var out [][2]string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 {
			out = append(out, [2]string{f[1], f[2]})
		}
	}
	return out, nil
}

// InitCgroupDir returns the cgroup directory of process pid (a container's
// init) for a controller named as in cgroup v1 ("memory", "cpu", "pids",
// "blkio", ...): the v1 hierarchy carrying the controller if there is one,
// else the process's cgroup2 directory if the cgroup2 hierarchy offers the
// controller ("blkio" is "io" there). It works on v1, v2 and hybrid hosts.
func InitCgroupDir(pid int, controller string) (string, error) {
	ms, err := cgroupMounts()
	if err != nil {
		return "", err
	}
	cgs, err := pidCgroups(pid)
	if err != nil {
		return "", err
	}
	for _, cg := range cgs {
		if cg[0] == "" || !slices.Contains(strings.Split(cg[0], ","), controller) {
			continue
		}
		for _, m := range ms {
			if !m.v2 && slices.Contains(m.opts, controller) {
				return m.join(cg[1]), nil
			}
		}
	}
	v2name := controller
	if v2name == "blkio" {
		v2name = "io"
	}
	for _, cg := range cgs {
		if cg[0] != "" {
			continue
		}
		for _, m := range ms {
			if m.v2 && slices.Contains(m.ctrls, v2name) {
				return m.join(cg[1]), nil
			}
		}
	}
	return "", fmt.Errorf("pid %d: no cgroup hierarchy with the %s controller", pid, controller)
}

// cgroupProcsFiles lists the cgroup.procs file of every cgroup process pid
// is in, one per mounted hierarchy.
func cgroupProcsFiles(pid int) ([]string, error) {
	ms, err := cgroupMounts()
	if err != nil {
		return nil, err
	}
	cgs, err := pidCgroups(pid)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, cg := range cgs {
		for _, m := range ms {
			match := m.v2 && cg[0] == ""
			if !m.v2 && cg[0] != "" {
				match = true
				for _, c := range strings.Split(cg[0], ",") {
					if !slices.Contains(m.opts, c) {
						match = false
						break
					}
				}
			}
			if match {
				out = append(out, filepath.Join(m.join(cg[1]), "cgroup.procs"))
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("pid %d: no cgroups found", pid)
	}
	return out, nil
}

// nsenterScript joins the cgroups named in $DRIVERTEST_CGROUPS, then
// enters every namespace, the root and the working directory of
// $DRIVERTEST_PID and runs the arguments there.
const nsenterScript = `for f in $DRIVERTEST_CGROUPS; do echo $$ > "$f" || exit 125; done
exec nsenter -t "$DRIVERTEST_PID" -a -r -w -- "$@"`

// Nsenter runs cmd inside the container whose init is pid, the way a
// process of the container would run: in init's cgroups (so that the
// container's limits apply to it; nsenter alone leaves it in the caller's
// cgroups) and in all of init's namespaces, with init's root directory. It
// returns the combined output. It is the default Harness.InContainer.
func Nsenter(ctx context.Context, pid int, cmd ...string) (string, error) {
	if len(cmd) == 0 {
		return "", errors.New("nsenter: no command")
	}
	files, err := cgroupProcsFiles(pid)
	if err != nil {
		return "", err
	}
	c := exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", nsenterScript, "nsenter"}, cmd...)...)
	c.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"DRIVERTEST_PID=" + strconv.Itoa(pid),
		"DRIVERTEST_CGROUPS=" + strings.Join(files, " "),
	}
	// Background processes started by cmd may keep the output open.
	c.WaitDelay = 5 * time.Second
	out, err := c.CombinedOutput()
	return string(out), err
}

// readCgroupFile returns the trimmed content of file in cgroup dir, and
// whether it exists.
func readCgroupFile(dir, file string) (string, bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, file))
	if errors.Is(err, os.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", true, err
	}
	return strings.TrimSpace(string(b)), true, nil
}

// keyedValue returns the value of "key value" lines (memory.events,
// pids.events, memory.oom_control, cpu.stat), -1 if absent.
func keyedValue(content, key string) int64 {
	for _, l := range strings.Split(content, "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && f[0] == key {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// SharesToWeight is the default Harness.CPUWeight: cgroup v1 CPU shares to
// a cgroup v2 cpu.weight as systemd converts them (1024 shares = weight
// 100, linear, clamped to 1..10000).
func SharesToWeight(shares int) int {
	return min(max(shares*100/1024, 1), 10000)
}

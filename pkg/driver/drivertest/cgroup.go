package drivertest

import (
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

	"github.com/lxc-agent/lxc-agent/internal/cgroupfs"
)

// InitCgroupDir returns the cgroup directory of process pid (a container's
// init) for a controller named as in cgroup v1 ("memory", "cpu", "pids",
// "blkio", ...); see cgroupfs.Dir. It works on v1, v2 and hybrid hosts.
func InitCgroupDir(pid int, controller string) (string, error) { return cgroupfs.Dir(pid, controller) }

// cgroupProcsFiles lists the cgroup.procs file of every cgroup process pid
// is in, one per mounted hierarchy.
func cgroupProcsFiles(pid int) ([]string, error) {
	ms, err := cgroupfs.Mounts()
	if err != nil {
		return nil, err
	}
	cgs, err := cgroupfs.Of(pid)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, cg := range cgs {
		for _, m := range ms {
			match := m.V2 && cg.Controllers == ""
			if !m.V2 && cg.Controllers != "" {
				match = true
				for _, c := range strings.Split(cg.Controllers, ",") {
					if !slices.Contains(m.Opts, c) {
						match = false
						break
					}
				}
			}
			if match {
				out = append(out, filepath.Join(m.Join(cg.Path), "cgroup.procs"))
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

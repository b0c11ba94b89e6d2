package golxc

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/lxc-agent/lxc-agent/internal/procfs"
)

// commonConf is the distribution's shared container configuration.
const commonConf = "/usr/share/lxc/config/common.conf"

// hostInfo are the facts about the host that shape a container's config.
// They are detected once by New; tests build them by hand.
type hostInfo struct {
	// CommonConf is the lxc.include'd common configuration, "" if absent.
	CommonConf string
	// AppArmor: the kernel has AppArmor enabled.
	AppArmor bool
	// Cgroup is where the memory and cpu controllers live.
	Cgroup cgroupLayout
}

// cgroupLayout says, per controller we set limits on, which hierarchy
// carries it. On a hybrid host a controller is either bound to its own v1
// hierarchy (…V1) or left to the cgroup2 mount (…V2), never both.
type cgroupLayout struct {
	// Unified: pure cgroup2 host (cgroup.controllers at /sys/fs/cgroup).
	// liblxc 5.0 applies lxc.cgroup2.* keys only there and ignores them
	// (with a WARN) on any other layout; see cgroupKey.
	Unified bool
	// MemoryV1 / CPUV1 / PidsV1: the controller is mounted as a cgroup v1
	// hierarchy.
	MemoryV1, CPUV1, PidsV1 bool
	// MemoryV2 / CPUV2 / PidsV2: the controller is available in the cgroup2
	// hierarchy (pure v2 host, or a hybrid host that left it to the unified
	// mount).
	MemoryV2, CPUV2, PidsV2 bool
	// MemswV1: memory.memsw.limit_in_bytes exists (swap accounting, v1).
	MemswV1 bool
	// SwapV2: memory.swap.max exists (swap accounting, v2).
	SwapV2 bool
	// IOWeightFile is the block I/O weight file of the hierarchy carrying
	// the blkio (v1) or io (v2) controller: "blkio.bfq.weight" or
	// "blkio.weight" (v1), "io.bfq.weight" or "io.weight" (v2), the BFQ
	// file first as libvirt does; "" if there is none (no BFQ and no
	// CFQ/iocost in the kernel).
	IOWeightFile string
}

func detectHost() hostInfo {
	h := hostInfo{Cgroup: detectCgroups("/proc/self/mountinfo", "/sys/fs/cgroup")}
	if fileExists(commonConf) {
		h.CommonConf = commonConf
	}
	if b, err := os.ReadFile("/sys/module/apparmor/parameters/enabled"); err == nil {
		h.AppArmor = strings.TrimSpace(string(b)) == "Y"
	}
	return h
}

// detectCgroups finds the memory, cpu, pids and blkio/io controllers from
// the mount table.
func detectCgroups(mountinfo, root string) cgroupLayout {
	var l cgroupLayout
	var v2mounts []string
	var memV1Mount, blkioV1Mount string
	if f, err := os.Open(mountinfo); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			mnt, fstype, super, ok := parseMountinfo(sc.Text())
			if !ok {
				continue
			}
			switch fstype {
			case "cgroup":
				for _, o := range strings.Split(super, ",") {
					switch o {
					case "memory":
						l.MemoryV1 = true
						memV1Mount = mnt
					case "cpu":
						l.CPUV1 = true
					case "pids":
						l.PidsV1 = true
					case "blkio":
						blkioV1Mount = mnt
					}
				}
			case "cgroup2":
				v2mounts = append(v2mounts, mnt)
			}
		}
	}
	if fileExists(filepath.Join(root, "cgroup.controllers")) {
		l.Unified = true
		v2mounts = append([]string{root}, v2mounts...)
	}
	for _, m := range v2mounts {
		b, err := os.ReadFile(filepath.Join(m, "cgroup.controllers"))
		if err != nil {
			continue
		}
		io := false
		for _, c := range strings.Fields(string(b)) {
			switch c {
			case "memory":
				l.MemoryV2 = true
			case "cpu":
				l.CPUV2 = true
			case "pids":
				l.PidsV2 = true
			case "io":
				io = true
			}
		}
		if l.MemoryV2 {
			// The root cgroup has no memory.* files; look one level down.
			l.SwapV2 = cgroupFileName(m, "memory.swap.max") != ""
		}
		if io && blkioV1Mount == "" {
			l.IOWeightFile = cgroupFileName(m, "io.bfq.weight", "io.weight")
		}
		break
	}
	if memV1Mount != "" {
		l.MemswV1 = fileExists(filepath.Join(memV1Mount, "memory.memsw.limit_in_bytes"))
	}
	if blkioV1Mount != "" && !l.Unified {
		l.IOWeightFile = cgroupFileName(blkioV1Mount, "blkio.bfq.weight", "blkio.weight")
	}
	return l
}

// cgroupFileName returns the first of names that exists in the cgroup
// hierarchy mounted at mnt, "" if none does. Root cgroups lack most
// limit files, so it looks at the root, then at its children, then in a
// short-lived probe cgroup it creates and removes (an empty hierarchy).
func cgroupFileName(mnt string, names ...string) string {
	find := func(dir string) string {
		for _, n := range names {
			if fileExists(filepath.Join(dir, n)) {
				return n
			}
		}
		return ""
	}
	if n := find(mnt); n != "" {
		return n
	}
	ents, _ := os.ReadDir(mnt)
	for _, e := range ents {
		if e.IsDir() {
			if n := find(filepath.Join(mnt, e.Name())); n != "" {
				return n
			}
		}
	}
	probe := filepath.Join(mnt, fmt.Sprintf(".lxc-agent-probe-%d", os.Getpid()))
	if err := os.Mkdir(probe, 0o755); err != nil {
		return ""
	}
	defer os.Remove(probe)
	return find(probe)
}

// parseMountinfo returns the mount point, fs type and super options of one
// /proc/self/mountinfo line.
func parseMountinfo(line string) (mnt, fstype, super string, ok bool) {
	f := strings.Fields(line)
	sep := -1
	for i, s := range f {
		if s == "-" {
			sep = i
			break
		}
	}
	if sep < 5 || len(f) < sep+4 {
		return "", "", "", false
	}
	return procfs.UnescapeMountinfo(f[4]), f[sep+1], f[sep+3], true
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

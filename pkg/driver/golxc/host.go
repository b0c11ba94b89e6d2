package golxc

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
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
// carries it.
type cgroupLayout struct {
	// Unified: pure cgroup2 host (cgroup.controllers at /sys/fs/cgroup).
	Unified bool
	// MemoryV1 / CPUV1: the controller is mounted as a cgroup v1 hierarchy.
	MemoryV1, CPUV1 bool
	// MemoryV2 / CPUV2: the controller is available in the cgroup2 hierarchy
	// (pure v2 host, or a hybrid host that left it to the unified mount).
	MemoryV2, CPUV2 bool
	// MemswV1: memory.memsw.limit_in_bytes exists (swap accounting, v1).
	MemswV1 bool
	// SwapV2: memory.swap.max exists (swap accounting, v2).
	SwapV2 bool
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

// detectCgroups finds the memory and cpu controllers from the mount table.
func detectCgroups(mountinfo, root string) cgroupLayout {
	var l cgroupLayout
	var v2mounts []string
	var memV1Mount string
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
		for _, c := range strings.Fields(string(b)) {
			switch c {
			case "memory":
				l.MemoryV2 = true
			case "cpu":
				l.CPUV2 = true
			}
		}
		if l.MemoryV2 {
			// The root cgroup has no memory.* files; look one level down.
			if fileExists(filepath.Join(m, "memory.swap.max")) {
				l.SwapV2 = true
			} else if g, _ := filepath.Glob(filepath.Join(m, "*", "memory.swap.max")); len(g) > 0 {
				l.SwapV2 = true
			}
		}
		break
	}
	if memV1Mount != "" {
		l.MemswV1 = fileExists(filepath.Join(memV1Mount, "memory.memsw.limit_in_bytes"))
	}
	return l
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
	return unescapeMountinfo(f[4]), f[sep+1], f[sep+3], true
}

// unescapeMountinfo undoes the octal escapes (\040 etc.) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b bytes.Buffer
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

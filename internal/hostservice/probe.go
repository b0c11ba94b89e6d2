package hostservice

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// HostTotals probes what nova's libvirt driver reports for a host: usable
// CPUs, memory in MB, and the instances path's filesystem size and free
// space in GB.
func HostTotals(instancesPath string) (Usage, error) {
	var u Usage
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err == nil && set.Count() > 0 {
		u.VCPUs = set.Count()
	} else {
		u.VCPUs = runtime.NumCPU()
	}
	mem, err := memTotalKB()
	if err != nil {
		return u, err
	}
	u.MemoryMB = int(mem / 1024)
	var st unix.Statfs_t
	if err := unix.Statfs(instancesPath, &st); err != nil {
		return u, fmt.Errorf("statfs %s: %w", instancesPath, err)
	}
	u.DiskGB = int(st.Blocks * uint64(st.Bsize) >> 30)
	u.FreeDisk = int(st.Bavail * uint64(st.Bsize) >> 30)
	return u, nil
}

func memTotalKB() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			return strconv.ParseUint(fields[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/meminfo: no MemTotal")
}

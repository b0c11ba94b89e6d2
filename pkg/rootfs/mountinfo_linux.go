package rootfs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/lxc-agent/lxc-agent/internal/procfs"
)

// mountEntry is one line of /proc/self/mountinfo (proc(5)).
type mountEntry struct {
	mountPoint string
	fsType     string
	source     string
	superOpts  string // per-superblock options, still escaped per option
}

// readMountInfo parses /proc/self/mountinfo. It is re-read on every
// decision: the kernel's mount table is the only state the Mounter trusts.
func readMountInfo() ([]mountEntry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return parseMountInfo(b)
}

func parseMountInfo(b []byte) ([]mountEntry, error) {
	var out []mountEntry
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		if len(line) == 0 {
			continue
		}
		f := strings.Fields(string(line))
		// id parent maj:min root mountpoint opts [optional...] - fstype source superopts
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 || len(f) < sep+3 {
			return nil, fmt.Errorf("mountinfo: malformed line %q", line)
		}
		e := mountEntry{
			mountPoint: procfs.UnescapeMountinfo(f[4]),
			fsType:     f[sep+1],
			source:     procfs.UnescapeMountinfo(f[sep+2]),
		}
		if len(f) > sep+3 {
			e.superOpts = f[sep+3]
		}
		out = append(out, e)
	}
	return out, nil
}

// superOpt returns the unescaped value of option key in e's super options.
func (e mountEntry) superOpt(key string) (string, bool) {
	for o := range strings.SplitSeq(e.superOpts, ",") {
		if k, v, ok := strings.Cut(o, "="); ok && k == key {
			return procfs.UnescapeMountinfo(v), true
		}
	}
	return "", false
}

// lowerDirs returns an overlay mount's lower layers.
func (e mountEntry) lowerDirs() []string {
	v, ok := e.superOpt("lowerdir")
	if !ok {
		return nil
	}
	var out []string
	for l := range strings.SplitSeq(v, ":") {
		if l != "" {
			out = append(out, filepath.Clean(l))
		}
	}
	return out
}

// mountsAt returns the entries mounted exactly at path (several if stacked;
// the last one is on top).
func mountsAt(ms []mountEntry, path string) []mountEntry {
	var out []mountEntry
	for _, e := range ms {
		if e.mountPoint == path {
			out = append(out, e)
		}
	}
	return out
}

// mountsUnder returns the mount points at or below dir.
func mountsUnder(ms []mountEntry, dir string) []string {
	var out []string
	for _, e := range ms {
		if e.mountPoint == dir || strings.HasPrefix(e.mountPoint, dir+"/") {
			out = append(out, e.mountPoint)
		}
	}
	return out
}

// overlaysUsing returns the mount points of overlays that have dir as a
// lower layer.
func overlaysUsing(ms []mountEntry, dir string) []string {
	var out []string
	for _, e := range ms {
		if e.fsType != "overlay" {
			continue
		}
		for _, l := range e.lowerDirs() {
			if l == dir {
				out = append(out, e.mountPoint)
				break
			}
		}
	}
	return out
}

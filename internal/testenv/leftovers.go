package testenv

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/lxc-agent/lxc-agent/internal/procfs"
)

// RequireRoot fails the test (it does not skip it) when not running as root:
// the integration tests must not pass silently on a machine that cannot run
// them.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("this test must run as root (euid %d)", os.Geteuid())
	}
}

// LoopDevice is a loop device and its backing file.
type LoopDevice struct {
	Name        string // e.g. loop3
	Dev         string // /dev/loop3
	BackingFile string // " (deleted)" suffix removed
	Deleted     bool   // the backing file was deleted
}

// Leftovers is what a test may have left behind under a directory.
type Leftovers struct {
	Mounts []string     // mount points at or under the directory
	Loops  []LoopDevice // loop devices backed by files under the directory
	Links  []string     // network interfaces with the name prefix
}

// Empty reports whether nothing was left behind.
func (l Leftovers) Empty() bool {
	return len(l.Mounts) == 0 && len(l.Loops) == 0 && len(l.Links) == 0
}

func (l Leftovers) String() string {
	var b strings.Builder
	for _, m := range l.Mounts {
		fmt.Fprintf(&b, "mount %s\n", m)
	}
	for _, d := range l.Loops {
		fmt.Fprintf(&b, "loop %s -> %s", d.Dev, d.BackingFile)
		if d.Deleted {
			b.WriteString(" (deleted)")
		}
		b.WriteString("\n")
	}
	for _, n := range l.Links {
		fmt.Fprintf(&b, "link %s\n", n)
	}
	return b.String()
}

// FindLeftovers lists mounts (in this process's mount namespace) and loop
// devices under dir, and network interfaces (in this network namespace)
// whose names start with linkPrefix (none checked when linkPrefix is "").
func FindLeftovers(dir, linkPrefix string) (Leftovers, error) {
	var l Leftovers
	var err error
	if l.Mounts, err = MountsUnder(dir); err != nil {
		return l, err
	}
	if l.Loops, err = LoopDevicesUnder(dir); err != nil {
		return l, err
	}
	if linkPrefix != "" {
		if l.Links, err = LinksWithPrefix(linkPrefix); err != nil {
			return l, err
		}
	}
	return l, nil
}

// AssertNoLeftovers fails the test (t.Error) if FindLeftovers finds anything.
func AssertNoLeftovers(t testing.TB, dir, linkPrefix string) {
	t.Helper()
	l, err := FindLeftovers(dir, linkPrefix)
	if err != nil {
		t.Errorf("leftovers: %v", err)
		return
	}
	if !l.Empty() {
		t.Errorf("left behind under %s (links %q*):\n%s", dir, linkPrefix, l)
	}
}

// canonical returns the absolute path with symlinks resolved (as far as the
// path exists), the way the kernel reports mount points and backing files.
func canonical(p string) string {
	p, err := filepath.Abs(p)
	if err != nil {
		return filepath.Clean(p)
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

// isUnder reports whether p is dir or inside dir.
func isUnder(p, dir string) bool {
	if dir == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// MountsUnder returns the mount points at or under dir in this process's
// mount namespace (/proc/self/mountinfo), deepest first. Mounts made in
// another mount namespace (a container's, or one made with unshare -m) do
// not show up here; use MountsUnderPid for those.
func MountsUnder(dir string) ([]string, error) {
	return mountsUnderFile("/proc/self/mountinfo", dir)
}

// MountsUnderPid is MountsUnder in the mount namespace of process pid.
func MountsUnderPid(pid int, dir string) ([]string, error) {
	return mountsUnderFile("/proc/"+strconv.Itoa(pid)+"/mountinfo", dir)
}

func mountsUnderFile(path, dir string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMountsUnder(f, canonical(dir))
}

func parseMountsUnder(r io.Reader, dir string) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ... - fstype source superopts
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		mp := procfs.UnescapeMountinfo(f[4])
		if isUnder(mp, dir) {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// LoopDevicesUnder returns the loop devices whose backing file is under dir
// (from /sys/block/loop*/loop/backing_file). Backing files are reported by
// the kernel as the path at attach time; " (deleted)" is stripped and flagged.
func LoopDevicesUnder(dir string) ([]LoopDevice, error) {
	dir = canonical(dir)
	matches, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, err
	}
	var out []LoopDevice
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil {
			continue // detached meanwhile
		}
		bf := strings.TrimRight(string(b), "\n")
		d := LoopDevice{Name: filepath.Base(filepath.Dir(filepath.Dir(m)))}
		d.Dev = "/dev/" + d.Name
		if s, ok := strings.CutSuffix(bf, " (deleted)"); ok {
			bf, d.Deleted = s, true
		}
		d.BackingFile = bf
		if isUnder(bf, dir) {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// LinksWithPrefix returns the names of the network interfaces in this network
// namespace whose names start with prefix.
func LinksWithPrefix(prefix string) ([]string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, prefix) {
			out = append(out, i.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

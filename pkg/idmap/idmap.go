// Package idmap handles the user-namespace id maps of unprivileged
// containers: nova's "guest:host:count" entries ([libvirt] uid_maps and
// gid_maps), their validation and canonical forms, and, on Linux, the
// kernel objects that make files owned by host ids 0..N appear owned by
// the mapped ids without changing them on disk:
//
//   - NewUserns: a user namespace with the maps (a handle, no process
//     stays behind);
//   - MountIDMapped: an idmapped mount (mount_setattr MOUNT_ATTR_IDMAP,
//     Linux 5.12; usable as an overlayfs layer from 5.19) of a directory or
//     mount;
//   - ShiftedCopy: for kernels or filesystems that cannot idmap, a copy of a
//     tree with every owner shifted through the maps, made once.
//
// The maps use driver.IDMap, the driver contract's type.
package idmap

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// MaxRanges is the number of ranges per kind nova accepts ("Maximum of 5
// allowed"; nova drops the rest with a warning, Validate refuses them).
const MaxRanges = 5

// maxID is the largest valid uid or gid: (uid_t)-1 is "no id".
const maxID = 1<<32 - 2

// ErrInvalid classifies a malformed or unsafe map.
var ErrInvalid = errors.New("invalid id map")

// ParseNova parses nova's list entries "guest:host:count" for kind 'u'
// (uid_maps) or 'g' (gid_maps). It checks each entry's syntax and numbers;
// Validate checks the whole set.
func ParseNova(kind byte, entries []string) ([]driver.IDMap, error) {
	if kind != 'u' && kind != 'g' {
		return nil, fmt.Errorf("kind %q: want 'u' or 'g': %w", kind, ErrInvalid)
	}
	var out []driver.IDMap
	for _, e := range entries {
		f := strings.Split(strings.TrimSpace(e), ":")
		if len(f) != 3 {
			return nil, fmt.Errorf("%q: want guest:host:count: %w", e, ErrInvalid)
		}
		var n [3]int
		for i, s := range f {
			v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("%q: %q is not an id or count: %w", e, s, ErrInvalid)
			}
			n[i] = int(v)
		}
		out = append(out, driver.IDMap{Kind: kind, ContainerID: n[0], HostID: n[1], Count: n[2]})
	}
	return out, nil
}

// Validate checks a complete set of maps for an unprivileged container:
// kinds 'u' and 'g' only, both present, at most MaxRanges ranges of each,
// positive counts, ids that fit in 32 bits (up to 4294967294), no two
// container ranges or two host ranges of a kind overlapping (the kernel
// refuses those), container id 0 (root) mapped in both, and host id 0
// never mapped: a container whose root is the host's root is not
// unprivileged.
func Validate(maps []driver.IDMap) error {
	if len(maps) == 0 {
		return fmt.Errorf("no ranges: %w", ErrInvalid)
	}
	for _, m := range maps {
		if m.Kind != 'u' && m.Kind != 'g' {
			return fmt.Errorf("range %+v: kind %q, want 'u' or 'g': %w", m, m.Kind, ErrInvalid)
		}
	}
	for _, kind := range []byte{'u', 'g'} {
		var rs []driver.IDMap
		for _, m := range maps {
			if m.Kind == kind {
				rs = append(rs, m)
			}
		}
		name := kindName(kind)
		switch {
		case len(rs) == 0:
			return fmt.Errorf("no %s ranges (uid and gid maps go together): %w", name, ErrInvalid)
		case len(rs) > MaxRanges:
			return fmt.Errorf("%d %s ranges, at most %d: %w", len(rs), name, MaxRanges, ErrInvalid)
		}
		for _, m := range rs {
			switch {
			case m.Count <= 0:
				return fmt.Errorf("%s: count must be positive: %w", m2s(m), ErrInvalid)
			case m.ContainerID < 0 || m.HostID < 0,
				m.ContainerID > maxID-m.Count+1, m.HostID > maxID-m.Count+1:
				return fmt.Errorf("%s: ids must lie within 0..%d: %w", m2s(m), maxID, ErrInvalid)
			case m.HostID == 0:
				return fmt.Errorf("%s maps host %s 0 (root) into the container: %w", m2s(m), name, ErrInvalid)
			}
		}
		for i, a := range rs {
			for _, b := range rs[i+1:] {
				if overlap(a.ContainerID, a.Count, b.ContainerID, b.Count) {
					return fmt.Errorf("%s and %s overlap inside the container: %w", m2s(a), m2s(b), ErrInvalid)
				}
				if overlap(a.HostID, a.Count, b.HostID, b.Count) {
					return fmt.Errorf("%s and %s overlap on the host: %w", m2s(a), m2s(b), ErrInvalid)
				}
			}
		}
		if _, ok := HostID(maps, kind, 0); !ok {
			return fmt.Errorf("container %s 0 (root) is not mapped: %w", name, ErrInvalid)
		}
	}
	return nil
}

func kindName(kind byte) string {
	if kind == 'u' {
		return "uid"
	}
	return "gid"
}

// m2s formats one range the way nova's option spells it, with its kind.
func m2s(m driver.IDMap) string {
	return fmt.Sprintf("%s_maps entry %d:%d:%d", kindName(m.Kind), m.ContainerID, m.HostID, m.Count)
}

func overlap(a, n, b, m int) bool { return a < b+m && b < a+n }

// HostID maps container id (of kind 'u' or 'g') to the host; false if the
// maps do not cover it.
func HostID(maps []driver.IDMap, kind byte, id int) (int, bool) {
	for _, m := range maps {
		if m.Kind == kind && id >= m.ContainerID && id-m.ContainerID < m.Count {
			return m.HostID + id - m.ContainerID, true
		}
	}
	return 0, false
}

// ContainerID maps a host id (of kind 'u' or 'g') into the container;
// false if the maps do not cover it.
func ContainerID(maps []driver.IDMap, kind byte, hostID int) (int, bool) {
	for _, m := range maps {
		if m.Kind == kind && hostID >= m.HostID && hostID-m.HostID < m.Count {
			return m.ContainerID + hostID - m.HostID, true
		}
	}
	return 0, false
}

// Canonical returns the maps sorted by kind ('g' after 'u') and container
// id: equal sets of ranges compare equal whatever order they were given in.
func Canonical(maps []driver.IDMap) []driver.IDMap {
	out := slices.Clone(maps)
	slices.SortFunc(out, func(a, b driver.IDMap) int {
		if a.Kind != b.Kind {
			return -cmp.Compare(a.Kind, b.Kind) // 'u' first
		}
		return cmp.Compare(a.ContainerID, b.ContainerID)
	})
	return out
}

// Equal reports whether a and b map the same ranges (order aside).
func Equal(a, b []driver.IDMap) bool {
	return slices.Equal(Canonical(a), Canonical(b))
}

// Key is a short name for the maps, usable as a file name (no "/", ",",
// ":" or spaces), the same for Equal maps: "u0-100000-65536_g0-100000-65536".
func Key(maps []driver.IDMap) string {
	var b strings.Builder
	for i, m := range Canonical(maps) {
		if i > 0 {
			b.WriteByte('_')
		}
		fmt.Fprintf(&b, "%c%d-%d-%d", m.Kind, m.ContainerID, m.HostID, m.Count)
	}
	return b.String()
}

// Format writes the maps one range a line, as liblxc's lxc.idmap values
// ("u 0 100000 65536"). Parse reads it back.
func Format(maps []driver.IDMap) string {
	var b strings.Builder
	for _, m := range maps {
		fmt.Fprintf(&b, "%c %d %d %d\n", m.Kind, m.ContainerID, m.HostID, m.Count)
	}
	return b.String()
}

// Parse reads what Format wrote. It does not Validate.
func Parse(s string) ([]driver.IDMap, error) {
	var out []driver.IDMap
	for line := range strings.SplitSeq(s, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 4 || len(f[0]) != 1 || (f[0][0] != 'u' && f[0][0] != 'g') {
			return nil, fmt.Errorf("line %q: want \"u|g <container> <host> <count>\": %w", line, ErrInvalid)
		}
		var n [3]int
		for i, s := range f[1:] {
			v, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("line %q: %w", line, ErrInvalid)
			}
			n[i] = int(v)
		}
		out = append(out, driver.IDMap{Kind: f[0][0], ContainerID: n[0], HostID: n[1], Count: n[2]})
	}
	return out, nil
}

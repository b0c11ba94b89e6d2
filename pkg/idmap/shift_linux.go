package idmap

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// overflowID is what the kernel shows for ids a namespace does not map
// (kernel.overflowuid/overflowgid); unmapped owners are shifted to it.
const overflowID = 65534

// CopyStats describe what ShiftedCopy did.
type CopyStats struct {
	Files, Dirs, Links, Symlinks, Nodes int
	Bytes                               int64
	// Unmapped counts entries whose owner or group the maps do not cover:
	// they are owned by 65534 in the copy (what an idmapped mount shows).
	Unmapped int
	// Skipped lists entries that could not be copied (sockets, other
	// filesystems below src) and extended attributes that were dropped.
	Skipped []string
}

// ShiftedCopy copies the tree at src to dst (created; it must not exist)
// with every owner and group shifted through maps, as an idmapped mount of
// src would show them: on-disk id N becomes the host id of container id
// N. File contents (copy_file_range where the filesystem can), modes
// including setuid/setgid, times, hard links, symlinks, device nodes and
// fifos are kept; extended attributes are copied with the ids in POSIX
// ACLs shifted and file capabilities rewritten for the namespace's root
// (v3, rootid = the host id of container root). Symlinks are never
// followed and directories on other filesystems are not entered. On error
// dst is removed.
func ShiftedCopy(ctx context.Context, src, dst string, maps []driver.IDMap) (CopyStats, error) {
	if err := Validate(maps); err != nil {
		return CopyStats{}, err
	}
	return copyTree(ctx, src, dst, false, func(kind byte, id int) (int, bool) { return HostID(maps, kind, id) })
}

// UnshiftedCopy is the inverse of ShiftedCopy: it copies a tree whose
// files are owned by host ids (what an unprivileged container wrote) with
// every owner mapped back into the container's ids, host id 100000
// becoming 0 under the map 0:100000:65536; ids the maps do not cover
// become 65534. A snapshot of an unprivileged instance's root filesystem
// goes through it, so that the image is owned like any other.
func UnshiftedCopy(ctx context.Context, src, dst string, maps []driver.IDMap) (CopyStats, error) {
	if err := Validate(maps); err != nil {
		return CopyStats{}, err
	}
	return copyTree(ctx, src, dst, true, func(kind byte, id int) (int, bool) { return ContainerID(maps, kind, id) })
}

// copyTree copies src to dst with each owner through mapID.
func copyTree(ctx context.Context, src, dst string, unshift bool, mapID func(kind byte, id int) (int, bool)) (st CopyStats, err error) {
	var rootSt unix.Stat_t
	if err := unix.Stat(src, &rootSt); err != nil {
		return st, &os.PathError{Op: "stat", Path: src, Err: err}
	}
	if rootSt.Mode&unix.S_IFMT != unix.S_IFDIR {
		return st, fmt.Errorf("shifted copy: %s is not a directory", src)
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return st, fmt.Errorf("shifted copy: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dst)
		}
	}()
	root, err := os.OpenRoot(dst)
	if err != nil {
		return st, fmt.Errorf("shifted copy: %w", err)
	}
	defer root.Close()
	c := &copier{mapID: mapID, unshift: unshift, root: root, src: src, dev: rootSt.Dev, st: &st, links: map[[2]uint64]string{}}
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, werr error) error {
		if werr != nil {
			return werr
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		return c.entry(p, filepath.ToSlash(rel), d)
	})
	if err != nil {
		return st, fmt.Errorf("shifted copy of %s: %w", src, err)
	}
	if err := c.finishDirs(); err != nil {
		return st, fmt.Errorf("shifted copy of %s: %w", src, err)
	}
	return st, nil
}

type copier struct {
	mapID   func(kind byte, id int) (int, bool)
	unshift bool // host ids to container ids
	root    *os.Root
	src     string
	dev     uint64
	st      *CopyStats
	links   map[[2]uint64]string // (dev, ino) of a multiply linked file -> its first copy
	dirs    []dirAttrs
}

// dirAttrs are applied to the copied directories once they are filled.
type dirAttrs struct {
	rel  string
	src  string
	stat unix.Stat_t
}

func (c *copier) owner(s *unix.Stat_t) (int, int) {
	uid, uok := c.mapID('u', int(s.Uid))
	gid, gok := c.mapID('g', int(s.Gid))
	if !uok {
		uid = overflowID
	}
	if !gok {
		gid = overflowID
	}
	if !uok || !gok {
		c.st.Unmapped++
	}
	return uid, gid
}

func (c *copier) entry(p, rel string, d fs.DirEntry) error {
	var s unix.Stat_t
	if err := unix.Lstat(p, &s); err != nil {
		return &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	switch s.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if s.Dev != c.dev {
			c.st.Skipped = append(c.st.Skipped, rel+" (another filesystem)")
			return filepath.SkipDir
		}
		if rel != "." {
			if err := c.root.Mkdir(rel, 0o700); err != nil {
				return err
			}
		}
		c.dirs = append(c.dirs, dirAttrs{rel: rel, src: p, stat: s})
		c.st.Dirs++
		return nil
	case unix.S_IFREG:
		if s.Nlink > 1 {
			k := [2]uint64{s.Dev, s.Ino}
			if first, ok := c.links[k]; ok {
				if err := c.root.Link(first, rel); err != nil {
					return err
				}
				c.st.Links++
				return nil
			}
			c.links[k] = rel
		}
		return c.file(p, rel, &s)
	case unix.S_IFLNK:
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		if err := c.root.Symlink(target, rel); err != nil {
			return err
		}
		uid, gid := c.owner(&s)
		if err := c.root.Lchown(rel, uid, gid); err != nil {
			return err
		}
		c.st.Symlinks++
		return c.atParent(rel, func(fd int, base string) error {
			return unix.UtimesNanoAt(fd, base, []unix.Timespec{s.Atim, s.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
		})
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
		uid, gid := c.owner(&s)
		if err := c.atParent(rel, func(fd int, base string) error {
			if err := unix.Mknodat(fd, base, s.Mode&(unix.S_IFMT|0o7777), int(s.Rdev)); err != nil {
				return fmt.Errorf("mknod %s: %w", rel, err)
			}
			if err := unix.Fchownat(fd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("chown %s: %w", rel, err)
			}
			// mknod applied the umask; chown cleared setuid/setgid.
			if err := unix.Fchmodat(fd, base, s.Mode&0o7777, 0); err != nil {
				return fmt.Errorf("chmod %s: %w", rel, err)
			}
			return unix.UtimesNanoAt(fd, base, []unix.Timespec{s.Atim, s.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
		}); err != nil {
			return err
		}
		c.st.Nodes++
		return nil
	default:
		c.st.Skipped = append(c.st.Skipped, rel+" (socket)")
		return nil
	}
}

// file copies a regular file's content, owner, mode, xattrs and times.
func (c *copier) file(p, rel string, s *unix.Stat_t) error {
	in, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := c.root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	n, err := io.Copy(out, in) // copy_file_range between two files
	if err == nil {
		err = c.attrs(int(in.Fd()), int(out.Fd()), rel, s)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	c.st.Files++
	c.st.Bytes += n
	return nil
}

// attrs gives the open copy dst the shifted owner, the mode, the
// extended attributes and the times of the open original src.
func (c *copier) attrs(src, dst int, rel string, s *unix.Stat_t) error {
	uid, gid := c.owner(s)
	if err := unix.Fchown(dst, uid, gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	// After chown, which clears setuid/setgid.
	if err := unix.Fchmod(dst, s.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	if err := c.xattrs(src, dst, rel); err != nil {
		return err
	}
	return c.root.Chtimes(rel, time.Unix(s.Atim.Unix()), time.Unix(s.Mtim.Unix()))
}

// xattrs copies the extended attributes of src to dst, shifting the ids
// of POSIX ACLs and the root id of file capabilities. trusted.* (overlayfs
// and other kernel bookkeeping) is not copied.
func (c *copier) xattrs(src, dst int, rel string) error {
	names, err := listXattrs(src)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		return fmt.Errorf("list xattrs: %w", err)
	}
	for _, name := range names {
		if strings.HasPrefix(name, "trusted.") {
			c.st.Skipped = append(c.st.Skipped, rel+" (xattr "+name+")")
			continue
		}
		val, err := getXattr(src, name)
		if err != nil {
			return fmt.Errorf("get xattr %s: %w", name, err)
		}
		switch name {
		case "system.posix_acl_access", "system.posix_acl_default":
			if val, err = c.shiftACL(val); err != nil {
				c.st.Skipped = append(c.st.Skipped, rel+" (xattr "+name+": "+err.Error()+")")
				continue
			}
		case "security.capability":
			if val, err = c.shiftCaps(val); err != nil {
				c.st.Skipped = append(c.st.Skipped, rel+" (xattr "+name+": "+err.Error()+")")
				continue
			}
		}
		if err := unix.Fsetxattr(dst, name, val, 0); err != nil {
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
				c.st.Skipped = append(c.st.Skipped, rel+" (xattr "+name+": "+err.Error()+")")
				continue
			}
			return fmt.Errorf("set xattr %s: %w", name, err)
		}
	}
	return nil
}

// POSIX ACL xattr layout (linux/posix_acl_xattr.h): a 4-byte version (2),
// then 8-byte entries {tag u16, perm u16, id u32}, little endian.
const (
	aclVersion = 2
	aclUser    = 0x02
	aclGroup   = 0x08
)

func (c *copier) shiftACL(v []byte) ([]byte, error) {
	if len(v) < 4 || (len(v)-4)%8 != 0 || binary.LittleEndian.Uint32(v) != aclVersion {
		return nil, errors.New("malformed ACL")
	}
	out := slices.Clone(v)
	for i := 4; i < len(out); i += 8 {
		tag := binary.LittleEndian.Uint16(out[i:])
		kind := byte(0)
		switch tag {
		case aclUser:
			kind = 'u'
		case aclGroup:
			kind = 'g'
		default:
			continue
		}
		id := binary.LittleEndian.Uint32(out[i+4:])
		h, ok := c.mapID(kind, int(id))
		if !ok {
			h = overflowID
		}
		binary.LittleEndian.PutUint32(out[i+4:], uint32(h))
	}
	return out, nil
}

// File capability xattr layout (linux/capability.h): magic_etc u32
// (revision | VFS_CAP_FLAGS_EFFECTIVE), two {permitted, inheritable} u32
// pairs, and for revision 3 the root id the capabilities belong to.
const (
	capRevMask  = 0xFF000000
	capRev2     = 0x02000000
	capRev3     = 0x03000000
	capFlagsEff = 0x000001
	capSizeV2   = 20
	capSizeV3   = 24
)

func (c *copier) shiftCaps(v []byte) ([]byte, error) {
	if len(v) < capSizeV2 {
		return nil, errors.New("malformed file capabilities")
	}
	magic := binary.LittleEndian.Uint32(v)
	rootid := 0
	switch {
	case magic&capRevMask == capRev2 && len(v) == capSizeV2 && c.unshift:
		return v, nil // the host's root's: the container's root's in the copy
	case magic&capRevMask == capRev2 && len(v) == capSizeV2:
	case magic&capRevMask == capRev3 && len(v) == capSizeV3:
		rootid = int(binary.LittleEndian.Uint32(v[20:]))
	default:
		return nil, errors.New("unknown file capability revision")
	}
	h, ok := c.mapID('u', rootid)
	if !ok {
		return nil, fmt.Errorf("capability root id %d is not mapped", rootid)
	}
	out := make([]byte, capSizeV3)
	copy(out, v[:capSizeV2])
	binary.LittleEndian.PutUint32(out, capRev3|magic&capFlagsEff)
	binary.LittleEndian.PutUint32(out[20:], uint32(h))
	return out, nil
}

func listXattrs(fd int) ([]string, error) {
	buf := make([]byte, 1024)
	for {
		n, err := unix.Flistxattr(fd, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if err != nil {
			return nil, err
		}
		var out []string
		for s := range strings.SplitSeq(string(buf[:n]), "\x00") {
			if s != "" {
				out = append(out, s)
			}
		}
		return out, nil
	}
}

func getXattr(fd int, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Fgetxattr(fd, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// atParent calls fn with an fd of rel's parent directory in the copy and
// rel's last element.
func (c *copier) atParent(rel string, fn func(fd int, base string) error) error {
	d, err := c.root.OpenFile(path.Dir(rel), os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	return fn(int(d.Fd()), path.Base(rel))
}

// finishDirs applies the directories' owners, modes, xattrs and times,
// deepest first, now that nothing is written into them any more.
func (c *copier) finishDirs() error {
	slices.SortStableFunc(c.dirs, func(a, b dirAttrs) int {
		return strings.Count(b.rel, "/") - strings.Count(a.rel, "/")
	})
	for _, d := range c.dirs {
		if err := c.finishDir(d); err != nil {
			return fmt.Errorf("%s: %w", d.rel, err)
		}
	}
	return nil
}

func (c *copier) finishDir(d dirAttrs) error {
	in, err := os.OpenFile(d.src, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := c.root.OpenFile(d.rel, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	return c.attrs(int(in.Fd()), int(out.Fd()), d.rel, &d.stat)
}

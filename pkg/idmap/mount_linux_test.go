package idmap

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

var testMaps = []driver.IDMap{
	{Kind: 'u', ContainerID: 0, HostID: 100000, Count: 65536},
	{Kind: 'g', ContainerID: 0, HostID: 200000, Count: 65536},
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("needs root (user namespaces with foreign ids, mounts); euid %d", os.Geteuid())
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func owner(t *testing.T, p string) (uint32, uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid
}

func unmountAtEnd(t *testing.T, dir string) {
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

func TestNewUserns(t *testing.T) {
	requireRoot(t)
	ns, err := NewUserns(ctx(t), testMaps)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	// The helper is gone; the handle still names a namespace with the maps:
	// a process entering it sees them.
	cmd := exec.Command("nsenter", "--user=/proc/self/fd/3", "cat", "/proc/self/uid_map", "/proc/self/gid_map")
	cmd.ExtraFiles = []*os.File{ns}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter: %v: %s", err, out)
	}
	f := strings.Fields(string(out))
	if strings.Join(f, " ") != "0 100000 65536 0 200000 65536" {
		t.Errorf("maps seen in the namespace: %q", out)
	}
	if _, err := NewUserns(ctx(t), nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("no maps: %v", err)
	}
}

func TestMountIDMapped(t *testing.T) {
	requireRoot(t)
	for _, fs := range []string{"dir", "tmpfs"} {
		t.Run(fs, func(t *testing.T) {
			src := t.TempDir()
			if fs == "tmpfs" {
				if err := unix.Mount("tmpfs", src, "tmpfs", 0, "mode=0755"); err != nil {
					t.Fatal(err)
				}
				unmountAtEnd(t, src)
			}
			if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(filepath.Join(src, "f"), 1000, 1001); err != nil {
				t.Fatal(err)
			}
			dst := t.TempDir()
			if err := MountIDMapped(ctx(t), src, dst, testMaps, true); err != nil {
				t.Fatal(err)
			}
			unmountAtEnd(t, dst)
			if u, g := owner(t, filepath.Join(dst, "f")); u != 101000 || g != 201001 {
				t.Errorf("f through the idmapped mount: %d:%d, want 101000:201001", u, g)
			}
			if u, g := owner(t, filepath.Join(src, "f")); u != 1000 || g != 1001 {
				t.Errorf("f on disk: %d:%d, want 1000:1001 (unchanged)", u, g)
			}
			if err := os.WriteFile(filepath.Join(dst, "g"), nil, 0o644); !errors.Is(err, unix.EROFS) {
				t.Errorf("write into the read-only idmapped mount: %v, want EROFS", err)
			}
		})
	}
}

func TestMountIDMappedOverlayUnsupported(t *testing.T) {
	requireRoot(t)
	d := t.TempDir()
	for _, s := range []string{"lower", "upper", "work", "merged", "dst"} {
		if err := os.Mkdir(filepath.Join(d, s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	merged := filepath.Join(d, "merged")
	opts := "lowerdir=" + d + "/lower,upperdir=" + d + "/upper,workdir=" + d + "/work"
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatal(err)
	}
	unmountAtEnd(t, merged)
	err := MountIDMapped(ctx(t), merged, filepath.Join(d, "dst"), testMaps, true)
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("idmapped mount of an overlayfs: %v, want ErrUnsupported", err)
	}
	t.Logf("as expected: %v", err)
	if err := Probe(ctx(t), merged); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Probe(overlay) = %v, want ErrUnsupported", err)
	}
	if err := Probe(ctx(t), d); err != nil {
		t.Errorf("Probe(%s) = %v", d, err)
	}
	// Nothing was attached.
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if bytes.Contains(mi, []byte(filepath.Join(d, "dst"))) {
		t.Errorf("something is mounted at %s/dst", d)
	}
}

func TestShiftedCopy(t *testing.T) {
	requireRoot(t)
	src := filepath.Join(t.TempDir(), "src")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "etc/sub"), 0o755))
	must(os.WriteFile(filepath.Join(src, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\n"), 0o644))
	must(os.WriteFile(filepath.Join(src, "suid"), []byte("#!/bin/sh\n"), 0o755))
	must(os.Chmod(filepath.Join(src, "suid"), 0o4755|os.ModeSetuid))
	must(os.Link(filepath.Join(src, "etc/passwd"), filepath.Join(src, "etc/sub/hardlink")))
	must(os.Symlink("../passwd", filepath.Join(src, "etc/sub/symlink")))
	must(os.Symlink("/etc/shadow", filepath.Join(src, "abs")))
	must(unix.Mkfifo(filepath.Join(src, "fifo"), 0o600))
	must(unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(os.Chmod(filepath.Join(src, "null"), 0o666)) // past the umask
	must(os.WriteFile(filepath.Join(src, "user1000"), nil, 0o600))
	must(os.Lchown(filepath.Join(src, "user1000"), 1000, 1000))
	must(os.WriteFile(filepath.Join(src, "unmapped"), nil, 0o600))
	must(os.Lchown(filepath.Join(src, "unmapped"), 70000, 70000))
	must(os.Lchown(filepath.Join(src, "etc/sub/symlink"), 5, 6))
	// A file capability (v2, cap_net_raw) and an ACL granting uid 1000.
	caps := make([]byte, 20)
	binary.LittleEndian.PutUint32(caps, 0x02000000|1)
	binary.LittleEndian.PutUint32(caps[4:], 1<<13)
	must(unix.Setxattr(filepath.Join(src, "suid"), "security.capability", caps, 0))
	// An access ACL granting uid 1000 read, as setfacl -m u:1000:r writes it.
	acl := make([]byte, 4, 4+8*5)
	binary.LittleEndian.PutUint32(acl, 2)
	for _, e := range [][3]uint32{{0x01, 6, 0xffffffff}, {0x02, 4, 1000}, {0x04, 4, 0xffffffff}, {0x10, 4, 0xffffffff}, {0x20, 4, 0xffffffff}} {
		acl = binary.LittleEndian.AppendUint16(acl, uint16(e[0]))
		acl = binary.LittleEndian.AppendUint16(acl, uint16(e[1]))
		acl = binary.LittleEndian.AppendUint32(acl, e[2])
	}
	must(unix.Setxattr(filepath.Join(src, "etc/passwd"), "system.posix_acl_access", acl, 0))
	must(unix.Setxattr(filepath.Join(src, "etc"), "user.note", []byte("kept"), 0))
	must(unix.Setxattr(filepath.Join(src, "etc"), "trusted.overlay.opaque", []byte("y"), 0))
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	must(os.Chtimes(filepath.Join(src, "etc"), old, old))
	must(os.Chtimes(filepath.Join(src, "etc/passwd"), old, old))
	before := treeOwners(t, src)

	dst := filepath.Join(t.TempDir(), "dst")
	st, err := ShiftedCopy(ctx(t), src, dst, testMaps)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats: %+v", st)
	if st.Files != 4 || st.Links != 1 || st.Symlinks != 2 || st.Nodes != 2 || st.Dirs != 3 || st.Unmapped != 1 {
		t.Errorf("stats %+v: want 4 files, 1 link, 2 symlinks, 2 nodes, 3 dirs, 1 unmapped", st)
	}
	if after := treeOwners(t, src); after != before {
		t.Errorf("the source changed:\n%s\nwas\n%s", after, before)
	}
	for _, c := range []struct {
		rel      string
		uid, gid uint32
	}{
		{".", 100000, 200000}, {"etc", 100000, 200000}, {"etc/passwd", 100000, 200000},
		{"etc/sub/symlink", 100005, 200006}, {"user1000", 101000, 201000}, {"unmapped", 65534, 65534},
		{"fifo", 100000, 200000}, {"null", 100000, 200000},
	} {
		if u, g := owner(t, filepath.Join(dst, c.rel)); u != c.uid || g != c.gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", c.rel, u, g, c.uid, c.gid)
		}
	}
	fi, err := os.Stat(filepath.Join(dst, "suid"))
	if err != nil || fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("suid: %v %v, want setuid 0755", fi.Mode(), err)
	}
	var a, b unix.Stat_t
	must(unix.Stat(filepath.Join(dst, "etc/passwd"), &a))
	must(unix.Stat(filepath.Join(dst, "etc/sub/hardlink"), &b))
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hard link not kept: inodes %d %d, nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	if l, _ := os.Readlink(filepath.Join(dst, "abs")); l != "/etc/shadow" {
		t.Errorf("symlink target %q", l)
	}
	var n unix.Stat_t
	must(unix.Lstat(filepath.Join(dst, "null"), &n))
	if n.Mode&unix.S_IFMT != unix.S_IFCHR || n.Rdev != unix.Mkdev(1, 3) || n.Mode&0o777 != 0o666 {
		t.Errorf("device node: mode %o rdev %d", n.Mode, n.Rdev)
	}
	if fi, err := os.Stat(filepath.Join(dst, "etc")); err != nil || !fi.ModTime().Equal(old) {
		t.Errorf("etc mtime %v, want %v", fi.ModTime(), old)
	}
	if fi, err := os.Stat(filepath.Join(dst, "etc/passwd")); err != nil || !fi.ModTime().Equal(old) {
		t.Errorf("passwd mtime %v, want %v", fi.ModTime(), old)
	}
	buf := make([]byte, 64)
	if n, err := unix.Getxattr(filepath.Join(dst, "etc"), "user.note", buf); err != nil || string(buf[:n]) != "kept" {
		t.Errorf("user.note: %q, %v", buf[:max(n, 0)], err)
	}
	if _, err := unix.Getxattr(filepath.Join(dst, "etc"), "trusted.overlay.opaque", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("trusted.* copied: %v", err)
	}
	if n, err := unix.Getxattr(filepath.Join(dst, "suid"), "security.capability", buf); err != nil || n != 24 {
		t.Errorf("capability: %d bytes, %v; want a v3 (24 bytes)", n, err)
	} else if magic, root := binary.LittleEndian.Uint32(buf), binary.LittleEndian.Uint32(buf[20:]); magic != 0x03000001 || root != 100000 {
		t.Errorf("capability: magic %#x rootid %d, want 0x3000001 and 100000", magic, root)
	}
	got := make([]byte, 64)
	if m, err := unix.Getxattr(filepath.Join(dst, "etc/passwd"), "system.posix_acl_access", got); err != nil || m != len(acl) {
		t.Errorf("ACL not copied: %d bytes, %v", m, err)
	} else if id := binary.LittleEndian.Uint32(got[4+8+4:]); binary.LittleEndian.Uint16(got[4+8:]) != 0x02 || id != 101000 {
		t.Errorf("ACL named-user entry: tag %#x id %d, want 0x2 and 101000", binary.LittleEndian.Uint16(got[4+8:]), id)
	}

	// The destination must not exist; a failed copy leaves nothing.
	if _, err := ShiftedCopy(ctx(t), src, dst, testMaps); err == nil {
		t.Error("copy onto an existing destination succeeded")
	}
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	dst2 := filepath.Join(t.TempDir(), "dst2")
	if _, err := ShiftedCopy(cctx, src, dst2, testMaps); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled copy: %v", err)
	}
	if _, err := os.Lstat(dst2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cancelled copy left %s: %v", dst2, err)
	}
}

// treeOwners lists path, owner and mode of every entry under dir.
func treeOwners(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		fmt.Fprintf(&b, "%s %v %d:%d\n", p, fi.Mode(), st.Uid, st.Gid)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestUnshiftedCopy: a shifted copy copied back has the original owners,
// ACL ids and capability root.
func TestUnshiftedCopy(t *testing.T) {
	requireRoot(t)
	src := filepath.Join(t.TempDir(), "src")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "home/user"), 0o750))
	must(os.Chown(filepath.Join(src, "home/user"), 1000, 1000))
	must(os.WriteFile(filepath.Join(src, "home/user/f"), []byte("x"), 0o640))
	must(os.Chown(filepath.Join(src, "home/user/f"), 1000, 100))
	must(os.WriteFile(filepath.Join(src, "ping"), []byte("x"), 0o755))
	caps := make([]byte, 20)
	binary.LittleEndian.PutUint32(caps, 0x02000000|1)
	binary.LittleEndian.PutUint32(caps[4:], 1<<13)
	must(unix.Setxattr(filepath.Join(src, "ping"), "security.capability", caps, 0))
	shifted := filepath.Join(t.TempDir(), "shifted")
	if _, err := ShiftedCopy(ctx(t), src, shifted, testMaps); err != nil {
		t.Fatal(err)
	}
	// A file the container's root made (host 100000) and one host root
	// made (unmapped: 65534 in the copy).
	must(os.WriteFile(filepath.Join(shifted, "new"), nil, 0o644))
	must(os.Chown(filepath.Join(shifted, "new"), 100000, 200000))
	must(os.WriteFile(filepath.Join(shifted, "hostroot"), nil, 0o644))
	back := filepath.Join(t.TempDir(), "back")
	st, err := UnshiftedCopy(ctx(t), shifted, back, testMaps)
	if err != nil {
		t.Fatal(err)
	}
	if st.Unmapped != 1 {
		t.Errorf("stats %+v: want 1 unmapped (hostroot)", st)
	}
	for rel, want := range map[string][2]uint32{
		".": {0, 0}, "home/user": {1000, 1000}, "home/user/f": {1000, 100}, "ping": {0, 0}, "new": {0, 0}, "hostroot": {65534, 65534},
	} {
		if u, g := owner(t, filepath.Join(back, rel)); [2]uint32{u, g} != want {
			t.Errorf("%s: %d:%d, want %v", rel, u, g, want)
		}
	}
	buf := make([]byte, 64)
	// The kernel stores a v3 capability for root id 0, written by host
	// root, as v2.
	if n, err := unix.Getxattr(filepath.Join(back, "ping"), "security.capability", buf); err != nil || n != 20 || binary.LittleEndian.Uint32(buf)>>24 != 2 {
		t.Errorf("capability after the round trip: %x, %v; want the host root's (v2)", buf[:max(n, 0)], err)
	}
	if _, err := UnshiftedCopy(ctx(t), shifted, filepath.Join(t.TempDir(), "x"), nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("no maps: %v", err)
	}
}

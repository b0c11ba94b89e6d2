package rootfs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// tarEntry is a test archive member.
type tarEntry struct {
	name, link string
	typ        byte
	mode       int64
	body       string
	uid, gid   int
	major      int64
	minor      int64
	pax        map[string]string
	mtime      time.Time
}

func makeTar(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Devmajor: e.major, Devminor: e.minor, PAXRecords: e.pax, ModTime: e.mtime, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.ModTime.IsZero() {
			h.ModTime = testMtime
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			io.WriteString(tw, e.body)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// snapshotTree lists every path under dir (but skip) with its mode, and
// for non-directories size and mtime, to check that nothing outside the
// target changed.
func snapshotTree(t testing.TB, dir, skip string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.IsDir() { // a directory's mtime moves when the Mounter's own dirs come and go
			fmt.Fprintf(&b, "%s %v\n", p, fi.Mode())
			return nil
		}
		fmt.Fprintf(&b, "%s %v %d %d\n", p, fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	return b.String()
}

// tarPlayground has a target dir and, next to it, an "outside" dir with a
// canary file.
type tarPlayground struct {
	root, target, outside, canary string
	before                        string
}

func newTarPlayground(t *testing.T) *tarPlayground {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown, mknod)")
	}
	root := t.TempDir()
	p := &tarPlayground{root: root, target: filepath.Join(root, "target"), outside: filepath.Join(root, "outside")}
	p.canary = filepath.Join(p.outside, "canary")
	must(t, os.Mkdir(p.target, 0o755))
	must(t, os.Mkdir(p.outside, 0o755))
	must(t, os.WriteFile(p.canary, []byte("canary\n"), 0o644))
	p.before = snapshotTree(t, root, p.target)
	return p
}

func (p *tarPlayground) extract(t *testing.T, data []byte, opts TarOptions) (tarStats, error) {
	t.Helper()
	st, err := extractTar(t.Context(), bytes.NewReader(data), p.target, opts, testLogger(t))
	if after := snapshotTree(t, p.root, p.target); after != p.before {
		t.Errorf("something outside the target changed:\nbefore:\n%safter:\n%s", p.before, after)
	}
	if b, err := os.ReadFile(p.canary); err != nil || string(b) != "canary\n" {
		t.Errorf("canary: %q %v", b, err)
	}
	return st, err
}

func TestExtractTarHostile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries func(p *tarPlayground) []tarEntry
		want    error
		msg     string
	}{
		{"dotdot", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "../outside/canary", body: "pwned"}}
		}, ErrUnsafeImage, `tar entry "../outside/canary" escapes the root`},
		{"dotdot-etc-passwd", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "../etc/passwd", body: "pwned"}}
		}, ErrUnsafeImage, `tar entry "../etc/passwd" escapes the root`},
		{"dotdot-deep", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "./a/b/../../../outside/x", body: "pwned"}}
		}, ErrUnsafeImage, "escapes the root"},
		{"absolute", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: p.outside + "/evil", body: "pwned"}}
		}, ErrUnsafeImage, "absolute path"},
		{"absolute-etc", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "/etc/lxc-agent-test-evil", body: "pwned"}}
		}, ErrUnsafeImage, "absolute path"},
		{"symlink-out-then-write", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "etc", typ: tar.TypeSymlink, link: p.outside}, {name: "etc/evil", body: "pwned"}}
		}, ErrUnsafeImage, `"etc" is a symlink`},
		{"symlink-etc-then-write", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "etc", typ: tar.TypeSymlink, link: "/etc"}, {name: "etc/lxc-agent-test-evil", body: "pwned"}}
		}, ErrUnsafeImage, "is a symlink"},
		{"symlink-relative-out-then-dir", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "up", typ: tar.TypeSymlink, link: "../outside"}, {name: "up/newdir/", typ: tar.TypeDir, mode: 0o755}}
		}, ErrUnsafeImage, "is a symlink"},
		{"symlink-inside-then-write", func(p *tarPlayground) []tarEntry {
			// Even a symlink that stays inside is never written through.
			return []tarEntry{{name: "real/", typ: tar.TypeDir, mode: 0o755}, {name: "alias", typ: tar.TypeSymlink, link: "real"}, {name: "alias/f", body: "x"}}
		}, ErrUnsafeImage, "is a symlink"},
		{"hardlink-etc-shadow", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "shadow", typ: tar.TypeLink, link: "/etc/shadow"}}
		}, ErrUnsafeImage, `hard link to "/etc/shadow" outside the root`},
		{"hardlink-dotdot", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "c", typ: tar.TypeLink, link: "../outside/canary"}}
		}, ErrUnsafeImage, "outside the root"},
		{"hardlink-through-symlink", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "out", typ: tar.TypeSymlink, link: p.outside}, {name: "c", typ: tar.TypeLink, link: "out/canary"}}
		}, ErrUnsafeImage, `"out" is a symlink`},
		{"hardlink-missing-target", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "c", typ: tar.TypeLink, link: "nowhere"}}
		}, ErrInvalidImage, "not an earlier entry"},
		{"hardlink-to-dir", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "d/", typ: tar.TypeDir, mode: 0o755}, {name: "c", typ: tar.TypeLink, link: "d"}}
		}, ErrInvalidImage, "hard link to the directory"},
		{"file-replacing-nonempty-dir", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "d/f", body: "x"}, {name: "d", body: "file now"}}
		}, ErrInvalidImage, "non-empty directory"},
		{"file-below-file", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: "f", body: "x"}, {name: "f/g", body: "y"}}
		}, ErrInvalidImage, "not a directory"},
		{"file-as-root", func(p *tarPlayground) []tarEntry {
			return []tarEntry{{name: ".", body: "x"}}
		}, ErrInvalidImage, "a file as the root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTarPlayground(t)
			_, err := p.extract(t, makeTar(t, tc.entries(p)...), TarOptions{})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v; want %v with %q", err, tc.want, tc.msg)
			}
			t.Log(err)
			if _, err := os.Lstat("/etc/lxc-agent-test-evil"); err == nil {
				t.Fatal("/etc/lxc-agent-test-evil was written")
			}
		})
	}
}

func TestExtractTarReplaceSymlinkWithFile(t *testing.T) {
	p := newTarPlayground(t)
	_, err := p.extract(t, makeTar(t,
		tarEntry{name: "f", typ: tar.TypeSymlink, link: p.canary},
		tarEntry{name: "f", body: "replaced"}, // must replace the link, not write through it
		tarEntry{name: "g", typ: tar.TypeSymlink, link: p.canary},
		tarEntry{name: "h", typ: tar.TypeLink, link: "g"}, // a hard link to the symlink itself
	), TarOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(p.target, "f")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("f: %v %v", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(p.target, "h")); err != nil || l != p.canary {
		t.Errorf("h -> %q %v", l, err)
	}
}

func TestExtractTarOptions(t *testing.T) {
	entries := []tarEntry{
		{name: "./", typ: tar.TypeDir, mode: 0o751, mtime: testMtime},
		{name: "./bin/", typ: tar.TypeDir, mode: 0o755, uid: 2, gid: 3, mtime: testMtime},
		{name: "./bin/su", mode: 0o4755, body: "#!/bin/sh\n"},
		{name: "./bin/wall", mode: 0o2755, body: "#!/bin/sh\n", gid: 5},
		{name: "./bin/ping", mode: 0o755, body: "ping", pax: map[string]string{
			"SCHILY.xattr.security.capability":    "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
			"SCHILY.xattr.user.note":              "hello",
			"SCHILY.xattr.trusted.overlay.opaque": "y",
		}},
		{name: "./var/mail/", typ: tar.TypeDir, mode: 0o2775, gid: 8},
		{name: "./dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		{name: "./dev/loop9", typ: tar.TypeBlock, mode: 0o660, major: 7, minor: 9, gid: 6},
		{name: "./run/fifo", typ: tar.TypeFifo, mode: 0o600},
		{name: "./etc/hosts", mode: 0o640, body: "127.0.0.1 localhost\n", uid: 1000, gid: 1001},
		{name: "./etc/hosts.link", typ: tar.TypeLink, link: "./etc/hosts"},
		{name: "./etc/alt", typ: tar.TypeSymlink, link: "/usr/share/alt", uid: 7, gid: 7},
		{name: "./usr/share/doc/deep/file", body: "implicit parents"},
	}
	data := makeTar(t, entries...)

	t.Run("defaults", func(t *testing.T) {
		p := newTarPlayground(t)
		st, err := p.extract(t, data, TarOptions{Xattrs: true})
		if err != nil {
			t.Fatal(err)
		}
		tgt := p.target
		mode := func(rel string) os.FileMode {
			fi, err := os.Lstat(filepath.Join(tgt, rel))
			if err != nil {
				t.Fatal(err)
			}
			return fi.Mode()
		}
		if m := mode("bin/su"); m&os.ModeSetuid != 0 || m.Perm() != 0o755 {
			t.Errorf("bin/su: %v, want setuid stripped", m)
		}
		if m := mode("bin/wall"); m&os.ModeSetgid != 0 {
			t.Errorf("bin/wall: %v, want setgid stripped", m)
		}
		if m := mode("var/mail"); m&os.ModeSetgid == 0 {
			t.Errorf("var/mail: %v, want setgid kept on a directory", m)
		}
		for _, d := range []string{"dev/null", "dev/loop9"} {
			if _, err := os.Lstat(filepath.Join(tgt, d)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s created without AllowDevices (%v)", d, err)
			}
		}
		if len(st.skippedDevices) != 2 || len(st.strippedSetuid) != 3 {
			t.Errorf("stats %+v", st)
		}
		if m := mode("run/fifo"); m&os.ModeNamedPipe == 0 {
			t.Errorf("fifo: %v", m)
		}
		// xattrs: user.* restored; capability stripped; trusted.* never.
		buf := make([]byte, 64)
		if n, err := unix.Lgetxattr(filepath.Join(tgt, "bin/ping"), "user.note", buf); err != nil || string(buf[:n]) != "hello" {
			t.Errorf("user.note: %q %v", buf[:max(n, 0)], err)
		}
		for _, a := range []string{"security.capability", "trusted.overlay.opaque"} {
			if _, err := unix.Lgetxattr(filepath.Join(tgt, "bin/ping"), a, buf); err == nil {
				t.Errorf("%s restored", a)
			}
		}
		// Owners, modes, times; hard links; symlinks as they are.
		fi, _ := os.Lstat(filepath.Join(tgt, "etc/hosts"))
		s := fi.Sys().(*syscall.Stat_t)
		if s.Uid != 1000 || s.Gid != 1001 || fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(testMtime) || s.Nlink != 2 {
			t.Errorf("etc/hosts: %+v mode %v mtime %v", s, fi.Mode(), fi.ModTime())
		}
		fi, _ = os.Lstat(filepath.Join(tgt, "etc/alt"))
		s = fi.Sys().(*syscall.Stat_t)
		if l, _ := os.Readlink(filepath.Join(tgt, "etc/alt")); l != "/usr/share/alt" || s.Uid != 7 || !fi.ModTime().Equal(testMtime) {
			t.Errorf("etc/alt -> %q uid %d mtime %v", l, s.Uid, fi.ModTime())
		}
		// Directory attributes are applied last: children do not bump them.
		for rel, want := range map[string]os.FileMode{".": 0o751, "bin": 0o755} {
			fi, _ := os.Lstat(filepath.Join(tgt, rel))
			if fi.Mode().Perm() != want || !fi.ModTime().Equal(testMtime) {
				t.Errorf("%s: mode %v mtime %v", rel, fi.Mode(), fi.ModTime())
			}
		}
		fi, _ = os.Lstat(filepath.Join(tgt, "bin"))
		if s := fi.Sys().(*syscall.Stat_t); s.Uid != 2 || s.Gid != 3 {
			t.Errorf("bin owner %d:%d", s.Uid, s.Gid)
		}
		if m := mode("usr/share/doc/deep"); !m.IsDir() || m.Perm() != 0o755 {
			t.Errorf("implicit parent: %v", m)
		}
	})

	t.Run("allow-devices-and-setuid", func(t *testing.T) {
		p := newTarPlayground(t)
		if _, err := p.extract(t, data, TarOptions{AllowDevices: true, AllowSetuid: true, Xattrs: true}); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(filepath.Join(p.target, "bin/su"))
		if err != nil || fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
			t.Errorf("bin/su: %v %v", fi.Mode(), err)
		}
		fi, err = os.Lstat(filepath.Join(p.target, "bin/wall"))
		if err != nil || fi.Mode()&os.ModeSetgid == 0 || fi.Sys().(*syscall.Stat_t).Gid != 5 {
			t.Errorf("bin/wall: %v %v", fi.Mode(), err)
		}
		for rel, want := range map[string]struct {
			typ  os.FileMode
			perm os.FileMode
			dev  uint64
		}{"dev/null": {os.ModeCharDevice | os.ModeDevice, 0o666, unix.Mkdev(1, 3)}, "dev/loop9": {os.ModeDevice, 0o660, unix.Mkdev(7, 9)}} {
			fi, err := os.Lstat(filepath.Join(p.target, rel))
			if err != nil || fi.Mode().Type() != want.typ || fi.Mode().Perm() != want.perm || fi.Sys().(*syscall.Stat_t).Rdev != want.dev {
				t.Errorf("%s: %v %v", rel, fi, err)
			}
		}
		buf := make([]byte, 64)
		if _, err := unix.Lgetxattr(filepath.Join(p.target, "bin/ping"), "security.capability", buf); err != nil {
			t.Errorf("security.capability with AllowSetuid: %v", err)
		}
	})

	t.Run("max-bytes", func(t *testing.T) {
		p := newTarPlayground(t)
		_, err := p.extract(t, makeTar(t, tarEntry{name: "big", body: strings.Repeat("x", 10000)}), TarOptions{MaxBytes: 1000})
		if !errors.Is(err, ErrUnsafeImage) {
			t.Errorf("err = %v", err)
		}
	})

	t.Run("truncated", func(t *testing.T) {
		p := newTarPlayground(t)
		full := makeTar(t, tarEntry{name: "a", body: strings.Repeat("x", 5000)}, tarEntry{name: "b", body: "y"})
		_, err := p.extract(t, full[:3000], TarOptions{})
		if !errors.Is(err, ErrInvalidImage) || !strings.Contains(err.Error(), "truncated") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestSniffTarCompressions(t *testing.T) {
	dir := t.TempDir()
	plain := makeTar(t, tarEntry{name: "./", typ: tar.TypeDir, mode: 0o755}, tarEntry{name: "./etc/x", body: "x"})
	compress := map[string]func(io.Writer) io.WriteCloser{
		"gzip": func(w io.Writer) io.WriteCloser { return gzip.NewWriter(w) },
		"xz": func(w io.Writer) io.WriteCloser {
			z, err := xz.NewWriter(w)
			must(t, err)
			return z
		},
		"zstd": func(w io.Writer) io.WriteCloser {
			z, err := zstd.NewWriter(w)
			must(t, err)
			return z
		},
	}
	for name, mk := range compress {
		for _, useBin := range []bool{true, false} {
			var b bytes.Buffer
			w := mk(&b)
			w.Write(plain)
			w.Close()
			p := filepath.Join(dir, name)
			os.WriteFile(p, b.Bytes(), 0o644)
			f, _ := os.Open(p)
			comp, isTar, err := sniffTar(f)
			if err != nil || comp != name || !isTar {
				t.Errorf("%s: %q %v %v", name, comp, isTar, err)
			}
			xzBinary = useBin
			r, closeR, err := openTarStream(t.Context(), f, comp)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			closeR()
			xzBinary = true
			if err != nil || !bytes.Equal(got, plain) {
				t.Errorf("%s (binary %v): %d bytes, %v", name, useBin, len(got), err)
			}
			// Corrupt data is an error, not a short archive.
			bad := bytes.Clone(b.Bytes())
			for i := len(bad) / 2; i < len(bad)-4; i++ {
				bad[i] ^= 0x5a
			}
			os.WriteFile(p+".bad", bad, 0o644)
			fb, _ := os.Open(p + ".bad")
			xzBinary = useBin
			if r, closeR, err := openTarStream(t.Context(), fb, comp); err == nil {
				_, err = io.ReadAll(r)
				closeR()
				if err == nil {
					t.Errorf("%s (binary %v): corrupt data read without error", name, useBin)
				}
			}
			xzBinary = true
			fb.Close()
			f.Close()
		}
	}
}

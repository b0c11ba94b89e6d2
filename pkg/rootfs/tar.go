package rootfs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// TarOptions says what a root tarball may create. The zero value is the
// safe default: device nodes are skipped and setuid/setgid bits (and file
// capabilities) are stripped, each with a logged warning.
type TarOptions struct {
	// AllowDevices creates character and block device nodes. FIFOs are
	// always created.
	AllowDevices bool
	// AllowSetuid keeps the setuid and setgid bits of non-directories and
	// restores security.capability extended attributes.
	AllowSetuid bool
	// Xattrs restores the extended attributes a PAX archive carries (GNU tar
	// --xattrs) on regular files and directories: user.*, POSIX ACLs, and
	// security.capability if AllowSetuid. Others (trusted.*, which overlayfs
	// interprets, security.selinux, ...) are never restored.
	Xattrs bool
	// MaxBytes, if positive, bounds the total size of the regular files
	// extracted (a decompression bomb fails with ErrUnsafeImage).
	MaxBytes int64
}

// Compression magics, and the tar magic at offset 257 of a header block.
var compressMagics = []struct {
	name  string
	magic []byte
}{
	{"gzip", []byte{0x1f, 0x8b}},
	{"bzip2", []byte("BZh")},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}},
}

// zstdMaxWindow bounds the memory a zstd frame can make the decoder take
// (zstd -19 --long=27 needs 128 MiB).
const zstdMaxWindow = 128 << 20

// sniffTar reports the compression of f's data ("" for none, or none
// recognised) and whether the (decompressed) data starts with a valid tar
// header block.
func sniffTar(f *os.File) (comp string, isTar bool, err error) {
	head := make([]byte, 8)
	n, err := f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", false, err
	}
	for _, m := range compressMagics {
		if bytes.HasPrefix(head[:n], m.magic) {
			comp = m.name
			break
		}
	}
	r, closeR, err := decompressor(comp, io.NewSectionReader(f, 0, 1<<62))
	if err != nil {
		return comp, false, nil // not really compressed data after all
	}
	defer closeR()
	blk := make([]byte, 512)
	if _, err := io.ReadFull(r, blk); err != nil {
		return comp, false, nil
	}
	return comp, isTarHeader(blk), nil
}

// isTarHeader checks the ustar magic and the header checksum.
func isTarHeader(b []byte) bool {
	if len(b) < 512 || !bytes.Equal(b[257:262], []byte("ustar")) {
		return false
	}
	want, err := strconv.ParseUint(strings.Trim(string(b[148:156]), " \x00"), 8, 32)
	if err != nil {
		return false
	}
	var unsigned, signed int64
	for i, c := range b[:512] {
		if i >= 148 && i < 156 {
			c = ' '
		}
		unsigned += int64(c)
		signed += int64(int8(c))
	}
	return uint64(unsigned) == want || uint64(signed) == want
}

// decompressor wraps r in the decoder for comp ("" for none).
func decompressor(comp string, r io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReaderSize(r, 1<<20)
	switch comp {
	case "":
		return br, func() {}, nil
	case "gzip":
		z, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return z, func() { z.Close() }, nil
	case "bzip2":
		return bzip2.NewReader(br), func() {}, nil
	case "xz":
		z, err := xz.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return z, func() {}, nil
	case "zstd":
		z, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(zstdMaxWindow), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, err
		}
		return z, z.Close, nil
	}
	return nil, nil, fmt.Errorf("unknown compression %q", comp)
}

// xzBinary decides whether openTarStream pipes xz data through the xz
// program (2-4 times faster than the Go decoder) when it is installed.
var xzBinary = true

// openTarStream returns the decompressed data of the image file f
// (compressed with comp), reading until ctx is done. xz goes through the
// xz program if installed; its failure (corrupt data) is a read error
// wrapping ErrInvalidImage. The returned function releases everything.
func openTarStream(ctx context.Context, f *os.File, comp string) (io.Reader, func(), error) {
	if comp == "xz" && xzBinary {
		if bin, err := exec.LookPath("xz"); err == nil {
			return pipeThrough(ctx, bin, f.Name(), "-dc")
		}
	}
	return decompressor(comp, ctxReader{ctx, io.NewSectionReader(f, 0, 1<<62)})
}

// pipeThrough runs bin args... with the file at path as input and returns
// its output.
func pipeThrough(ctx context.Context, bin, path string, args ...string) (io.Reader, func(), error) {
	in, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer in.Close() // the child has its own copy
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = in
	cr := &cmdReader{cmd: cmd, name: filepath.Base(bin)}
	cmd.Stderr = &cr.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	cr.out = out
	return cr, cr.close, nil
}

// cmdReader reads a command's output; at its end the command's exit status
// is checked.
type cmdReader struct {
	cmd    *exec.Cmd
	name   string
	out    io.ReadCloser
	stderr limitedBuffer
	done   bool
	err    error
}

func (c *cmdReader) Read(p []byte) (int, error) {
	n, err := c.out.Read(p)
	if errors.Is(err, io.EOF) {
		if werr := c.wait(); werr != nil {
			return n, werr
		}
	}
	return n, err
}

func (c *cmdReader) wait() error {
	if !c.done {
		c.done = true
		if err := c.cmd.Wait(); err != nil {
			c.err = invalidf("%s: %v: %s", c.name, err, strings.TrimSpace(c.stderr.String()))
		}
	}
	return c.err
}

func (c *cmdReader) close() {
	if !c.done {
		c.out.Close() // the command gets EPIPE if it still writes
		_ = c.cmd.Process.Kill()
		_ = c.wait()
	}
}

// limitedBuffer keeps the first 4 KiB written to it.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := 4096 - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// tarStats counts what an extraction did.
type tarStats struct {
	entries, files, dirs, symlinks, hardlinks, nodes int
	bytes                                            int64
	skippedDevices, strippedSetuid, skippedOther     []string
	skippedXattrs                                    int
}

// extractTar extracts the (decompressed) tar stream r into dir, which must
// exist and be private to the caller. Nothing is ever written outside dir:
// every operation goes through an os.Root of dir (which refuses paths that
// resolve outside it), and in addition
//
//   - absolute member names and names with ".." that climb out are refused
//     (ErrUnsafeImage); "./" prefixes are fine;
//   - no entry is written below a symlink, even one pointing inside: the
//     parent directories of every entry must be real directories
//     (ErrUnsafeImage otherwise); symlinks are created as they are;
//   - hard links must name an earlier, non-directory member (not through a
//     symlink);
//   - devices and setuid/setgid bits follow opts.
//
// Owners (numeric uid/gid), modes and modification times are restored;
// directories get theirs once all their entries are written. A later entry
// replaces an earlier one of the same name, except that a non-empty
// directory is never replaced (ErrInvalidImage). A malformed or truncated
// archive is an error wrapping ErrInvalidImage. On error dir holds a
// partial tree: the caller removes it.
func extractTar(ctx context.Context, r io.Reader, dir string, opts TarOptions, log *slog.Logger) (tarStats, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return tarStats{}, err
	}
	defer root.Close()
	x := &extractor{root: root, opts: opts, known: map[string]bool{".": true},
		dirs: map[string]*tar.Header{}, buf: make([]byte, 256<<10)}
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return x.st, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return x.st, invalidf("tar archive truncated after %d entries", x.st.entries)
			}
			if ctx.Err() != nil {
				return x.st, ctx.Err()
			}
			return x.st, invalidf("tar archive after %d entries: %v", x.st.entries, err)
		}
		x.st.entries++
		if err := x.entry(hdr, tr); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return x.st, invalidf("tar archive truncated in entry %q", hdr.Name)
			}
			return x.st, err
		}
	}
	if err := x.finishDirs(); err != nil {
		return x.st, err
	}
	x.report(log)
	return x.st, nil
}

type extractor struct {
	root  *os.Root
	opts  TarOptions
	known map[string]bool        // real directories, verified or made by us
	dirs  map[string]*tar.Header // directory entries, attributes applied last
	buf   []byte
	st    tarStats
}

// cleanTarName turns a member name into a clean path relative to the root
// ("." for the root itself), refusing absolute and escaping names.
func cleanTarName(name string) (string, error) {
	if name == "" {
		return "", invalidf("tar entry with an empty name")
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("tar entry %q has an absolute path: refused: %w", name, ErrUnsafeImage)
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("tar entry %q escapes the root: %w", name, ErrUnsafeImage)
	}
	return c, nil
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	name, err := cleanTarName(hdr.Name)
	if err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return x.dir(name, hdr)
	//lint:ignore SA1019 old archives still use TypeRegA
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse, tar.TypeCont:
		return x.file(name, hdr, r)
	case tar.TypeSymlink:
		return x.symlink(name, hdr)
	case tar.TypeLink:
		return x.hardlink(name, hdr)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return x.node(name, hdr)
	case tar.TypeXGlobalHeader:
		return nil
	}
	x.st.skippedOther = append(x.st.skippedOther, fmt.Sprintf("%s (type %q)", name, hdr.Typeflag))
	return nil
}

// parent makes sure the directories above name are real directories,
// creating missing ones (mode 0755, root-owned, like tar does).
func (x *extractor) parent(name, entry string) error {
	return x.ensureDir(path.Dir(name), entry, true)
}

func (x *extractor) ensureDir(dir, entry string, create bool) error {
	if x.known[dir] {
		return nil
	}
	if err := x.ensureDir(path.Dir(dir), entry, create); err != nil {
		return err
	}
	fi, err := x.root.Lstat(dir)
	switch {
	case err == nil && fi.IsDir():
	case err == nil && fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("tar entry %q: %q is a symlink: writing through it is refused: %w", entry, dir, ErrUnsafeImage)
	case err == nil:
		return invalidf("tar entry %q: %q is not a directory", entry, dir)
	case errors.Is(err, fs.ErrNotExist) && create:
		if err := x.root.Mkdir(dir, 0o755); err != nil {
			return err
		}
	case errors.Is(err, fs.ErrNotExist):
		return invalidf("tar entry %q: directory %q does not exist", entry, dir)
	default:
		return err
	}
	x.known[dir] = true
	return nil
}

// clear removes what is at name before a new entry takes its place. A
// directory is kept if the new entry is one too; a non-empty directory is
// never removed. It reports whether a directory was kept.
func (x *extractor) clear(name string, keepDir bool) (bool, error) {
	fi, err := x.root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if fi.IsDir() {
		if keepDir {
			return true, nil
		}
		if err := x.root.Remove(name); err != nil {
			return false, invalidf("tar entry %q would replace a non-empty directory", name)
		}
		delete(x.known, name)
		delete(x.dirs, name)
		return false, nil
	}
	return false, x.root.Remove(name)
}

// perm returns the permission bits to set, stripping setuid/setgid from
// non-directories unless allowed.
func (x *extractor) perm(name string, hdr *tar.Header) uint32 {
	p := uint32(hdr.Mode) & 0o7777
	if p&0o6000 != 0 && hdr.Typeflag != tar.TypeDir && !x.opts.AllowSetuid {
		p &^= 0o6000
		x.st.strippedSetuid = append(x.st.strippedSetuid, name)
	}
	return p
}

func (x *extractor) dir(name string, hdr *tar.Header) error {
	if name != "." {
		if err := x.parent(name, hdr.Name); err != nil {
			return err
		}
		kept, err := x.clear(name, true)
		if err != nil {
			return err
		}
		if !kept {
			if err := x.root.Mkdir(name, 0o755); err != nil {
				return err
			}
		}
		x.known[name] = true
	}
	x.dirs[name] = hdr
	x.st.dirs++
	return nil
}

func (x *extractor) file(name string, hdr *tar.Header, r io.Reader) error {
	if name == "." {
		return invalidf("tar entry %q: a file as the root", hdr.Name)
	}
	if err := x.parent(name, hdr.Name); err != nil {
		return err
	}
	if _, err := x.clear(name, false); err != nil {
		return err
	}
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if x.opts.MaxBytes > 0 {
		r = io.LimitReader(r, x.opts.MaxBytes-x.st.bytes+1)
	}
	n, err := io.CopyBuffer(f, r, x.buf)
	x.st.bytes += n
	if err != nil {
		return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
	}
	if x.opts.MaxBytes > 0 && x.st.bytes > x.opts.MaxBytes {
		return fmt.Errorf("root tarball: more than %d bytes of files: refused: %w", x.opts.MaxBytes, ErrUnsafeImage)
	}
	fd := int(f.Fd())
	if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("tar entry %q: chown: %w", hdr.Name, err)
	}
	// After chown, which clears setuid bits and capabilities.
	if err := unix.Fchmod(fd, x.perm(name, hdr)); err != nil {
		return fmt.Errorf("tar entry %q: chmod: %w", hdr.Name, err)
	}
	if err := x.xattrs(fd, name, hdr); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	x.st.files++
	return x.times(name, hdr)
}

func (x *extractor) symlink(name string, hdr *tar.Header) error {
	if name == "." || hdr.Linkname == "" {
		return invalidf("tar entry %q: bad symlink to %q", hdr.Name, hdr.Linkname)
	}
	if err := x.parent(name, hdr.Name); err != nil {
		return err
	}
	if _, err := x.clear(name, false); err != nil {
		return err
	}
	if err := x.root.Symlink(hdr.Linkname, name); err != nil {
		return err
	}
	if err := x.root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("tar entry %q: lchown: %w", hdr.Name, err)
	}
	x.st.symlinks++
	return x.atParent(name, func(fd int, base string) error {
		return unix.UtimesNanoAt(fd, base, x.timespecs(hdr), unix.AT_SYMLINK_NOFOLLOW)
	})
}

func (x *extractor) hardlink(name string, hdr *tar.Header) error {
	if strings.HasPrefix(hdr.Linkname, "/") {
		return fmt.Errorf("tar entry %q is a hard link to %q outside the root: refused: %w", hdr.Name, hdr.Linkname, ErrUnsafeImage)
	}
	target, err := cleanTarName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("tar entry %q is a hard link to %q outside the root: refused: %w", hdr.Name, hdr.Linkname, ErrUnsafeImage)
	}
	if name == "." || target == "." {
		return invalidf("tar entry %q: hard link to %q", hdr.Name, hdr.Linkname)
	}
	if err := x.ensureDir(path.Dir(target), hdr.Name, false); err != nil {
		return err
	}
	fi, err := x.root.Lstat(target)
	if err != nil {
		return invalidf("tar entry %q: hard link target %q is not an earlier entry of the archive", hdr.Name, hdr.Linkname)
	}
	if fi.IsDir() {
		return invalidf("tar entry %q: hard link to the directory %q", hdr.Name, hdr.Linkname)
	}
	if target == name {
		return nil
	}
	if err := x.parent(name, hdr.Name); err != nil {
		return err
	}
	if _, err := x.clear(name, false); err != nil {
		return err
	}
	x.st.hardlinks++
	return x.root.Link(target, name)
}

func (x *extractor) node(name string, hdr *tar.Header) error {
	var typ uint32
	switch hdr.Typeflag {
	case tar.TypeChar:
		typ = unix.S_IFCHR
	case tar.TypeBlock:
		typ = unix.S_IFBLK
	default:
		typ = unix.S_IFIFO
	}
	if typ != unix.S_IFIFO && !x.opts.AllowDevices {
		x.st.skippedDevices = append(x.st.skippedDevices, name)
		return nil
	}
	if name == "." {
		return invalidf("tar entry %q: a device as the root", hdr.Name)
	}
	if err := x.parent(name, hdr.Name); err != nil {
		return err
	}
	if _, err := x.clear(name, false); err != nil {
		return err
	}
	perm := x.perm(name, hdr)
	dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
	if err := x.atParent(name, func(fd int, base string) error {
		if err := unix.Mknodat(fd, base, typ|perm, dev); err != nil {
			return fmt.Errorf("tar entry %q: mknod: %w", hdr.Name, err)
		}
		if err := unix.Fchownat(fd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("tar entry %q: chown: %w", hdr.Name, err)
		}
		// mknod applied the umask; chown cleared setgid.
		if err := unix.Fchmodat(fd, base, perm, 0); err != nil {
			return fmt.Errorf("tar entry %q: chmod: %w", hdr.Name, err)
		}
		return unix.UtimesNanoAt(fd, base, x.timespecs(hdr), unix.AT_SYMLINK_NOFOLLOW)
	}); err != nil {
		return err
	}
	x.st.nodes++
	return nil
}

// atParent calls fn with an fd of name's parent directory (a verified real
// directory inside the root) and name's last element.
func (x *extractor) atParent(name string, fn func(fd int, base string) error) error {
	d, err := x.root.OpenFile(path.Dir(name), os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	return fn(int(d.Fd()), path.Base(name))
}

func (x *extractor) timespecs(hdr *tar.Header) []unix.Timespec {
	at := hdr.AccessTime
	if at.IsZero() {
		at = hdr.ModTime
	}
	return []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
}

// times sets the times of name, a regular file or directory we made.
func (x *extractor) times(name string, hdr *tar.Header) error {
	at := hdr.AccessTime
	if at.IsZero() {
		at = hdr.ModTime
	}
	if hdr.ModTime.IsZero() {
		return nil
	}
	return x.root.Chtimes(name, at, hdr.ModTime)
}

// xattrs restores the extended attributes opts allow on the open fd.
func (x *extractor) xattrs(fd int, name string, hdr *tar.Header) error {
	if !x.opts.Xattrs {
		return nil
	}
	for _, k := range slices.Sorted(maps.Keys(hdr.PAXRecords)) {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		allowed := strings.HasPrefix(attr, "user.") ||
			attr == "system.posix_acl_access" || attr == "system.posix_acl_default" ||
			(attr == "security.capability" && x.opts.AllowSetuid)
		if !allowed {
			if attr == "security.capability" {
				x.st.strippedSetuid = append(x.st.strippedSetuid, name+" (file capabilities)")
			} else {
				x.st.skippedXattrs++
			}
			continue
		}
		if err := unix.Fsetxattr(fd, attr, []byte(hdr.PAXRecords[k]), 0); err != nil {
			return fmt.Errorf("tar entry %q: set xattr %s: %w", hdr.Name, attr, err)
		}
	}
	return nil
}

// finishDirs applies the directories' owners, modes, xattrs and times,
// deepest first, now that nothing will be written into them any more.
func (x *extractor) finishDirs() error {
	names := slices.Collect(maps.Keys(x.dirs))
	slices.SortFunc(names, func(a, b string) int {
		return strings.Count(b, "/") - strings.Count(a, "/")
	})
	for _, name := range names {
		hdr := x.dirs[name]
		if err := x.root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("tar entry %q: lchown: %w", hdr.Name, err)
		}
		if err := x.root.Chmod(name, fileMode(x.perm(name, hdr))); err != nil {
			return fmt.Errorf("tar entry %q: chmod: %w", hdr.Name, err)
		}
		if x.opts.Xattrs && len(hdr.PAXRecords) > 0 {
			d, err := x.root.OpenFile(name, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
			if err != nil {
				return err
			}
			err = x.xattrs(int(d.Fd()), name, hdr)
			d.Close()
			if err != nil {
				return err
			}
		}
		if err := x.times(name, hdr); err != nil {
			return err
		}
	}
	return nil
}

// fileMode converts Unix permission bits to an os.FileMode.
func fileMode(p uint32) os.FileMode {
	m := os.FileMode(p & 0o777)
	if p&unix.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if p&unix.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if p&unix.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	return m
}

func (x *extractor) report(log *slog.Logger) {
	first := func(s []string) string {
		if len(s) > 5 {
			return strings.Join(s[:5], ", ") + fmt.Sprintf(" and %d more", len(s)-5)
		}
		return strings.Join(s, ", ")
	}
	if n := len(x.st.skippedDevices); n > 0 {
		log.Warn("root tarball: device nodes skipped (device nodes are not allowed)", "count", n, "entries", first(x.st.skippedDevices))
	}
	if n := len(x.st.strippedSetuid); n > 0 {
		log.Warn("root tarball: setuid/setgid bits and file capabilities stripped (not allowed)", "count", n, "entries", first(x.st.strippedSetuid))
	}
	if n := len(x.st.skippedOther); n > 0 {
		log.Warn("root tarball: entries of unsupported types skipped", "count", n, "entries", first(x.st.skippedOther))
	}
	if x.st.skippedXattrs > 0 {
		log.Info("root tarball: extended attributes outside user.*, ACLs and capabilities skipped", "count", x.st.skippedXattrs)
	}
}

package imagebench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/lxc-agent/lxc-agent/internal/testenv"
)

// Formats are the image formats measured, in table order (buildImages
// relies on this order).
var Formats = []string{"raw", "qcow2", "tar.gz", "tar.zst"}

// MarkerPath is the file whose read makes a root filesystem "ready": both
// sides read it through the overlay.
const MarkerPath = "etc/lxc-agent-bench"

// Image is one benchmark image uploaded to Glance.
type Image struct {
	Name       string // e.g. "raw-64"
	Format     string // one of Formats
	PayloadMiB int    // incompressible payload in the tree
	DiskFormat string // Glance's disk_format
	Path       string // the local file uploaded
	Bytes      int64  // its size (what is downloaded)
	TreeBytes  int64  // apparent size of the files in the tree
	Files      int    // regular files in the tree
	ID         string // Glance image id
}

// Label is the name used in the table, e.g. "raw 64 MiB".
func (im *Image) Label() string { return fmt.Sprintf("%s %d MiB", im.Format, im.PayloadMiB) }

// diskFormat is Glance's disk_format of an image format.
func diskFormat(format string) string {
	switch format {
	case "raw", "qcow2":
		return format
	}
	return "root-tar"
}

// treeStats describes a built tree.
type treeStats struct {
	bytes int64
	files int
}

// buildTree writes a busybox root filesystem (testenv.BuildBusyboxRootfs)
// with MarkerPath and payloadMiB MiB of incompressible files into dir: half
// of the bytes in 1 MiB files (libraries), half in files of 4 to 60 KiB
// (everything else), 100 to a directory. The content comes from a ChaCha8
// stream seeded with seed, so a size always gives the same tree.
func buildTree(dir string, payloadMiB int, seed uint64) (treeStats, error) {
	var st treeStats
	if err := testenv.BuildBusyboxRootfs(dir, ""); err != nil {
		return st, err
	}
	if err := os.WriteFile(filepath.Join(dir, MarkerPath), []byte(fmt.Sprintf("imagebench %d MiB\n", payloadMiB)), 0o644); err != nil {
		return st, err
	}
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rnd := rand.NewChaCha8(key)
	sizes := rand.New(rand.NewPCG(seed, uint64(payloadMiB)))
	buf := make([]byte, 1<<20)
	write := func(rel string, n int) error {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		_, _ = rnd.Read(buf[:n])
		if err := os.WriteFile(p, buf[:n], 0o644); err != nil {
			return err
		}
		st.bytes += int64(n)
		st.files++
		return nil
	}
	total := int64(payloadMiB) << 20
	for i := 0; int64(i)<<20 < total/2; i++ {
		if err := write(fmt.Sprintf("usr/lib/imagebench/lib%04d.so", i), 1<<20); err != nil {
			return st, err
		}
	}
	for i := 0; st.bytes < total; i++ {
		n := min(4<<10+sizes.IntN(56<<10), int(total-st.bytes))
		if err := write(fmt.Sprintf("usr/share/imagebench/%03d/file%05d", i/100, i), n); err != nil {
			return st, err
		}
	}
	return st, nil
}

// ext4SizeMiB is the size of the raw image of a tree with payloadMiB MiB:
// room for the files, inode tables and the journal, plus free space as a
// cloud image has.
func ext4SizeMiB(payloadMiB int) int { return payloadMiB*5/4 + 32 }

// buildImages makes the four images of tree in dir: raw ext4
// (testenv.BuildExt4Image), qcow2 (qemu-img convert of the raw one), and
// gzip (level 1) and zstd (level 3) root tarballs with numeric owners. The
// gzip tarball (one CPU) is made while the others are.
func buildImages(ctx context.Context, tree, dir string, payloadMiB int, st treeStats) ([]*Image, error) {
	ims := make([]*Image, len(Formats))
	for i, f := range Formats {
		im := &Image{Name: fmt.Sprintf("%s-%d", f, payloadMiB), Format: f, PayloadMiB: payloadMiB,
			DiskFormat: diskFormat(f), TreeBytes: st.bytes, Files: st.files}
		switch f {
		case "raw":
			im.Path = filepath.Join(dir, im.Name+".img")
		case "qcow2":
			im.Path = filepath.Join(dir, im.Name+".qcow2")
		default:
			im.Path = filepath.Join(dir, im.Name+"."+f)
		}
		ims[i] = im
	}
	build := func(im *Image) error {
		var err error
		switch im.Format {
		case "raw":
			err = testenv.BuildExt4Image(tree, im.Path, ext4SizeMiB(payloadMiB))
		case "qcow2":
			err = run(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", ims[0].Path, im.Path)
		case "tar.gz":
			err = run(ctx, "tar", "--numeric-owner", "-I", "gzip -1", "-cf", im.Path, "-C", tree, ".")
		case "tar.zst":
			err = run(ctx, "tar", "--numeric-owner", "-I", "zstd -q -T0 -3", "-cf", im.Path, "-C", tree, ".")
		}
		if err == nil {
			var fi os.FileInfo
			if fi, err = os.Stat(im.Path); err == nil {
				im.Bytes = fi.Size()
			}
		}
		if err != nil {
			return fmt.Errorf("build %s: %w", im.Name, err)
		}
		return nil
	}
	gz := make(chan error, 1)
	go func() { gz <- build(ims[2]) }()
	var err error
	for _, im := range []*Image{ims[0], ims[1], ims[3]} {
		if err = build(im); err != nil {
			break
		}
	}
	return ims, errors.Join(err, <-gz)
}

// upload creates the image in Glance (container_format bare) and waits
// until it is active.
func upload(ctx context.Context, g *testenv.GlanceServer, im *Image) error {
	f, err := os.Open(im.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	id, err := g.CreateImage(ctx, "imagebench-"+im.Name, im.DiskFormat, "bare", f)
	if err != nil {
		return fmt.Errorf("upload %s: %w", im.Name, err)
	}
	im.ID = id
	return nil
}

// run runs a command, returning its output in the error.
func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = toolEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// output runs a command and returns its stdout.
func output(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = toolEnv()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// toolHome is HOME for the commands run (Run sets it to its work
// directory): no ~/.curlrc or ~/.jq of the user changes what they do.
var toolHome = "/nonexistent"

// toolEnv is the environment of every command: system tools only, C locale
// (bash's $EPOCHREALTIME then has a '.'), no proxies, HOME toolHome.
func toolEnv() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=" + toolHome}
}

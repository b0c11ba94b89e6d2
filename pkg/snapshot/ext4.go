package snapshot

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// WriteExt4 builds an ext4 filesystem image holding the tree under root
// (mkfs.ext4 -d keeps ownership, modes, links, devices and xattrs) and copies
// it to w. tmpDir receives the image while it is built.
func WriteExt4(ctx context.Context, root, tmpDir string, w io.Writer) error {
	used, err := treeBytes(ctx, root)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", root, err)
	}
	size := used + used/4 + 32<<20 // room for metadata and the journal
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	f, err := os.CreateTemp(tmpDir, ".snapshot-ext4-*")
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-d", root, f.Name()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("snapshot: mkfs.ext4 -d %s: %w: %s", root, err, out)
	}
	if _, err := io.Copy(w, f); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

// treeBytes sums the allocated size of the tree without crossing mounts.
func treeBytes(ctx context.Context, root string) (int64, error) {
	st, err := os.Lstat(root)
	if err != nil {
		return 0, err
	}
	dev := st.Sys().(*syscall.Stat_t).Dev
	var total int64
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		sys := info.Sys().(*syscall.Stat_t)
		if d.IsDir() && sys.Dev != dev {
			return filepath.SkipDir
		}
		total += sys.Blocks*512 + 4096
		return nil
	})
	return total, err
}

// Package snapshot captures an instance's root filesystem as the user sees
// it and uploads it to Glance as the image nova asked for.
package snapshot

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// WriteTar writes the tree under root to w as a root tarball: paths relative
// to root ("bin/busybox", no leading "/" or "rootfs/" prefix), ownership,
// modes, times, symlinks, hard links, device nodes, fifos and the
// security.capability extended attribute preserved. Sockets are skipped.
// Nested mount points are not crossed. It returns the number of entries.
func WriteTar(ctx context.Context, root string, w io.Writer) (int, error) {
	return writeTar(ctx, root, w, nil)
}

// writeTar is WriteTar with fix, if not nil, applied to every header.
func writeTar(ctx context.Context, root string, w io.Writer, fix func(*tar.Header)) (int, error) {
	st, err := os.Lstat(root)
	if err != nil {
		return 0, fmt.Errorf("snapshot %s: %w", root, err)
	}
	if !st.IsDir() {
		return 0, fmt.Errorf("snapshot %s: not a directory", root)
	}
	rootDev := st.Sys().(*syscall.Stat_t).Dev
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{} // (dev, ino) of files with nlink>1 → first name
	n := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, walkErr error) error {
		if walkErr != nil {
			return walkErr
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		sys := info.Sys().(*syscall.Stat_t)
		if info.IsDir() && sys.Dev != rootDev {
			// another filesystem mounted inside: keep the directory, not its content
			hdr, err := header(path, rel, info, sys, "")
			if err != nil {
				return err
			}
			if fix != nil {
				fix(hdr)
			}
			n++
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			return filepath.SkipDir
		}
		if info.Mode()&fs.ModeSocket != 0 {
			return nil
		}
		var linkTarget string
		if info.Mode()&fs.ModeSymlink != 0 {
			if linkTarget, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := header(path, rel, info, sys, linkTarget)
		if err != nil {
			return err
		}
		if fix != nil {
			fix(hdr)
		}
		if info.Mode().IsRegular() && sys.Nlink > 1 {
			key := [2]uint64{uint64(sys.Dev), sys.Ino}
			if first, ok := links[key]; ok {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				hdr.Size = 0
			} else {
				links[key] = hdr.Name
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		n++
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			_, err = io.CopyN(tw, f, hdr.Size)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("snapshot %s: %w", root, err)
	}
	if err := tw.Close(); err != nil {
		return n, fmt.Errorf("snapshot %s: %w", root, err)
	}
	return n, nil
}

func header(path, rel string, info fs.FileInfo, sys *syscall.Stat_t, link string) (*tar.Header, error) {
	hdr, err := tar.FileInfoHeader(info, link)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	hdr.Name = filepath.ToSlash(rel)
	if info.IsDir() {
		hdr.Name += "/"
	}
	hdr.Uid, hdr.Gid = int(sys.Uid), int(sys.Gid)
	hdr.Uname, hdr.Gname = "", ""
	hdr.ModTime = time.Unix(sys.Mtim.Sec, sys.Mtim.Nsec)
	hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
	hdr.Format = tar.FormatPAX
	if info.Mode()&(fs.ModeDevice|fs.ModeCharDevice) != 0 {
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(uint64(sys.Rdev))), int64(unix.Minor(uint64(sys.Rdev)))
	}
	if info.Mode().IsRegular() {
		if cap, err := lgetxattr(path, "security.capability"); err == nil && len(cap) > 0 {
			hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": string(cap)}
		}
	}
	return hdr, nil
}

func lgetxattr(path, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err != nil {
			if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) {
				return nil, nil
			}
			return nil, err
		}
		return buf[:n], nil
	}
}

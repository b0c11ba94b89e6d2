package rootfs

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// LocalSource serves images from files in a directory, for tests and for
// hosts without Glance. Image id X is the file <Dir>/X, <Dir>/X.img or
// <Dir>/X.raw (first that exists). If <Dir>/X.sha256 exists, it holds the
// image's SHA-256 as hex (sha256sum output is accepted) and Cache verifies
// the data against it. Images are reported as raw/bare and active.
type LocalSource struct {
	Dir string
}

var localSuffixes = []string{"", ".img", ".raw"}

func (l LocalSource) find(id string) (string, os.FileInfo, error) {
	if err := ValidateID(id); err != nil {
		return "", nil, err
	}
	for _, suf := range localSuffixes {
		p := filepath.Join(l.Dir, id+suf)
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", nil, fmt.Errorf("local image %s: %w", id, err)
		}
		if !fi.Mode().IsRegular() {
			return "", nil, fmt.Errorf("local image %s: %s is not a regular file: %w", id, p, ErrInvalidImage)
		}
		return p, fi, nil
	}
	return "", nil, fmt.Errorf("local image %s in %s: %w", id, l.Dir, ErrImageNotFound)
}

// Meta implements Source. token is ignored.
func (l LocalSource) Meta(ctx context.Context, id, token string) (ImageMeta, error) {
	if err := ctx.Err(); err != nil {
		return ImageMeta{}, err
	}
	p, fi, err := l.find(id)
	if err != nil {
		return ImageMeta{}, err
	}
	m := ImageMeta{
		ID:              id,
		Name:            filepath.Base(p),
		DiskFormat:      localDiskFormat(p),
		ContainerFormat: "bare",
		Size:            fi.Size(),
		Status:          "active",
	}
	side := filepath.Join(l.Dir, id+".sha256")
	b, err := os.ReadFile(side)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return ImageMeta{}, fmt.Errorf("local image %s: %w", id, err)
	default:
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return ImageMeta{}, fmt.Errorf("local image %s: %s is empty: %w", id, side, ErrInvalidImage)
		}
		v := strings.ToLower(f[0])
		if d, err := hex.DecodeString(v); err != nil || len(d) != 32 {
			return ImageMeta{}, fmt.Errorf("local image %s: %s does not hold a sha256 hex digest: %w", id, side, ErrInvalidImage)
		}
		m.HashAlgo, m.HashValue = "sha256", v
	}
	return m, nil
}

// Open implements Source. token is ignored. Reads fail once ctx is done.
func (l LocalSource) Open(ctx context.Context, id, token string) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, _, err := l.find(id)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("local image %s: %w", id, ErrImageNotFound)
		}
		return nil, fmt.Errorf("local image %s: %w", id, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{ctxReader{ctx, f}, f}, nil
}

// localDiskFormat names the disk_format of the file at p by its bytes.
func localDiskFormat(p string) string {
	f, err := os.Open(p)
	if err != nil {
		return DiskFormatRaw
	}
	defer f.Close()
	switch kind, _, _, _ := sniffData(f); kind {
	case dataQcow2:
		return DiskFormatQcow2
	case dataTar:
		return DiskFormatRootTar
	}
	return DiskFormatRaw
}

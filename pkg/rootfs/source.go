package rootfs

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// ImageMeta is the subset of an image's metadata this package uses. It
// mirrors the fields of Glance v2's image resource.
type ImageMeta struct {
	ID              string `json:"id"`
	Name            string `json:"name"`
	DiskFormat      string `json:"disk_format"`      // "raw", "qcow2", ...
	ContainerFormat string `json:"container_format"` // "bare", "ovf", ...
	// Checksum is Glance's legacy MD5 of the data (hex), may be empty.
	Checksum string `json:"checksum,omitempty"`
	// HashAlgo and HashValue are Glance's os_hash_algo / os_hash_value
	// ("sha512" and hex digest by default), may be empty.
	HashAlgo  string `json:"os_hash_algo,omitempty"`
	HashValue string `json:"os_hash_value,omitempty"`
	// Size of the image data in bytes; 0 if unknown.
	Size int64 `json:"size"`
	// Status is Glance's image status ("active", "queued", ...).
	Status string `json:"status"`
	// Properties are the remaining (custom) image properties, e.g.
	// "os_distro"; non-string values are JSON-encoded.
	Properties map[string]string `json:"properties,omitempty"`
}

// Source gives an image's metadata and data. token is the user's Keystone
// token; sources that need none ignore it. Implementations must be safe for
// concurrent use and must honour ctx.
type Source interface {
	// Meta returns the image's metadata; an error wrapping ErrImageNotFound
	// if the image does not exist (or is not visible with token).
	Meta(ctx context.Context, id, token string) (ImageMeta, error)
	// Open streams the image's data. The caller closes the reader.
	Open(ctx context.Context, id, token string) (io.ReadCloser, error)
}

// maxIDLen keeps <id>.json and temp names below NAME_MAX (255).
const maxIDLen = 200

// ValidateID checks that id can name a file and a mount point: 1 to 200 of
// [A-Za-z0-9._-], not starting with '.', so no '/', no "..", no characters
// that overlayfs or the mount table would need to escape. Glance image ids
// (UUIDs) always pass. The error wraps ErrInvalidImage.
func ValidateID(id string) error {
	if id == "" || len(id) > maxIDLen || id[0] == '.' || strings.Contains(id, "..") {
		return fmt.Errorf("image id %q: %w", id, ErrInvalidImage)
	}
	for _, c := range []byte(id) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("image id %q: bad character %q: %w", id, c, ErrInvalidImage)
		}
	}
	return nil
}

// Disk formats Mounter turns into a root filesystem (Glance's disk_format).
const (
	// DiskFormatRaw: a bare filesystem (ext2/3/4, xfs, btrfs, squashfs), a
	// partitioned disk (MBR or GPT) holding one, or a root tarball.
	DiskFormatRaw = "raw"
	// DiskFormatQcow2: a qcow2 image of a bare filesystem or of a
	// partitioned disk. Images with a backing file or an external data file
	// are refused (ErrUnsafeImage).
	DiskFormatQcow2 = "qcow2"
	// DiskFormatRootTar: a tarball of the root directory (nova-lxd's
	// "root-tar"), plain or compressed with gzip, bzip2, xz or zstd.
	DiskFormatRootTar = "root-tar"
)

// RootPartitionProperty is the image property naming the partition of a
// partitioned disk image that holds the root filesystem: a 1-based
// partition number as the kernel counts them (GPT entry index + 1; MBR
// primary partitions 1-4, logical partitions from 5). Without it, the
// largest partition holding a supported filesystem is used.
const RootPartitionProperty = "os_root_partition"

// CheckFormat reports whether Mounter can use an image with this metadata:
// disk_format raw, qcow2 or root-tar (or empty: the bytes decide) and
// container_format bare (or empty). Callers can use it to refuse an image
// before downloading it. Prepare checks it again, and checks that the bytes
// are what the metadata says. The error wraps ErrUnsupportedImage.
func CheckFormat(meta ImageMeta) error {
	switch df := meta.DiskFormat; df {
	case "", DiskFormatRaw, DiskFormatQcow2, DiskFormatRootTar:
	default:
		return fmt.Errorf("image %s: disk_format %q is not supported (raw, qcow2 and root-tar are): %w",
			meta.ID, df, ErrUnsupportedImage)
	}
	if cf := meta.ContainerFormat; cf != "" && cf != "bare" {
		return fmt.Errorf("image %s: container_format %q is not supported (only bare is): %w", meta.ID, cf, ErrUnsupportedImage)
	}
	return nil
}

// ctxReader fails reads once ctx is done, so that copying from a source that
// ignores contexts (a local file) still stops on cancellation.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

package rootfs

import "errors"

// Error classes. Every error this package returns for one of these reasons
// wraps the matching class with %w, so callers test with errors.Is.
var (
	// ErrImageNotFound: the image source does not know the image (Glance 404,
	// no such file in a LocalSource).
	ErrImageNotFound = errors.New("image not found")
	// ErrChecksumMismatch: the downloaded bytes do not match the hash the
	// source advertised. The partial download has been deleted.
	ErrChecksumMismatch = errors.New("image checksum mismatch")
	// ErrUnsupportedImage: the image is valid but of a format or content this
	// package cannot turn into a root filesystem (yet).
	ErrUnsupportedImage = errors.New("unsupported image")
	// ErrInvalidImage: the image id or the image's metadata is unusable
	// (bad id, image not active, malformed hash, ...).
	ErrInvalidImage = errors.New("invalid image")
	// ErrUnsafeImage: the image's content is hostile to the host: a tar entry
	// that escapes the root or writes through a symlink, a hard link to a
	// file outside, a qcow2 image with a backing file or an external data
	// file (which would make the host open a file the image names). Nothing
	// outside the image's own directories was touched.
	ErrUnsafeImage = errors.New("unsafe image")
	// ErrBaseInUse: Mounter.RemoveBase was asked to remove the base of an
	// image that an instance's overlay still uses.
	ErrBaseInUse = errors.New("image base in use")
)

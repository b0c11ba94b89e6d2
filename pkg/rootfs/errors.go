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
)

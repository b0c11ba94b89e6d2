package rootfs

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Cache keeps downloaded images in one directory: the data as <dir>/<id>
// and the metadata as <dir>/<id>.json. A file named <dir>/<id> is always
// complete and verified: downloads go to a temporary file in the same
// directory, are hashed while streaming, fsynced and then renamed.
//
// One Cache must own its directory (NewCache deletes leftover temporary
// files). It is safe for concurrent use; concurrent Fetches of one image
// download it once.
type Cache struct {
	dir   string
	src   Source
	log   *slog.Logger
	locks keyLocks
}

const partPrefix = ".part-"

// NewCache creates dir (0700) if needed and removes temporary files a
// previous process left behind.
func NewCache(dir string, src Source, logger *slog.Logger) (*Cache, error) {
	if src == nil {
		return nil, errors.New("image cache: nil source")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image cache %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("image cache: %w", err)
	}
	ents, err := os.ReadDir(abs)
	if err != nil {
		return nil, fmt.Errorf("image cache: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), partPrefix) {
			p := filepath.Join(abs, e.Name())
			if err := os.Remove(p); err != nil {
				logger.Warn("image cache: cannot remove leftover partial file", "path", p, "err", err)
			} else {
				logger.Info("image cache: removed leftover partial file", "path", p)
			}
		}
	}
	return &Cache{dir: abs, src: src, log: logger}, nil
}

// Fetch returns the path of the verified image file <dir>/<id> and the
// image's metadata, downloading both first unless cached. hit reports that
// nothing was downloaded (the data was cached; the metadata too, unless its
// .json was lost). token is passed to the Source.
//
// A hit does not ask the Source again, so it does not re-check that token
// may read the image. Errors wrap ErrInvalidImage, ErrImageNotFound or
// ErrChecksumMismatch where they apply.
func (c *Cache) Fetch(ctx context.Context, id, token string) (path string, meta ImageMeta, hit bool, err error) {
	path, meta, hit, err = c.fetch(ctx, id, token)
	if err != nil {
		return "", ImageMeta{}, false, fmt.Errorf("fetch image %s: %w", id, err)
	}
	return path, meta, hit, nil
}

func (c *Cache) fetch(ctx context.Context, id, token string) (string, ImageMeta, bool, error) {
	if err := ValidateID(id); err != nil {
		return "", ImageMeta{}, false, err
	}
	if strings.HasSuffix(id, ".json") {
		return "", ImageMeta{}, false, fmt.Errorf("image id %q ends in .json: %w", id, ErrInvalidImage)
	}
	unlock, err := c.locks.lock(ctx, id)
	if err != nil {
		return "", ImageMeta{}, false, err
	}
	defer unlock()

	path := filepath.Join(c.dir, id)
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.Mode().IsRegular():
		meta, err := c.loadMeta(id)
		if err != nil {
			c.log.Warn("image cache: cached metadata unusable, asking the source again", "image", id, "err", err)
			if meta, err = c.src.Meta(ctx, id, token); err != nil {
				return "", ImageMeta{}, false, err
			}
			if err := c.saveMeta(meta); err != nil {
				c.log.Warn("image cache: cannot save metadata", "image", id, "err", err)
			}
		}
		return path, meta, true, nil
	case err == nil:
		return "", ImageMeta{}, false, fmt.Errorf("%s is not a regular file", path)
	case !errors.Is(err, fs.ErrNotExist):
		return "", ImageMeta{}, false, err
	}

	meta, err := c.src.Meta(ctx, id, token)
	if err != nil {
		return "", ImageMeta{}, false, err
	}
	if meta.Status != "" && meta.Status != "active" {
		return "", ImageMeta{}, false, fmt.Errorf("image status is %q, not active: %w", meta.Status, ErrInvalidImage)
	}
	if err := c.download(ctx, id, token, meta, path); err != nil {
		return "", ImageMeta{}, false, err
	}
	return path, meta, false, nil
}

func (c *Cache) download(ctx context.Context, id, token string, meta ImageMeta, path string) error {
	h, algo, want, err := c.verifier(meta)
	if err != nil {
		return err
	}
	start := time.Now()
	rc, err := c.src.Open(ctx, id, token)
	if err != nil {
		return err
	}
	defer rc.Close()

	f, err := os.CreateTemp(c.dir, partPrefix+id+"-*")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	var w io.Writer = f
	if h != nil {
		w = io.MultiWriter(f, h)
	}
	var r io.Reader = ctxReader{ctx, rc}
	if meta.Size > 0 {
		r = io.LimitReader(r, meta.Size+1) // one more byte tells "too long"
	}
	n, err := io.CopyBuffer(w, r, make([]byte, 1<<20))
	if err != nil {
		return fmt.Errorf("download after %d bytes: %w", n, err)
	}
	if meta.Size > 0 && n != meta.Size {
		if n > meta.Size {
			return fmt.Errorf("download is longer than the image size %d", meta.Size)
		}
		return fmt.Errorf("download truncated: got %d bytes, image size is %d", n, meta.Size)
	}
	if h != nil {
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			return fmt.Errorf("%s expected %s, got %s: %w", algo, want, got, ErrChecksumMismatch)
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// Metadata first: a present image file implies present metadata.
	if err := c.saveMeta(meta); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	done = true
	if err := syncDir(c.dir); err != nil {
		c.log.Warn("image cache: fsync of cache directory failed", "dir", c.dir, "err", err)
	}
	c.log.Info("image cache: image downloaded", "image", id, "bytes", n,
		"verified", algo, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// verifier picks the hash to check: os_hash_algo/os_hash_value, else the
// legacy md5 checksum, else none (with a warning).
func (c *Cache) verifier(meta ImageMeta) (hash.Hash, string, string, error) {
	if meta.HashAlgo != "" || meta.HashValue != "" {
		algo := strings.ToLower(meta.HashAlgo)
		var h hash.Hash
		switch algo {
		case "sha256":
			h = sha256.New()
		case "sha384":
			h = sha512.New384()
		case "sha512":
			h = sha512.New()
		case "md5":
			h = md5.New()
		}
		if h != nil {
			want, err := hexDigest(meta.HashValue, h.Size())
			if err != nil {
				return nil, "", "", fmt.Errorf("os_hash_value for %s: %w", algo, err)
			}
			return h, algo, want, nil
		}
		c.log.Warn("image cache: unsupported os_hash_algo, falling back to the md5 checksum",
			"image", meta.ID, "os_hash_algo", meta.HashAlgo)
	}
	if meta.Checksum != "" {
		want, err := hexDigest(meta.Checksum, md5.Size)
		if err != nil {
			return nil, "", "", fmt.Errorf("checksum: %w", err)
		}
		return md5.New(), "md5", want, nil
	}
	c.log.Warn("image cache: image has no usable hash, its data will not be verified", "image", meta.ID)
	return nil, "", "", nil
}

func hexDigest(v string, size int) (string, error) {
	v = strings.ToLower(strings.TrimSpace(v))
	if b, err := hex.DecodeString(v); err != nil || len(b) != size {
		return "", fmt.Errorf("%q is not a %d-byte hex digest: %w", v, size, ErrInvalidImage)
	}
	return v, nil
}

func (c *Cache) metaPath(id string) string { return filepath.Join(c.dir, id+".json") }

func (c *Cache) loadMeta(id string) (ImageMeta, error) {
	b, err := os.ReadFile(c.metaPath(id))
	if err != nil {
		return ImageMeta{}, err
	}
	var m ImageMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return ImageMeta{}, err
	}
	if m.ID != id {
		return ImageMeta{}, fmt.Errorf("%s holds image %q", c.metaPath(id), m.ID)
	}
	return m, nil
}

func (c *Cache) saveMeta(m ImageMeta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(c.dir, partPrefix+m.ID+".json-*")
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), c.metaPath(m.ID))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("save image metadata: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

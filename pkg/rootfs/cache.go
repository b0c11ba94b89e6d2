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
	"sync"
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
//
// Size: with WithBudget, the entries (image and metadata files) are kept
// within a number of bytes by evicting the least recently used images that
// no instance uses (WithInUse, Evict); an image that cannot fit is refused
// before its data is requested (ErrImageTooLarge, ErrCacheFull). A download
// never starts when the filesystem lacks the room for it (WithMinFree adds
// a reserve). An image's last use is its file's atime, set by every Fetch:
// everything the cache knows is in its directory, so it survives restarts
// and reboots.
type Cache struct {
	dir   string
	src   Source
	log   *slog.Logger
	locks keyLocks // per image: Fetch waits, eviction only tries

	budget, minFree int64
	inUse           func(id string) bool
	derived         Derived

	evictMu sync.Mutex // serializes makeRoom
	resMu   sync.Mutex
	res     map[*reservation]struct{} // room held by downloads in progress

	now       func() time.Time
	freeSpace func(dir string) (int64, error)
}

const partPrefix = ".part-"

// NewCache creates dir (0700) if needed and removes what a previous process
// left behind: temporary files, evicted files, metadata without its image.
// A budget (WithBudget) needs WithInUse.
func NewCache(dir string, src Source, logger *slog.Logger, opts ...CacheOption) (*Cache, error) {
	if src == nil {
		return nil, errors.New("image cache: nil source")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Cache{src: src, log: logger, now: time.Now, freeSpace: statfsAvail}
	for _, o := range opts {
		o(c)
	}
	switch {
	case c.budget < 0 || c.minFree < 0:
		return nil, fmt.Errorf("image cache: negative budget (%d) or minimum free space (%d)", c.budget, c.minFree)
	case c.budget > 0 && c.inUse == nil:
		return nil, errors.New("image cache: a size budget needs an in-use function (WithInUse)")
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
	have := make(map[string]bool, len(ents))
	for _, e := range ents {
		have[e.Name()] = true
	}
	for _, e := range ents {
		name := e.Name()
		id, isMeta := strings.CutSuffix(name, ".json")
		var what string
		switch {
		case strings.HasPrefix(name, partPrefix):
			what = "partial file"
		case strings.HasPrefix(name, tombPrefix):
			what = "evicted image"
		case isMeta && ValidateID(id) == nil && !have[id] && e.Type().IsRegular():
			// A crash between writing the metadata and renaming the image
			// into place, or during an eviction.
			what = "metadata without its image"
		default:
			continue
		}
		p := filepath.Join(abs, name)
		if err := os.Remove(p); err != nil {
			logger.Warn("image cache: cannot remove leftover "+what, "path", p, "err", err)
		} else {
			logger.Info("image cache: removed leftover "+what, "path", p)
		}
	}
	c.dir = abs
	return c, nil
}

// Fetch returns the path of the verified image file <dir>/<id> and the
// image's metadata, downloading both first unless cached. hit reports that
// nothing was downloaded (the data was cached; the metadata too, unless its
// .json was lost). token is passed to the Source.
//
// A hit does not ask the Source again, so it does not re-check that token
// may read the image. Every Fetch records a use of the image (LRU).
//
// A miss first makes room (see WithBudget, WithMinFree), evicting unused
// images if it must; an image that cannot fit is refused before its data is
// requested. The returned file may be evicted as soon as the image is not
// in use: callers make it in use (an instance record) before calling Fetch.
//
// Errors wrap ErrInvalidImage, ErrImageNotFound, ErrChecksumMismatch,
// ErrImageTooLarge or ErrCacheFull where they apply.
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
		c.touch(path)
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
	if meta.Size < 0 {
		return "", ImageMeta{}, false, fmt.Errorf("image size %d: %w", meta.Size, ErrInvalidImage)
	}
	v, err := c.verifier(meta)
	if err != nil {
		return "", ImageMeta{}, false, err
	}
	side, err := encodeMeta(meta)
	if err != nil {
		return "", ImageMeta{}, false, err
	}
	need := meta.Size + int64(len(side))
	if c.budget > 0 && meta.Size > 0 && need > c.budget {
		return "", ImageMeta{}, false, fmt.Errorf("image %s is %d bytes (%d with its metadata), larger than the image cache budget of %d bytes: %w",
			id, meta.Size, need, c.budget, ErrImageTooLarge)
	}
	res, _, err := c.makeRoom(ctx, roomRequest{id: id, need: need, unknownSize: meta.Size == 0, inUse: c.inUse})
	if err != nil {
		return "", ImageMeta{}, false, err
	}
	defer c.release(res)
	if err := c.download(ctx, id, token, meta, side, v, res, path); err != nil {
		return "", ImageMeta{}, false, err
	}
	return path, meta, false, nil
}

// download streams the image into a temporary file, verifying it, and
// renames it to path. It writes at most the room res holds: meta.Size, or
// for an image of unknown size what was free when it started.
func (c *Cache) download(ctx context.Context, id, token string, meta ImageMeta, side []byte, v verifier,
	res *reservation, path string) error {
	limit, unknown := meta.Size, meta.Size == 0
	if unknown {
		limit = max(0, res.size-int64(len(side)))
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
	var w io.Writer = countingWriter{f, res}
	if v.h != nil {
		w = io.MultiWriter(w, v.h)
	}
	// One byte more than the limit tells "too long": a stream cannot
	// write more than the room reserved for it.
	r := io.LimitReader(ctxReader{ctx, rc}, limit+1)
	n, err := io.CopyBuffer(w, r, make([]byte, 1<<20))
	if err != nil {
		return fmt.Errorf("download after %d bytes: %w", n, err)
	}
	switch {
	case unknown && n > limit:
		return fmt.Errorf("image %s declares no size and its data exceeds the %d bytes of room in the image cache: %w",
			id, limit, ErrImageTooLarge)
	case !unknown && n > meta.Size:
		return fmt.Errorf("download is longer than the image size %d", meta.Size)
	case !unknown && n < meta.Size:
		return fmt.Errorf("download truncated: got %d bytes, image size is %d", n, meta.Size)
	}
	if v.h != nil {
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want {
			return fmt.Errorf("%s expected %s, got %s: %w", v.algo, v.want, got, ErrChecksumMismatch)
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// Metadata first: a present image file implies present metadata.
	if err := c.writeMeta(id, side); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(c.metaPath(id))
		return err
	}
	done = true
	c.touch(path) // last use: now, after mtime, so relatime leaves it alone
	if err := syncDir(c.dir); err != nil {
		c.log.Warn("image cache: fsync of cache directory failed", "dir", c.dir, "err", err)
	}
	c.log.Info("image cache: image downloaded", "image", id, "bytes", n,
		"verified", v.algo, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// verifier is the hash a download is checked with: h (nil for none) must
// give the hex digest want.
type verifier struct {
	h          hash.Hash
	algo, want string
}

// verifier picks the hash to check: os_hash_algo/os_hash_value, else the
// legacy md5 checksum, else none (with a warning).
func (c *Cache) verifier(meta ImageMeta) (verifier, error) {
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
				return verifier{}, fmt.Errorf("os_hash_value for %s: %w", algo, err)
			}
			return verifier{h, algo, want}, nil
		}
		c.log.Warn("image cache: unsupported os_hash_algo, falling back to the md5 checksum",
			"image", meta.ID, "os_hash_algo", meta.HashAlgo)
	}
	if meta.Checksum != "" {
		want, err := hexDigest(meta.Checksum, md5.Size)
		if err != nil {
			return verifier{}, fmt.Errorf("checksum: %w", err)
		}
		return verifier{md5.New(), "md5", want}, nil
	}
	c.log.Warn("image cache: image has no usable hash, its data will not be verified", "image", meta.ID)
	return verifier{}, nil
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

// encodeMeta gives the content of an image's metadata file.
func encodeMeta(m ImageMeta) ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode image metadata: %w", err)
	}
	return append(b, '\n'), nil
}

func (c *Cache) saveMeta(m ImageMeta) error {
	b, err := encodeMeta(m)
	if err != nil {
		return err
	}
	return c.writeMeta(m.ID, b)
}

func (c *Cache) writeMeta(id string, b []byte) error {
	f, err := os.CreateTemp(c.dir, partPrefix+id+".json-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), c.metaPath(id))
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

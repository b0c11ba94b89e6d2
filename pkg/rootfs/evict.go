package rootfs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Size errors, returned (wrapped) by Cache.Fetch before the image's data is
// requested: the cache and the host are left as they were. (An image of
// unknown size is downloaded into the room there is and deleted if it
// overflows it.)
var (
	// ErrImageTooLarge: the image does not fit in the image cache: it is
	// larger than the cache's size budget, or there is no room for it now
	// (then the error also wraps ErrCacheFull).
	ErrImageTooLarge = errors.New("image too large")
	// ErrCacheFull: the image is within the budget, but the images in use
	// or being downloaded, or the filesystem's free space (WithMinFree),
	// leave no room for it now, even after evicting every unused image.
	// Nothing was evicted. It wraps ErrImageTooLarge; unlike a plain
	// ErrImageTooLarge it may go away when instances are deleted.
	ErrCacheFull = fmt.Errorf("image cache full: %w", ErrImageTooLarge)
)

// CacheOption configures a Cache (see NewCache).
type CacheOption func(*Cache)

// WithBudget limits the bytes the cache's entries (image files and their
// metadata files) may hold; 0, the default, means unlimited. A Cache with a
// budget needs WithInUse. An image larger than the budget is refused with
// ErrImageTooLarge before its data is requested.
func WithBudget(bytes int64) CacheOption { return func(c *Cache) { c.budget = bytes } }

// WithMinFree makes Fetch refuse (or evict for) a download that would leave
// the cache's filesystem with less than bytes available (statfs f_bavail).
// Whatever the option, a download never starts when the image is larger
// than the available space.
func WithMinFree(bytes int64) CacheOption { return func(c *Cache) { c.minFree = bytes } }

// WithInUse tells the cache which images must not be evicted: inUse(id)
// reports whether an instance uses (or is being built from) image id, or
// its base is still mounted (removing a mounted image's file would not free
// its space, and an instance's base is mounted again from the file after a
// reboot). Fetch evicts unused entries, least recently used first, to make
// room for a download; without WithInUse it never evicts.
//
// inUse is called while the cache holds its eviction lock and the entry's
// lock: it must be quick and must not call the Cache nor wait for anything
// that is held across a call to Fetch or Evict.
func WithInUse(inUse func(id string) bool) CacheOption { return func(c *Cache) { c.inUse = inUse } }

// Derived is what the host keeps made from a cached image outside the cache
// directory, such as an extracted root tarball: it counts in the image's
// entry and goes with it.
type Derived interface {
	// DerivedSize is the disk space (bytes) kept for image id.
	DerivedSize(id string) int64
	// RemoveDerived deletes it; called before the image is evicted, and an
	// error keeps the image.
	RemoveDerived(ctx context.Context, id string) error
}

// WithDerived counts d's data in the budget and removes it on eviction.
func WithDerived(d Derived) CacheOption { return func(c *Cache) { c.derived = d } }

// EntryInfo describes one cached image.
type EntryInfo struct {
	ID string
	// Size is the bytes of the image file and its metadata file.
	Size int64
	// LastUsed is the time of the last Fetch of the image, or of the last
	// eviction pass that found it in use. It is the image file's atime, so
	// it survives restarts.
	LastUsed time.Time
}

// EvictReport tells what Evict did.
type EvictReport struct {
	// Evicted lists the removed entries, least recently used first.
	Evicted []EntryInfo
	// Freed is the sum of the evicted entries' sizes.
	Freed int64
	// Total is the bytes the cache's entries hold afterwards, Reserved the
	// bytes reserved by downloads in progress. Total+Reserved exceeds
	// Budget (if not 0) only if the entries in use or being fetched need it.
	Total, Reserved, Budget int64
	// InUse lists the entries kept because inUse reported them, Busy those
	// kept because a Fetch of theirs was running. Only entries examined
	// (before the budget was met) are listed.
	InUse, Busy []string
}

// tombPrefix names an evicted image file between its rename and its
// removal; NewCache removes leftovers.
const tombPrefix = ".evicted-"

// reservation is the room held by one download in progress: size bytes of
// the budget, of which written are already on disk.
type reservation struct {
	size    int64
	written atomic.Int64
}

// countingWriter counts what a download wrote into its reservation, so
// that other downloads' free-space checks do not count those bytes twice.
type countingWriter struct {
	f   *os.File
	res *reservation
}

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.res.written.Add(int64(n))
	return n, err
}

// reserved returns the bytes reserved by downloads in progress and how many
// of them are not written yet.
func (c *Cache) reserved() (total, unwritten int64) {
	c.resMu.Lock()
	defer c.resMu.Unlock()
	for r := range c.res {
		total += r.size
		unwritten += max(0, r.size-r.written.Load())
	}
	return total, unwritten
}

func (c *Cache) release(r *reservation) {
	if r == nil {
		return
	}
	c.resMu.Lock()
	delete(c.res, r)
	c.resMu.Unlock()
}

// Usage returns the bytes the cache's entries hold (image files and
// metadata files, including metadata left without an image) and the images,
// least recently used first. Downloads in progress are not counted.
func (c *Cache) Usage() (total int64, entries []EntryInfo, err error) {
	ents, err := c.scan()
	if err != nil {
		return 0, nil, fmt.Errorf("image cache usage: %w", err)
	}
	for _, e := range ents {
		total += e.size
		if e.image {
			entries = append(entries, e.info())
		}
	}
	return total, entries, nil
}

// Evict removes least recently used entries that are neither in use nor
// being fetched until the entries and the downloads in progress fit in the
// budget and the filesystem keeps its minimum free space (WithBudget,
// WithMinFree; with neither it removes nothing). inUse overrides the
// Cache's WithInUse function; one of them is required. Entries found in use
// get their last use set to now.
//
// An entry's image file is renamed away before its metadata is removed, so
// a concurrent Fetch sees either the whole entry or none. Evict reports what
// it removed; not meeting the budget because of entries in use is not an
// error (Total shows it).
func (c *Cache) Evict(ctx context.Context, inUse func(id string) bool) (EvictReport, error) {
	if inUse == nil {
		inUse = c.inUse
	}
	if inUse == nil {
		return EvictReport{}, errors.New("image cache evict: no in-use function")
	}
	_, rep, err := c.makeRoom(ctx, roomRequest{inUse: inUse, bestEffort: true})
	if err != nil {
		return rep, fmt.Errorf("image cache evict: %w", err)
	}
	return rep, nil
}

// entry is one image in the cache directory, as found by scan.
type entry struct {
	id       string
	size     int64 // st_size of the image file and the metadata file
	disk     int64 // their allocated blocks, in bytes
	lastUsed time.Time
	image    bool // the image file exists (else only its metadata does)
}

func (e entry) info() EntryInfo { return EntryInfo{ID: e.id, Size: e.size, LastUsed: e.lastUsed} }

// scan reads the cache directory: its entries, metadata-only ones first,
// then least recently used first. Temporary files, tombstones and files
// that no image id names are ignored.
func (c *Cache) scan() ([]entry, error) {
	des, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, err
	}
	byID := map[string]*entry{}
	for _, de := range des {
		name := de.Name()
		id, isMeta := strings.CutSuffix(name, ".json")
		if ValidateID(id) != nil || strings.HasSuffix(id, ".json") {
			continue
		}
		f, err := statFile(filepath.Join(c.dir, name))
		if err != nil {
			return nil, err
		}
		if !f.exists {
			continue
		}
		e := byID[id]
		if e == nil {
			e = &entry{id: id}
			byID[id] = e
		}
		e.size += f.size
		e.disk += f.disk
		if !isMeta {
			e.image, e.lastUsed = true, f.atime
		}
	}
	ents := make([]entry, 0, len(byID))
	for _, e := range byID {
		c.addDerived(e)
		ents = append(ents, *e)
	}
	slices.SortFunc(ents, func(a, b entry) int {
		if a.image != b.image {
			if a.image {
				return 1
			}
			return -1
		}
		return cmp.Or(a.lastUsed.Compare(b.lastUsed), strings.Compare(a.id, b.id))
	})
	return ents, nil
}

// statEntry reads one entry again (under its lock).
func (c *Cache) statEntry(id string) (entry, error) {
	e := entry{id: id}
	for _, p := range []string{filepath.Join(c.dir, id), c.metaPath(id)} {
		f, err := statFile(p)
		if err != nil {
			return entry{}, err
		}
		if !f.exists {
			continue
		}
		e.size += f.size
		e.disk += f.disk
		if p == filepath.Join(c.dir, id) {
			e.image, e.lastUsed = true, f.atime
		}
	}
	if e.size > 0 {
		c.addDerived(&e)
	}
	return e, nil
}

func (c *Cache) addDerived(e *entry) {
	if c.derived == nil {
		return
	}
	n := c.derived.DerivedSize(e.id)
	e.size += n
	e.disk += n
}

type fileStat struct {
	exists     bool // a regular file (symbolic links and others do not count)
	size, disk int64
	atime      time.Time
}

func statFile(p string) (fileStat, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fileStat{}, nil
		}
		return fileStat{}, &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fileStat{}, nil
	}
	sec, nsec := st.Atim.Unix()
	return fileStat{exists: true, size: st.Size, disk: st.Blocks * 512, atime: time.Unix(sec, nsec)}, nil
}

// statfsAvail is the space unprivileged users may still allocate on dir's
// filesystem.
func statfsAvail(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, &fs.PathError{Op: "statfs", Path: dir, Err: err}
	}
	avail := uint64(st.Bavail) * uint64(st.Bsize)
	if avail > math.MaxInt64 {
		return math.MaxInt64, nil
	}
	return int64(avail), nil
}

// touch records a use of the image file at path: its atime is the entry's
// last use (the mtime stays the download time).
func (c *Cache) touch(path string) {
	if err := os.Chtimes(path, c.now(), time.Time{}); err != nil {
		c.log.Warn("image cache: cannot record the use of an image", "path", path, "err", err)
	}
}

type roomRequest struct {
	id   string // the image being fetched ("" for Evict)
	need int64  // bytes the download adds: data and metadata
	// unknownSize: need is only the metadata; the reservation takes all the
	// room there is without evicting more, and the download is capped there.
	unknownSize bool
	inUse       func(id string) bool // nil: nothing may be evicted
	bestEffort  bool                 // Evict: remove what can be, never fail for lack of room
}

// makeRoom evicts least recently used entries until need more bytes fit in
// the budget and above the minimum free space, then (for a download)
// reserves them until release. If they cannot fit, it evicts nothing and
// fails with ErrCacheFull (unless bestEffort).
//
// Locking: evictMu serializes makeRoom calls, so their scans and
// reservations are consistent; entries are taken with tryLock, never
// waited for, so a Fetch holding its own image's lock (or any other) cannot
// deadlock with an eviction, and an entry being fetched is never evicted.
func (c *Cache) makeRoom(ctx context.Context, rq roomRequest) (*reservation, EvictReport, error) {
	c.evictMu.Lock()
	defer c.evictMu.Unlock()
	rep := EvictReport{Budget: c.budget}

	ents, err := c.scan()
	if err != nil {
		return nil, rep, err
	}
	var total int64
	for _, e := range ents {
		total += e.size
	}
	resTotal, resUnwritten := c.reserved()
	avail, err := c.freeSpace(c.dir)
	if err != nil {
		return nil, rep, err
	}
	free := avail - resUnwritten // what other downloads will still take
	budgetRoom := func() int64 {
		if c.budget == 0 {
			return math.MaxInt64
		}
		return c.budget - total - resTotal
	}
	fsRoom := func() int64 { return free - c.minFree }
	fits := func() bool {
		// Without a minimum, Evict leaves the free space alone; a download
		// must always fit.
		fsOK := rq.need == 0 && c.minFree == 0 || fsRoom() >= rq.need
		return budgetRoom() >= rq.need && fsOK
	}

	type pick struct {
		e      entry
		unlock func()
	}
	var picks []pick
	defer func() {
		for _, p := range picks {
			p.unlock()
		}
	}()
	now := c.now()
	for _, e := range ents {
		if fits() {
			break
		}
		if err := ctx.Err(); err != nil {
			return nil, rep, err
		}
		unlock, ok := c.locks.tryLock(e.id)
		if !ok {
			rep.Busy = append(rep.Busy, e.id)
			continue
		}
		cur, err := c.statEntry(e.id)
		if err != nil {
			unlock()
			return nil, rep, err
		}
		total += cur.size - e.size
		switch {
		case cur.size == 0: // gone meanwhile
			unlock()
			continue
		case cur.image && (rq.inUse == nil || rq.inUse(e.id)):
			if rq.inUse != nil {
				rep.InUse = append(rep.InUse, e.id)
				if err := os.Chtimes(filepath.Join(c.dir, e.id), now, time.Time{}); err != nil {
					c.log.Warn("image cache: cannot record the use of an image", "image", e.id, "err", err)
				}
			}
			unlock()
			continue
		}
		picks = append(picks, pick{cur, unlock})
		total -= cur.size
		free += cur.disk
	}

	if !fits() && !rq.bestEffort {
		// Nothing was removed: the deferred function releases the picks.
		var freeable, freeableDisk int64
		for _, p := range picks {
			freeable += p.e.size
			freeableDisk += p.e.disk
		}
		total += freeable
		rep.Total, rep.Reserved = total, resTotal
		if budgetRoom() < rq.need-freeable { // (budgetRoom may be MaxInt64)
			return nil, rep, fmt.Errorf("no room for image %s (%d bytes with its metadata): the image cache holds %d bytes "+
				"and downloads in progress reserve %d more, of a budget of %d bytes; evicting every image not in use "+
				"would free only %d bytes (images in use: %d, being fetched: %d): %w",
				rq.id, rq.need, total, resTotal, c.budget, freeable, len(rep.InUse), len(rep.Busy), ErrCacheFull)
		}
		return nil, rep, fmt.Errorf("no room for image %s (%d bytes with its metadata): the filesystem of %s has %d bytes "+
			"available, %d of them promised to downloads in progress, evicting every image not in use would free %d more, "+
			"and %d bytes must stay free: %w",
			rq.id, rq.need, c.dir, avail, resUnwritten, freeableDisk, c.minFree, ErrCacheFull)
	}

	var errs []error
	for _, p := range picks {
		if err := c.remove(ctx, p.e); err != nil {
			errs = append(errs, err)
			total += p.e.size
		} else {
			rep.Evicted = append(rep.Evicted, p.e.info())
			rep.Freed += p.e.size
			c.log.Info("image cache: evicted image", "image", p.e.id, "bytes", p.e.size,
				"last_used", p.e.lastUsed.Format(time.RFC3339), "for", rq.id)
		}
		p.unlock()
	}
	picks = nil
	if len(rep.Evicted) > 0 {
		for _, e := range rep.Evicted {
			if err := os.Remove(filepath.Join(c.dir, tombPrefix+e.ID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		if err := syncDir(c.dir); err != nil {
			c.log.Warn("image cache: fsync of cache directory failed", "dir", c.dir, "err", err)
		}
	}
	rep.Total, rep.Reserved = total, resTotal
	if err := errors.Join(errs...); err != nil {
		return nil, rep, err
	}

	if rq.need == 0 && !rq.unknownSize {
		return nil, rep, nil
	}
	r := &reservation{size: rq.need}
	if rq.unknownSize {
		r.size = max(rq.need, min(budgetRoom(), fsRoom()))
	}
	c.resMu.Lock()
	if c.res == nil {
		c.res = make(map[*reservation]struct{})
	}
	c.res[r] = struct{}{}
	c.resMu.Unlock()
	return r, rep, nil
}

// remove deletes an entry, called with its lock held: the image file is
// renamed to a tombstone (the entry disappears at once for Fetch), then the
// metadata is removed. The caller removes the tombstone.
func (c *Cache) remove(ctx context.Context, e entry) error {
	if c.derived != nil {
		if err := c.derived.RemoveDerived(ctx, e.id); err != nil {
			return fmt.Errorf("evict image %s: %w", e.id, err)
		}
	}
	if e.image {
		if err := os.Rename(filepath.Join(c.dir, e.id), filepath.Join(c.dir, tombPrefix+e.id)); err != nil &&
			!errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("evict image %s: %w", e.id, err)
		}
	}
	if err := os.Remove(c.metaPath(e.id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("evict image %s: %w", e.id, err)
	}
	return nil
}

// tryLock takes the lock for key if it is free. The returned function
// releases it and must be called exactly once.
func (k *keyLocks) tryLock(key string) (func(), bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = make(map[string]*keyLock)
	}
	l := k.m[key]
	if l == nil {
		l = &keyLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	select {
	case l.ch <- struct{}{}:
		l.refs++
		return func() {
			<-l.ch
			k.put(key, l)
		}, true
	default:
		return nil, false // held: refs > 0, the entry stays
	}
}

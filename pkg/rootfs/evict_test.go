package rootfs

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// stepClock returns times one minute apart, starting an hour from now: the
// cache stores them as atimes, and atimes later than the mtime are left
// alone by relatime when a test reads the files.
type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func newStepClock() *stepClock { return &stepClock{t: time.Now().Add(time.Hour).Truncate(time.Second)} }

func (s *stepClock) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.t = s.t.Add(time.Minute)
	return s.t
}

// inUseSet is a concurrency-safe set of image ids in use, as the agent's
// instance records would answer.
type inUseSet struct {
	mu sync.Mutex
	m  map[string]int
}

func (s *inUseSet) add(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]int{}
	}
	s.m[id]++
}

func (s *inUseSet) done(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[id]--
}

func (s *inUseSet) has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id] > 0
}

func usageIDs(t *testing.T, c *Cache) []string {
	t.Helper()
	_, ents, err := c.Usage()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range ents {
		ids = append(ids, e.ID)
	}
	return ids
}

func evictedIDs(r EvictReport) []string {
	var ids []string
	for _, e := range r.Evicted {
		ids = append(ids, e.ID)
	}
	return ids
}

func TestNewCacheOptions(t *testing.T) {
	g := newFakeGlance(t)
	never := func(string) bool { return false }
	for _, tc := range []struct {
		name string
		opts []CacheOption
		ok   bool
	}{
		{"none", nil, true},
		{"budget-without-in-use", []CacheOption{WithBudget(1 << 30)}, false},
		{"budget", []CacheOption{WithBudget(1 << 30), WithInUse(never)}, true},
		{"negative-budget", []CacheOption{WithBudget(-1), WithInUse(never)}, false},
		{"negative-min-free", []CacheOption{WithMinFree(-1)}, false},
		{"min-free-alone", []CacheOption{WithMinFree(1 << 20)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewCache(t.TempDir(), g.source(), nil, tc.opts...)
			if (err == nil) != tc.ok {
				t.Errorf("err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestBudgetRefusesTooLargeImage(t *testing.T) {
	g := newFakeGlance(t)
	g.add(imgID, randomData(5000))
	dir := t.TempDir()
	c, err := NewCache(dir, g.source(), testLogger(t), WithBudget(4096), WithInUse(func(string) bool { return false }))
	if err != nil {
		t.Fatal(err)
	}
	_, _, _, err = c.Fetch(t.Context(), imgID, "")
	if !errors.Is(err, ErrImageTooLarge) || errors.Is(err, ErrCacheFull) {
		t.Fatalf("err = %v, want ErrImageTooLarge and not ErrCacheFull", err)
	}
	t.Log(err)
	for _, s := range []string{imgID, "5000 bytes", "budget of 4096 bytes"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("message lacks %q", s)
		}
	}
	if n := g.fileReqs.Load(); n != 0 {
		t.Errorf("%d requests for the image data", n)
	}
	assertDirHolds(t, dir)
}

// lruEnv is a cache of images of entrySize bytes of data whose budget holds
// three of them, not four.
type lruEnv struct {
	g     *fakeGlance
	dir   string
	clock *stepClock
	inUse inUseSet
	data  map[string][]byte
}

const lruData = 100000

func newLRUEnv(t *testing.T, ids ...string) *lruEnv {
	e := &lruEnv{g: newFakeGlance(t), dir: t.TempDir(), clock: newStepClock(), data: map[string][]byte{}}
	for i, id := range ids {
		e.data[id] = randomData(lruData + i)
		e.g.add(id, e.data[id])
	}
	return e
}

func (e *lruEnv) cache(t *testing.T, budget int64, opts ...CacheOption) *Cache {
	t.Helper()
	opts = append([]CacheOption{WithBudget(budget), WithInUse(e.inUse.has)}, opts...)
	c, err := NewCache(e.dir, e.g.source(), testLogger(t), opts...)
	if err != nil {
		t.Fatal(err)
	}
	c.now = e.clock.Now
	return c
}

func (e *lruEnv) fetch(t *testing.T, c *Cache, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if _, _, _, err := c.Fetch(t.Context(), id, ""); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBudgetEvictsLeastRecentlyUsed(t *testing.T) {
	e := newLRUEnv(t, "img-a", "img-b", "img-c", "img-d")
	c := e.cache(t, 3*lruData+lruData/2)
	e.fetch(t, c, "img-c", "img-b", "img-a") // downloads, in another order
	e.fetch(t, c, "img-a", "img-b", "img-c") // hits: the order of last use
	if ids := usageIDs(t, c); fmt.Sprint(ids) != "[img-a img-b img-c]" {
		t.Fatalf("LRU order %v", ids)
	}
	e.inUse.add("img-a")
	reqs := e.g.fileReqs.Load()
	_, _, hit, err := c.Fetch(t.Context(), "img-d", "")
	if err != nil || hit {
		t.Fatalf("Fetch img-d: %v hit=%v", err, hit)
	}
	if e.g.fileReqs.Load() != reqs+1 {
		t.Errorf("file requests %d, want %d", e.g.fileReqs.Load(), reqs+1)
	}
	// img-a is older but in use: img-b goes.
	assertDirHolds(t, e.dir, "img-a", "img-a.json", "img-c", "img-c.json", "img-d", "img-d.json")
	// img-a was found in use: its last use is now, between img-c and img-d.
	if ids := usageIDs(t, c); fmt.Sprint(ids) != "[img-c img-a img-d]" {
		t.Errorf("LRU order after eviction %v", ids)
	}
	total, _, err := c.Usage()
	if err != nil || total > c.budget {
		t.Errorf("usage %d (budget %d), %v", total, c.budget, err)
	}
	// The evicted image comes back on demand.
	e.inUse.done("img-a")
	path, _, hit, err := c.Fetch(t.Context(), "img-b", "")
	if err != nil || hit {
		t.Fatalf("Fetch img-b again: %v hit=%v", err, hit)
	}
	if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, e.data["img-b"]) {
		t.Errorf("img-b data differs (%v)", err)
	}
	assertDirHolds(t, e.dir, "img-a", "img-a.json", "img-b", "img-b.json", "img-d", "img-d.json")
}

func TestBudgetAllInUseRefuses(t *testing.T) {
	e := newLRUEnv(t, "img-a", "img-b", "img-c")
	c := e.cache(t, 2*lruData+lruData/2)
	e.fetch(t, c, "img-a", "img-b")
	e.inUse.add("img-a")
	e.inUse.add("img-b")
	reqs := e.g.fileReqs.Load()
	_, _, _, err := c.Fetch(t.Context(), "img-c", "")
	if !errors.Is(err, ErrCacheFull) || !errors.Is(err, ErrImageTooLarge) {
		t.Fatalf("err = %v, want ErrCacheFull wrapping ErrImageTooLarge", err)
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "img-c") || !strings.Contains(err.Error(), "in use: 2") {
		t.Errorf("message lacks the image or the images in use: %v", err)
	}
	if e.g.fileReqs.Load() != reqs {
		t.Error("the data of a refused image was requested")
	}
	assertDirHolds(t, e.dir, "img-a", "img-a.json", "img-b", "img-b.json")

	// Once an instance is gone, its image makes room.
	e.inUse.done("img-a")
	e.fetch(t, c, "img-c")
	assertDirHolds(t, e.dir, "img-b", "img-b.json", "img-c", "img-c.json")
}

func TestBudgetRefusalEvictsNothing(t *testing.T) {
	// img-big fits an empty cache but not next to img-a, which is in use:
	// evicting img-b would not be enough, so img-b must stay.
	e := newLRUEnv(t, "img-a", "img-b")
	e.data["img-big"] = randomData(2 * lruData)
	e.g.add("img-big", e.data["img-big"])
	c := e.cache(t, 2*lruData+lruData/2)
	e.fetch(t, c, "img-b", "img-a")
	e.inUse.add("img-a")
	_, _, _, err := c.Fetch(t.Context(), "img-big", "")
	if !errors.Is(err, ErrCacheFull) {
		t.Fatalf("err = %v, want ErrCacheFull", err)
	}
	t.Log(err)
	assertDirHolds(t, e.dir, "img-a", "img-a.json", "img-b", "img-b.json")
	e.inUse.done("img-a")
	e.fetch(t, c, "img-big")
	assertDirHolds(t, e.dir, "img-big", "img-big.json")
}

func TestEvictAfterRestartKeepsLRUOrder(t *testing.T) {
	e := newLRUEnv(t, "img-a", "img-b", "img-c")
	c := e.cache(t, 0)
	e.fetch(t, c, "img-a", "img-b", "img-c", "img-a") // order of use: b, c, a
	total, ents, err := c.Usage()
	if err != nil || len(ents) != 3 {
		t.Fatalf("usage: %v %v", ents, err)
	}
	var sum int64
	for _, en := range ents {
		sum += en.Size
		if en.Size <= lruData || en.LastUsed.IsZero() {
			t.Errorf("entry %+v", en)
		}
	}
	if sum != total {
		t.Errorf("total %d, sum of entries %d", total, sum)
	}

	// A new agent with a budget for two images: the state comes from the
	// directory alone.
	c2 := e.cache(t, 2*lruData+lruData/2)
	if ids := usageIDs(t, c2); fmt.Sprint(ids) != "[img-b img-c img-a]" {
		t.Fatalf("LRU order after restart %v", ids)
	}
	rep, err := c2.Evict(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rep)
	if fmt.Sprint(evictedIDs(rep)) != "[img-b]" || rep.Freed != ents[0].Size ||
		rep.Total != total-rep.Freed || rep.Total > rep.Budget {
		t.Errorf("report %+v", rep)
	}
	assertDirHolds(t, e.dir, "img-a", "img-a.json", "img-c", "img-c.json")

	// Under the budget: nothing to do.
	rep, err = c2.Evict(t.Context(), func(string) bool { t.Error("inUse called"); return true })
	if err != nil || len(rep.Evicted) != 0 {
		t.Errorf("second Evict: %+v %v", rep, err)
	}
	// Without a budget, Evict removes nothing either.
	rep, err = c.Evict(t.Context(), func(string) bool { return false })
	if err != nil || len(rep.Evicted) != 0 {
		t.Errorf("Evict without budget: %+v %v", rep, err)
	}
	// A cache without WithInUse needs the function.
	c3, err := NewCache(e.dir, e.g.source(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c3.Evict(t.Context(), nil); err == nil {
		t.Error("Evict without an in-use function succeeded")
	}
}

func TestEvictSkipsInUseAndBusy(t *testing.T) {
	e := newLRUEnv(t, "img-a", "img-b", "img-c")
	c := e.cache(t, 0)
	e.fetch(t, c, "img-a", "img-b", "img-c")
	c2 := e.cache(t, lruData+lruData/2) // room for one
	// A Fetch of img-a is running:
	unlock, err := c2.locks.lock(t.Context(), "img-a")
	if err != nil {
		t.Fatal(err)
	}
	e.inUse.add("img-b")
	rep, err := c2.Evict(t.Context(), nil)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rep)
	if fmt.Sprint(evictedIDs(rep), rep.Busy, rep.InUse) != "[img-c] [img-a] [img-b]" || rep.Total <= rep.Budget {
		t.Errorf("report %+v", rep)
	}
	assertDirHolds(t, e.dir, "img-a", "img-a.json", "img-b", "img-b.json")
	// Now img-a is free and older than img-b (whose use was just recorded).
	e.inUse.done("img-b")
	rep, err = c2.Evict(t.Context(), nil)
	if err != nil || fmt.Sprint(evictedIDs(rep)) != "[img-a]" {
		t.Errorf("second Evict %+v %v", rep, err)
	}
	assertDirHolds(t, e.dir, "img-b", "img-b.json")
	if len(c2.locks.m) != 0 {
		t.Errorf("locks left: %v", c2.locks.m)
	}
}

func TestNewCacheRemovesEvictionLeftovers(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{".evicted-img-x", "img-y.json", "img-z", "img-z.json", "notes.txt", "bad id.json"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := NewCache(dir, LocalSource{Dir: dir}, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	assertDirHolds(t, dir, "bad id.json", "img-z", "img-z.json", "notes.txt")
}

// fakeFS makes a cache's free space that of a filesystem of size bytes
// holding only the cache directory.
func fakeFS(t *testing.T, size int64) func(string) (int64, error) {
	return func(dir string) (int64, error) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return 0, err
		}
		used := int64(0)
		for _, e := range ents {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(dir, e.Name()), &st); err == nil {
				used += st.Blocks * 512
			}
		}
		return size - used, nil
	}
}

func TestMinFree(t *testing.T) {
	e := newLRUEnv(t, "img-a", "img-b")
	c := e.cache(t, 0, WithMinFree(lruData/2))
	c.freeSpace = fakeFS(t, 2*lruData+lruData/3)
	e.fetch(t, c, "img-a")
	// img-b would leave less than lruData/2 free: img-a goes.
	e.fetch(t, c, "img-b")
	assertDirHolds(t, e.dir, "img-b", "img-b.json")

	e.inUse.add("img-b")
	reqs := e.g.fileReqs.Load()
	_, _, _, err := c.Fetch(t.Context(), "img-a", "")
	if !errors.Is(err, ErrCacheFull) || !strings.Contains(err.Error(), "must stay free") {
		t.Fatalf("err = %v, want ErrCacheFull for free space", err)
	}
	t.Log(err)
	if e.g.fileReqs.Load() != reqs {
		t.Error("the data of a refused image was requested")
	}
	assertDirHolds(t, e.dir, "img-b", "img-b.json")

	// The real filesystem: an image larger than the free space is refused
	// even without a budget or a minimum, and without WithInUse.
	c2, err := NewCache(t.TempDir(), e.g.source(), nil, WithMinFree(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := c2.Fetch(t.Context(), "img-a", ""); !errors.Is(err, ErrCacheFull) {
		t.Fatalf("err = %v, want ErrCacheFull", err)
	}
	if e.g.fileReqs.Load() != reqs {
		t.Error("the data of a refused image was requested")
	}
}

// genReader yields n bytes (forever if n < 0) repeating block, without
// holding them.
type genReader struct {
	block []byte
	off   int64
	n     int64
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.n >= 0 && g.off >= g.n {
		return 0, io.EOF
	}
	if g.n >= 0 && int64(len(p)) > g.n-g.off {
		p = p[:g.n-g.off]
	}
	i := int(g.off % int64(len(g.block)))
	k := copy(p, g.block[i:])
	g.off += int64(k)
	return k, nil
}

func newGen(n int64) *genReader { return &genReader{block: randomData(1<<20 + 17), n: n} }

// serveGen serves a generated body and counts the bytes it got out.
func serveGen(n int64, sent *atomic.Int64, done chan<- struct{}) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		if n >= 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		}
		buf := make([]byte, 64<<10)
		g := newGen(n)
		for {
			k, err := g.Read(buf)
			if k > 0 {
				m, werr := w.Write(buf[:k])
				sent.Add(int64(m))
				if werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
}

func TestFetchStreamCap(t *testing.T) {
	for _, tc := range []struct {
		name   string
		size   int64 // declared; 0: none
		opts   []CacheOption
		free   int64 // fake filesystem size, 0: the real one
		tooBig bool
	}{
		{"longer-than-size", 1 << 20, nil, 0, false},
		{"no-size-budget", 0, []CacheOption{WithBudget(1 << 20)}, 0, true},
		{"no-size-filesystem", 0, nil, 3 << 20, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGlance(t)
			img := g.add(imgID, nil)
			img.meta["size"] = tc.size
			if tc.size == 0 {
				img.meta["size"] = nil
			}
			img.meta["os_hash_algo"], img.meta["os_hash_value"], img.meta["checksum"] = nil, nil, nil
			var sent atomic.Int64
			done := make(chan struct{})
			img.serve = serveGen(-1, &sent, done) // endless
			dir := t.TempDir()
			opts := append([]CacheOption{WithInUse(func(string) bool { return false })}, tc.opts...)
			c, err := NewCache(dir, g.source(), testLogger(t), opts...)
			if err != nil {
				t.Fatal(err)
			}
			if tc.free > 0 {
				c.freeSpace = fakeFS(t, tc.free)
			}
			_, _, _, err = c.Fetch(t.Context(), imgID, "")
			if err == nil {
				t.Fatal("Fetch of an endless stream succeeded")
			}
			t.Log(err)
			if errors.Is(err, ErrImageTooLarge) != tc.tooBig {
				t.Errorf("errors.Is(err, ErrImageTooLarge) = %v", !tc.tooBig)
			}
			assertDirHolds(t, dir)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the server is still sending")
			}
			// The client stopped reading: only socket buffers more.
			if n := sent.Load(); n > 64<<20 {
				t.Errorf("server sent %d bytes", n)
			}
			c.resMu.Lock()
			if len(c.res) != 0 {
				t.Errorf("reservations left: %d", len(c.res))
			}
			c.resMu.Unlock()
		})
	}
}

func TestFetchUnknownSizeFits(t *testing.T) {
	g := newFakeGlance(t)
	data := randomData(300000)
	g.add(imgID, data).meta["size"] = nil
	dir := t.TempDir()
	c, err := NewCache(dir, g.source(), testLogger(t), WithBudget(1<<20), WithInUse(func(string) bool { return false }))
	if err != nil {
		t.Fatal(err)
	}
	path, _, _, err := c.Fetch(t.Context(), imgID, "")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("data differs (%v)", err)
	}
	assertDirHolds(t, dir, imgID, imgID+".json")
}

// TestEvictConcurrentFetch runs Fetches of more images than the budget
// holds, each image "in use" while its fetcher reads it, against a loop of
// Evict and Usage. Run it with -race.
func TestEvictConcurrentFetch(t *testing.T) {
	const (
		nImages  = 8
		size     = 64 << 10
		workers  = 6
		rounds   = 40
		capacity = 3
	)
	g := newFakeGlance(t)
	data := map[string][]byte{}
	var ids []string
	for i := range nImages {
		id := "img-" + strconv.Itoa(i)
		ids = append(ids, id)
		data[id] = randomData(size + i)
		g.add(id, data[id])
	}
	var inUse inUseSet
	dir := t.TempDir()
	budget := int64(capacity*size + size/2)
	c, err := NewCache(dir, g.source(), nil, WithBudget(budget), WithInUse(inUse.has))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	var wg sync.WaitGroup
	var ok, full atomic.Int32
	errs := make(chan error, workers*rounds+1000)
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for range rounds {
				id := ids[r.IntN(len(ids))]
				inUse.add(id) // the instance record exists before the image is fetched
				path, _, _, err := c.Fetch(ctx, id, "")
				switch {
				case errors.Is(err, ErrCacheFull):
					full.Add(1)
				case err != nil:
					errs <- err
				default:
					ok.Add(1)
					// In use: never evicted under our feet.
					if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, data[id]) {
						errs <- fmt.Errorf("%s: data differs (%v)", id, err)
					}
				}
				inUse.done(id)
			}
		})
	}
	stop := make(chan struct{})
	var evicted atomic.Int32
	evictDone := make(chan struct{})
	go func() {
		defer close(evictDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			rep, err := c.Evict(ctx, nil)
			if err != nil {
				errs <- err
			}
			evicted.Add(int32(len(rep.Evicted)))
			total, _, err := c.Usage()
			if err != nil {
				errs <- err
			} else if total > budget {
				errs <- fmt.Errorf("usage %d over the budget %d", total, budget)
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-evictDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("fetched %d, refused (cache full) %d, evicted %d, downloads %d", ok.Load(), full.Load(), evicted.Load(), g.fileReqs.Load())
	if ok.Load() == 0 {
		t.Error("no Fetch succeeded")
	}

	rep, err := c.Evict(ctx, nil)
	if err != nil || rep.Total > budget || rep.Reserved != 0 {
		t.Errorf("final Evict %+v %v", rep, err)
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	for _, n := range names {
		if strings.HasPrefix(n, ".") {
			t.Errorf("leftover %s", n)
		}
		if id, isMeta := strings.CutSuffix(n, ".json"); isMeta {
			if !slices.Contains(names, id) {
				t.Errorf("metadata without image: %s", n)
			}
		} else {
			if !slices.Contains(names, n+".json") {
				t.Errorf("image without metadata: %s", n)
			}
			if b, err := os.ReadFile(filepath.Join(dir, n)); err != nil || !bytes.Equal(b, data[n]) {
				t.Errorf("%s: data differs (%v)", n, err)
			}
		}
	}
	if len(c.locks.m) != 0 {
		t.Errorf("locks left: %d", len(c.locks.m))
	}
}

func TestKeyLocksTryLock(t *testing.T) {
	var k keyLocks
	unlock, ok := k.tryLock("a")
	if !ok {
		t.Fatal("tryLock of a free key failed")
	}
	if _, ok := k.tryLock("a"); ok {
		t.Fatal("tryLock of a held key succeeded")
	}
	got, released := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(released)
		u, err := k.lock(context.Background(), "a")
		if err == nil {
			close(got)
			u()
		}
	}()
	time.Sleep(20 * time.Millisecond)
	select {
	case <-got:
		t.Fatal("lock did not wait for tryLock's holder")
	default:
	}
	unlock()
	<-got
	<-released
	u, ok := k.tryLock("a")
	if !ok {
		t.Fatal("tryLock after release failed")
	}
	u()
	if len(k.m) != 0 {
		t.Errorf("keys left: %v", k.m)
	}
}

// TestFetchMemoryFlat downloads a 512 MiB image generated on the fly and
// checks that the heap does not grow with it.
func TestFetchMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 512 MiB")
	}
	const size = 512 << 20
	h := sha512.New()
	if _, err := io.Copy(h, newGen(size)); err != nil {
		t.Fatal(err)
	}
	g := newFakeGlance(t)
	img := g.add(imgID, nil)
	img.meta["size"] = size
	img.meta["os_hash_value"] = hex.EncodeToString(h.Sum(nil))
	img.meta["checksum"] = nil
	var sent atomic.Int64
	img.serve = serveGen(size, &sent, make(chan struct{}))
	dir := t.TempDir()
	c, err := NewCache(dir, g.source(), testLogger(t), WithBudget(1<<30), WithInUse(func(string) bool { return false }))
	if err != nil {
		t.Fatal(err)
	}

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	path, _, _, err := c.Fetch(t.Context(), imgID, "")
	close(stop)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Size() != size {
		t.Fatalf("cached file: %v %v", fi, err)
	}
	growth := int64(peak.Load()) - int64(base)
	t.Logf("512 MiB in %v; heap in use %d MiB before, peak %d MiB", time.Since(start).Round(time.Millisecond),
		base>>20, peak.Load()>>20)
	if growth > 32<<20 {
		t.Errorf("heap grew by %d MiB during the download", growth>>20)
	}
}

func TestFetchRecordsUseInAtime(t *testing.T) {
	e := newLRUEnv(t, "img-a")
	c := e.cache(t, 0)
	e.fetch(t, c, "img-a")
	p := filepath.Join(e.dir, "img-a")
	st0, err := statFile(p)
	if err != nil {
		t.Fatal(err)
	}
	fi0, _ := os.Stat(p)
	if !st0.atime.After(fi0.ModTime()) {
		t.Errorf("atime %v not after mtime %v", st0.atime, fi0.ModTime())
	}
	e.fetch(t, c, "img-a") // hit
	st1, _ := statFile(p)
	fi1, _ := os.Stat(p)
	if st1.atime.Sub(st0.atime) != time.Minute || !fi1.ModTime().Equal(fi0.ModTime()) {
		t.Errorf("hit: atime %v -> %v, mtime %v -> %v", st0.atime, st1.atime, fi0.ModTime(), fi1.ModTime())
	}
	_, ents, err := c.Usage()
	if err != nil || len(ents) != 1 || !ents[0].LastUsed.Equal(st1.atime) {
		t.Errorf("usage %+v %v", ents, err)
	}
}

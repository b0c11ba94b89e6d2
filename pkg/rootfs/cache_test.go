package rootfs

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeGlance is an httptest double of the two Glance v2 calls we use.
type fakeGlance struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	images map[string]*fakeImage
	tokens []string // X-Auth-Token of every request, in order

	metaReqs atomic.Int32
	fileReqs atomic.Int32
}

type fakeImage struct {
	meta map[string]any // the JSON GET /v2/images/{id} returns
	data []byte
	// serve writes the body of GET /file instead of data, if set.
	serve func(w http.ResponseWriter, r *http.Request)
}

func newFakeGlance(t *testing.T) *fakeGlance {
	g := &fakeGlance{t: t, images: map[string]*fakeImage{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/images/{id}", func(w http.ResponseWriter, r *http.Request) {
		g.metaReqs.Add(1)
		img := g.request(r)
		if img == nil {
			http.Error(w, `{"message": "No image found", "code": "404 Not Found"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(img.meta)
	})
	mux.HandleFunc("GET /v2/images/{id}/file", func(w http.ResponseWriter, r *http.Request) {
		g.fileReqs.Add(1)
		img := g.request(r)
		if img == nil {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		if img.serve != nil {
			img.serve(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(img.data)))
		w.Write(img.data)
	})
	g.srv = httptest.NewServer(mux)
	t.Cleanup(g.srv.Close)
	return g
}

func (g *fakeGlance) request(r *http.Request) *fakeImage {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.tokens = append(g.tokens, r.Header.Get("X-Auth-Token"))
	return g.images[r.PathValue("id")]
}

// add registers an image with glance-like metadata: checksum (md5) and
// os_hash_algo sha512 / os_hash_value, and returns it for tweaking.
func (g *fakeGlance) add(id string, data []byte) *fakeImage {
	md := md5.Sum(data)
	sh := sha512.Sum512(data)
	img := &fakeImage{
		data: data,
		meta: map[string]any{
			"id":               id,
			"name":             "img-" + id,
			"status":           "active",
			"disk_format":      "raw",
			"container_format": "bare",
			"size":             len(data),
			"checksum":         hex.EncodeToString(md[:]),
			"os_hash_algo":     "sha512",
			"os_hash_value":    hex.EncodeToString(sh[:]),
			"visibility":       "public",
			"min_disk":         0,
			"min_ram":          0,
			"protected":        false,
			"os_distro":        "busybox",
			"hw_foo":           "bar",
			"tags":             []string{},
			"self":             "/v2/images/" + id,
			"file":             "/v2/images/" + id + "/file",
			"schema":           "/v2/schemas/image",
			"created_at":       "2024-01-01T00:00:00Z",
			"updated_at":       "2024-01-01T00:00:00Z",
		},
	}
	g.mu.Lock()
	g.images[id] = img
	g.mu.Unlock()
	return img
}

func (g *fakeGlance) source() GlanceSource {
	return GlanceSource{Endpoint: g.srv.URL, Client: g.srv.Client()}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func randomData(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 42))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// assertCacheClean checks that dir holds exactly the given names.
func assertDirHolds(t *testing.T, dir string, want ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s holds %v, want %v", dir, got, want)
	}
}

const imgID = "5d0b2a9e-7c1e-4f7a-9b1e-3f6a2c8d9e10"

func TestFetchMissThenHit(t *testing.T) {
	g := newFakeGlance(t)
	data := randomData(3<<20 + 17)
	g.add(imgID, data)
	dir := t.TempDir()
	c, err := NewCache(dir, g.source(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()

	path, meta, hit, err := c.Fetch(ctx, imgID, "tok")
	if err != nil {
		t.Fatal(err)
	}
	if hit {
		t.Error("first Fetch reported a hit")
	}
	if path != filepath.Join(dir, imgID) {
		t.Errorf("path = %s", path)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("cached data differs (err %v)", err)
	}
	if meta.ID != imgID || meta.Name != "img-"+imgID || meta.DiskFormat != "raw" || meta.ContainerFormat != "bare" ||
		meta.Size != int64(len(data)) || meta.Status != "active" || meta.HashAlgo != "sha512" || len(meta.HashValue) != 128 ||
		len(meta.Checksum) != 32 {
		t.Errorf("meta = %+v", meta)
	}
	if meta.Properties["os_distro"] != "busybox" || meta.Properties["hw_foo"] != "bar" {
		t.Errorf("properties = %v", meta.Properties)
	}
	if err := CheckFormat(meta); err != nil {
		t.Error(err)
	}
	assertDirHolds(t, dir, imgID, imgID+".json")

	// Hit: no request at all.
	before := g.metaReqs.Load() + g.fileReqs.Load()
	path2, meta2, hit, err := c.Fetch(ctx, imgID, "tok")
	if err != nil || !hit || path2 != path {
		t.Fatalf("second Fetch: %v hit=%v path=%s", err, hit, path2)
	}
	if fmt.Sprint(meta2) != fmt.Sprint(meta) {
		t.Errorf("cached meta %+v != %+v", meta2, meta)
	}
	// A new Cache (agent restart) hits too, metadata from the .json.
	c2, err := NewCache(dir, g.source(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, meta3, hit, err := c2.Fetch(ctx, imgID, ""); err != nil || !hit || meta3.HashValue != meta.HashValue {
		t.Fatalf("Fetch after restart: %v hit=%v", err, hit)
	}
	if n := g.metaReqs.Load() + g.fileReqs.Load(); n != before {
		t.Errorf("hits made %d requests", n-before)
	}

	// Lost metadata: still a hit, metadata fetched again.
	os.Remove(filepath.Join(dir, imgID+".json"))
	if _, m, hit, err := c2.Fetch(ctx, imgID, ""); err != nil || !hit || m.ID != imgID {
		t.Fatalf("Fetch without .json: %v hit=%v", err, hit)
	}
	if g.metaReqs.Load() != 2 || g.fileReqs.Load() != 1 {
		t.Errorf("requests: meta %d file %d, want 2 and 1", g.metaReqs.Load(), g.fileReqs.Load())
	}
	assertDirHolds(t, dir, imgID, imgID+".json")
}

func TestFetchHashes(t *testing.T) {
	data := randomData(100000)
	hexOf := func(b []byte) string { return hex.EncodeToString(b) }
	s256, s512 := sha256.Sum256(data), sha512.Sum512(data)
	s384, m5 := sha512.Sum384(data), md5.Sum(data)
	for _, tc := range []struct {
		name, algo, value, checksum string
	}{
		{"sha512", "sha512", hexOf(s512[:]), ""},
		{"sha256", "sha256", hexOf(s256[:]), ""},
		{"sha384", "SHA384", strings.ToUpper(hexOf(s384[:])), ""},
		{"md5", "md5", hexOf(m5[:]), ""},
		{"legacy-checksum-only", "", "", hexOf(m5[:])},
		{"unknown-algo-falls-back-to-md5", "sha3_512", "00", hexOf(m5[:])},
		{"no-hash-at-all", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGlance(t)
			img := g.add(imgID, data)
			img.meta["os_hash_algo"], img.meta["os_hash_value"], img.meta["checksum"] = tc.algo, tc.value, tc.checksum
			if tc.algo == "" {
				img.meta["os_hash_algo"], img.meta["os_hash_value"] = nil, nil
			}
			if tc.checksum == "" {
				img.meta["checksum"] = nil
			}
			c, err := NewCache(t.TempDir(), g.source(), testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			if _, _, _, err := c.Fetch(t.Context(), imgID, ""); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestFetchChecksumMismatch(t *testing.T) {
	data := randomData(200000)
	for _, tc := range []struct{ name, field string }{
		{"sha512", "os_hash_value"},
		{"legacy-md5", "checksum"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGlance(t)
			img := g.add(imgID, data)
			bad := strings.Repeat("ab", len(img.meta[tc.field].(string))/2)
			img.meta[tc.field] = bad
			if tc.field == "checksum" {
				img.meta["os_hash_algo"], img.meta["os_hash_value"] = nil, nil
			}
			dir := t.TempDir()
			c, err := NewCache(dir, g.source(), testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			_, _, _, err = c.Fetch(t.Context(), imgID, "")
			if !errors.Is(err, ErrChecksumMismatch) {
				t.Fatalf("err = %v, want ErrChecksumMismatch", err)
			}
			if !strings.Contains(err.Error(), "expected "+bad) || !strings.Contains(err.Error(), "got ") ||
				!strings.Contains(err.Error(), imgID) {
				t.Errorf("message lacks expected/actual/id: %v", err)
			}
			t.Log(err)
			assertDirHolds(t, dir) // partial deleted, no metadata
			// Next Fetch tries again (not cached as bad).
			if _, _, _, err := c.Fetch(t.Context(), imgID, ""); !errors.Is(err, ErrChecksumMismatch) {
				t.Errorf("retry err = %v", err)
			}
			if g.fileReqs.Load() != 2 {
				t.Errorf("file requests = %d, want 2", g.fileReqs.Load())
			}
		})
	}
	t.Run("malformed-hash", func(t *testing.T) {
		g := newFakeGlance(t)
		g.add(imgID, data).meta["os_hash_value"] = "xyz"
		dir := t.TempDir()
		c, _ := NewCache(dir, g.source(), nil)
		if _, _, _, err := c.Fetch(t.Context(), imgID, ""); !errors.Is(err, ErrInvalidImage) {
			t.Fatalf("err = %v, want ErrInvalidImage", err)
		}
		assertDirHolds(t, dir)
	})
}

func TestFetchTruncated(t *testing.T) {
	data := randomData(1 << 20)
	for _, tc := range []struct {
		name  string
		serve func(w http.ResponseWriter, r *http.Request)
	}{
		{"content-length-short", func(w http.ResponseWriter, r *http.Request) {
			// Announce everything, send half, then the server closes the connection.
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.Write(data[:len(data)/2])
		}},
		{"chunked-short", func(w http.ResponseWriter, r *http.Request) {
			// A clean end of a chunked body, but shorter than the image size.
			w.Write(data[:len(data)/2])
			w.(http.Flusher).Flush()
		}},
		{"too-long", func(w http.ResponseWriter, r *http.Request) {
			w.Write(data)
			w.Write([]byte("trailing garbage"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGlance(t)
			g.add(imgID, data).serve = tc.serve
			dir := t.TempDir()
			c, _ := NewCache(dir, g.source(), testLogger(t))
			_, _, _, err := c.Fetch(t.Context(), imgID, "")
			if err == nil {
				t.Fatal("Fetch of a truncated stream succeeded")
			}
			t.Log(err)
			assertDirHolds(t, dir)
		})
	}
}

func TestFetchConcurrentDownloadsOnce(t *testing.T) {
	g := newFakeGlance(t)
	data := randomData(4 << 20)
	release := make(chan struct{})
	g.add(imgID, data).serve = func(w http.ResponseWriter, r *http.Request) {
		<-release // keep the first download in flight while the others pile up
		w.Write(data)
	}
	dir := t.TempDir()
	c, _ := NewCache(dir, g.source(), testLogger(t))
	const n = 10
	var wg sync.WaitGroup
	var hits, misses atomic.Int32
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			path, _, hit, err := c.Fetch(t.Context(), imgID, "token-"+strconv.Itoa(i))
			if err != nil {
				errs <- err
				return
			}
			if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, data) {
				errs <- fmt.Errorf("bad data at %s (%v)", path, err)
			}
			if hit {
				hits.Add(1)
			} else {
				misses.Add(1)
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if g.fileReqs.Load() != 1 || g.metaReqs.Load() != 1 {
		t.Errorf("requests: file %d meta %d, want 1 and 1", g.fileReqs.Load(), g.metaReqs.Load())
	}
	if misses.Load() != 1 || hits.Load() != n-1 {
		t.Errorf("misses %d hits %d", misses.Load(), hits.Load())
	}
	assertDirHolds(t, dir, imgID, imgID+".json")
}

func TestFetchToken(t *testing.T) {
	g := newFakeGlance(t)
	g.add(imgID, randomData(1000))
	c, _ := NewCache(t.TempDir(), g.source(), nil)
	if _, _, _, err := c.Fetch(t.Context(), imgID, "gAAAAABuser-token"); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(g.tokens) != "[gAAAAABuser-token gAAAAABuser-token]" {
		t.Errorf("X-Auth-Token per request = %q", g.tokens)
	}
	// No token: no header.
	g.tokens = nil
	if _, err := g.source().Meta(t.Context(), imgID, ""); err != nil {
		t.Fatal(err)
	}
	if len(g.tokens) != 1 || g.tokens[0] != "" {
		t.Errorf("tokens = %q, want one empty", g.tokens)
	}
}

func TestFetchNotFound(t *testing.T) {
	g := newFakeGlance(t)
	dir := t.TempDir()
	c, _ := NewCache(dir, g.source(), nil)
	_, _, _, err := c.Fetch(t.Context(), imgID, "t")
	if !errors.Is(err, ErrImageNotFound) {
		t.Fatalf("err = %v, want ErrImageNotFound", err)
	}
	t.Log(err)
	if _, err := g.source().Open(t.Context(), imgID, "t"); !errors.Is(err, ErrImageNotFound) {
		t.Errorf("Open err = %v, want ErrImageNotFound", err)
	}
	assertDirHolds(t, dir)
}

func TestFetchRejects(t *testing.T) {
	g := newFakeGlance(t)
	g.add("queued-image", randomData(10)).meta["status"] = "queued"
	dir := t.TempDir()
	c, _ := NewCache(dir, g.source(), nil)
	for _, id := range []string{"", "../etc/passwd", "a/b", "..", ".hidden", "x..y", "a b", "x.json"} {
		if _, _, _, err := c.Fetch(t.Context(), id, ""); !errors.Is(err, ErrInvalidImage) {
			t.Errorf("Fetch(%q) err = %v, want ErrInvalidImage", id, err)
		}
	}
	if n := g.metaReqs.Load(); n != 0 {
		t.Errorf("invalid ids made %d requests", n)
	}
	if _, _, _, err := c.Fetch(t.Context(), "queued-image", ""); !errors.Is(err, ErrInvalidImage) {
		t.Errorf("queued image: err = %v, want ErrInvalidImage", err)
	}
	assertDirHolds(t, dir)
}

func TestFetchCancel(t *testing.T) {
	g := newFakeGlance(t)
	data := randomData(1 << 20)
	started := make(chan struct{})
	g.add(imgID, data).serve = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Write(data[:1000])
		w.(http.Flusher).Flush()
		close(started)
		<-r.Context().Done()
	}
	dir := t.TempDir()
	c, _ := NewCache(dir, g.source(), nil)
	ctx, cancel := context.WithCancel(t.Context())
	go func() { <-started; cancel() }()
	_, _, _, err := c.Fetch(ctx, imgID, "")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	assertDirHolds(t, dir)
}

func TestNewCacheRemovesPartials(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{".part-x-123", ".part-y.json-1", "keep"} {
		os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600)
	}
	if _, err := NewCache(dir, LocalSource{Dir: dir}, nil); err != nil {
		t.Fatal(err)
	}
	assertDirHolds(t, dir, "keep")
}

func TestGlanceEndpointForms(t *testing.T) {
	g := newFakeGlance(t)
	g.add(imgID, randomData(10))
	for _, ep := range []string{g.srv.URL, g.srv.URL + "/", g.srv.URL + "/v2", g.srv.URL + "/v2/"} {
		s := GlanceSource{Endpoint: ep, Client: g.srv.Client()}
		if m, err := s.Meta(t.Context(), imgID, ""); err != nil || m.ID != imgID {
			t.Errorf("endpoint %s: %v", ep, err)
		}
	}
	if _, err := (GlanceSource{}).Meta(t.Context(), imgID, ""); err == nil {
		t.Error("empty endpoint accepted")
	}
}

func TestCheckFormat(t *testing.T) {
	for _, tc := range []struct {
		disk, container string
		ok              bool
	}{{"raw", "bare", true}, {"", "", true}, {"qcow2", "bare", true}, {"raw", "ovf", false}, {"iso", "bare", false}} {
		err := CheckFormat(ImageMeta{ID: "x", DiskFormat: tc.disk, ContainerFormat: tc.container})
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrUnsupportedImage)) {
			t.Errorf("%s/%s: %v", tc.disk, tc.container, err)
		}
	}
}

func contextWithCancel(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithCancel(t.Context())
}

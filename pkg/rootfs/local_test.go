package rootfs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestLocalSource(t *testing.T) {
	dir := t.TempDir()
	data := randomData(5000)
	sum := sha256.Sum256(data)
	write := func(name string, b []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("plain", data)
	write("withimg.img", data)
	write("withraw.raw", data)
	write("verified", data)
	write("verified.sha256", []byte(hex.EncodeToString(sum[:])+"  verified\n"))
	write("corrupt", data)
	write("corrupt.sha256", []byte(hex.EncodeToString(make([]byte, 32))+"\n"))
	write("badside", data)
	write("badside.sha256", []byte("not-hex\n"))
	os.Mkdir(filepath.Join(dir, "adir"), 0o755)

	src := LocalSource{Dir: dir}
	ctx := t.Context()
	for _, id := range []string{"plain", "withimg", "withraw", "verified"} {
		m, err := src.Meta(ctx, id, "")
		if err != nil {
			t.Fatalf("Meta(%s): %v", id, err)
		}
		if m.ID != id || m.Size != int64(len(data)) || m.DiskFormat != "raw" || m.ContainerFormat != "bare" || m.Status != "active" {
			t.Errorf("Meta(%s) = %+v", id, m)
		}
		rc, err := src.Open(ctx, id, "")
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || len(b) != len(data) {
			t.Errorf("Open(%s): %d bytes, %v", id, len(b), err)
		}
	}
	if m, _ := src.Meta(ctx, "verified", ""); m.HashAlgo != "sha256" || m.HashValue != hex.EncodeToString(sum[:]) {
		t.Errorf("sidecar not used: %+v", m)
	}
	if m, _ := src.Meta(ctx, "plain", ""); m.HashAlgo != "" {
		t.Errorf("hash without sidecar: %+v", m)
	}

	for id, want := range map[string]error{
		"missing":  ErrImageNotFound,
		"a/b":      ErrInvalidImage,
		"..":       ErrInvalidImage,
		"../plain": ErrInvalidImage,
		"":         ErrInvalidImage,
		"adir":     ErrInvalidImage,
		"badside":  ErrInvalidImage,
	} {
		if _, err := src.Meta(ctx, id, ""); !errors.Is(err, want) {
			t.Errorf("Meta(%q) err = %v, want %v", id, err, want)
		}
	}
	if _, err := src.Open(ctx, "../plain", ""); !errors.Is(err, ErrInvalidImage) {
		t.Errorf("Open(../plain) err = %v", err)
	}
	if _, err := src.Open(ctx, "missing", ""); !errors.Is(err, ErrImageNotFound) {
		t.Errorf("Open(missing) err = %v", err)
	}

	// Through the cache: the sidecar is verified.
	cdir := t.TempDir()
	c, err := NewCache(cdir, src, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, m, hit, err := c.Fetch(ctx, "verified", ""); err != nil || hit || m.HashAlgo != "sha256" {
		t.Fatalf("Fetch(verified): %v hit=%v %+v", err, hit, m)
	}
	if _, _, _, err := c.Fetch(ctx, "corrupt", ""); !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("Fetch(corrupt) err = %v, want ErrChecksumMismatch", err)
	}
	if _, _, _, err := c.Fetch(ctx, "withraw", ""); err != nil {
		t.Fatal(err)
	}
	assertDirHolds(t, cdir, "verified", "verified.json", "withraw", "withraw.json")

	// Cancelled context.
	cctx, cancel := contextWithCancel(t)
	cancel()
	if _, err := src.Meta(cctx, "plain", ""); err == nil {
		t.Error("Meta with cancelled ctx succeeded")
	}
}

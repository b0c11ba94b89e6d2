package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// tree builds a small root filesystem with every kind of entry.
func tree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "etc"), 0o700))
	must(os.WriteFile(filepath.Join(root, "bin", "tool"), []byte("#!/bin/sh\necho hi\n"), 0o4755))
	must(os.Chmod(filepath.Join(root, "bin", "tool"), 0o4755|os.ModeSetuid))
	must(os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0::/root:/bin/sh\n"), 0o644))
	must(os.Chown(filepath.Join(root, "etc", "passwd"), 1000, 1001))
	must(os.Link(filepath.Join(root, "bin", "tool"), filepath.Join(root, "bin", "tool2")))
	must(os.Symlink("tool", filepath.Join(root, "bin", "sh")))
	must(unix.Mkfifo(filepath.Join(root, "fifo"), 0o600))
	if os.Geteuid() == 0 {
		must(unix.Mknod(filepath.Join(root, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	}
	return root
}

func TestWriteTarKeepsEverything(t *testing.T) {
	root := tree(t)
	var buf bytes.Buffer
	n, err := WriteTar(context.Background(), root, &buf)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*tar.Header{}
	body := map[string]string{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(h.Name, "/") || strings.Contains(h.Name, "..") || strings.HasPrefix(h.Name, "rootfs/") {
			t.Errorf("entry %q is not relative to the root", h.Name)
		}
		got[h.Name] = h
		b, _ := io.ReadAll(tr)
		body[h.Name] = string(b)
	}
	if len(got) != n {
		t.Errorf("WriteTar reported %d entries, archive has %d", n, len(got))
	}
	if h := got["bin/tool"]; h == nil || h.Mode&0o7777 != 0o4755 || body["bin/tool"] != "#!/bin/sh\necho hi\n" {
		t.Errorf("bin/tool = %+v", h)
	}
	if h := got["bin/tool2"]; h == nil || h.Typeflag != tar.TypeLink || h.Linkname != "bin/tool" {
		t.Errorf("hard link = %+v", h)
	}
	if h := got["bin/sh"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "tool" {
		t.Errorf("symlink = %+v", h)
	}
	if h := got["etc/passwd"]; h == nil || h.Uid != 1000 || h.Gid != 1001 {
		t.Errorf("ownership = %+v", h)
	}
	if h := got["etc/"]; h == nil || h.Typeflag != tar.TypeDir || h.Mode&0o777 != 0o700 {
		t.Errorf("dir = %+v", h)
	}
	if h := got["fifo"]; h == nil || h.Typeflag != tar.TypeFifo {
		t.Errorf("fifo = %+v", h)
	}
	if os.Geteuid() == 0 {
		if h := got["null"]; h == nil || h.Typeflag != tar.TypeChar || h.Devmajor != 1 || h.Devminor != 3 {
			t.Errorf("device = %+v", h)
		}
	}
}

func TestWriteTarCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := WriteTar(ctx, tree(t), io.Discard); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
}

func TestWriteExt4(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Fatalf("mkfs.ext4 (e2fsprogs) is required: %v", err)
	}
	root := tree(t)
	out := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteExt4(context.Background(), root, t.TempDir(), f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cat, err := exec.Command("debugfs", "-R", "cat /etc/passwd", out).Output()
	if err != nil || string(cat) != "root:x:0:0::/root:/bin/sh\n" {
		t.Errorf("debugfs cat = %q, %v", cat, err)
	}
	stat, _ := exec.Command("debugfs", "-R", "stat /etc/passwd", out).CombinedOutput()
	if !strings.Contains(string(stat), "User:  1000") {
		t.Errorf("ownership lost: %s", stat)
	}
}

type fakeGlance struct {
	mu      sync.Mutex
	status  string
	patches []map[string]any
	data    []byte
	token   string
}

func (g *fakeGlance) handler(t *testing.T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.token = r.Header.Get("X-Auth-Token")
		switch {
		case r.Method == "GET" && r.URL.Path == "/v2/images/img1":
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"id": "img1", "status": g.status, "name": "snap", "disk_format": nil,
				"container_format": nil, "visibility": "private", "instance_uuid": "x"})
		case r.Method == "PATCH" && r.URL.Path == "/v2/images/img1":
			if ct := r.Header.Get("Content-Type"); ct != "application/openstack-images-v2.1-json-patch" {
				t.Errorf("patch content type %q", ct)
			}
			var ops []map[string]any
			_ = json.NewDecoder(r.Body).Decode(&ops)
			g.patches = append(g.patches, ops...)
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"id": "img1", "status": g.status})
		case r.Method == "PUT" && r.URL.Path == "/v2/images/img1/file":
			g.data, _ = io.ReadAll(r.Body)
			g.status = "active"
			w.WriteHeader(http.StatusNoContent)
		default:
			http.Error(w, "no", http.StatusNotFound)
		}
	})
}

func TestGlanceUpload(t *testing.T) {
	g := &fakeGlance{status: "queued"}
	srv := httptest.NewServer(g.handler(t))
	defer srv.Close()
	up := Glance{Endpoint: srv.URL}
	err := up.Upload(context.Background(), "tok", "img1", UploadMeta{DiskFormat: "root-tar", ContainerFormat: "bare",
		Properties: map[string]string{"image_location": "snapshot", "instance_uuid": "y"}}, strings.NewReader("DATA"))
	if err != nil {
		t.Fatal(err)
	}
	if string(g.data) != "DATA" || g.status != "active" || g.token != "tok" {
		t.Errorf("uploaded %q status %s token %q", g.data, g.status, g.token)
	}
	ops := map[string]string{}
	for _, p := range g.patches {
		ops[p["path"].(string)] = p["op"].(string) + "=" + p["value"].(string)
	}
	want := map[string]string{"/disk_format": "replace=root-tar", "/container_format": "replace=bare",
		"/image_location": "add=snapshot", "/instance_uuid": "replace=y"}
	for k, v := range want {
		if ops[k] != v {
			t.Errorf("patch %s = %q, want %q (all: %v)", k, ops[k], v, ops)
		}
	}
	// An image that is not queued any more is refused.
	if err := up.Upload(context.Background(), "tok", "img1", UploadMeta{DiskFormat: "raw"}, strings.NewReader("x")); !errors.Is(err, ErrImageNotQueued) {
		t.Errorf("active image: %v", err)
	}
}

func TestLocalDir(t *testing.T) {
	dir := t.TempDir()
	l := LocalDir{Dir: dir}
	if err := l.Upload(context.Background(), "snap1", strings.NewReader("bytes")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "snap1")); string(b) != "bytes" {
		t.Errorf("stored %q", b)
	}
	for _, bad := range []string{"snap1", "../x", ".hidden", ""} {
		if err := l.Upload(context.Background(), bad, strings.NewReader("x")); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if des, _ := os.ReadDir(dir); len(des) != 1 {
		t.Errorf("temporary files left: %v", des)
	}
}

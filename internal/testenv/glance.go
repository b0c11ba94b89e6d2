package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	glanceAPI         = "/usr/bin/glance-api"
	glanceManage      = "/usr/bin/glance-manage"
	glancePaste       = "/etc/glance/glance-api-paste.ini"
	glanceStopTimeout = 15 * time.Second
	// GlanceStartTimeout bounds StartGlance when the context has no earlier
	// deadline (db_sync plus startup; usually about 5 s in all).
	GlanceStartTimeout = 120 * time.Second
)

// GlanceDiskFormats is [image_format] disk_formats of the glance-api this
// package starts (glance's default list; it includes raw, qcow2 and root-tar).
const GlanceDiskFormats = "ami,ari,aki,vhd,vhdx,vmdk,raw,qcow2,vdi,iso,ploop,root-tar"

// GlanceServer is a private glance-api (Debian's, eventlet, 1 worker) on
// 127.0.0.1 with a sqlite database and a file store under Dir. It runs the
// default paste pipeline ("unauthenticated-context"): no keystone, every
// request gets an admin context, no token is needed.
type GlanceServer struct {
	Dir  string
	Port int
	// Startup is how long glance-api took from exec to the first answer to
	// GET /versions (db_sync not included).
	Startup time.Duration
	// DBSync is how long glance-manage db_sync took (0 when the database
	// was copied from the per-process template).
	DBSync time.Duration

	proc   *proc
	client *http.Client
}

// StartGlance writes a config under dir (created if needed), creates the
// sqlite database and starts glance-api on a free port. It returns once
// GET /versions answers.
func StartGlance(ctx context.Context, dir string) (*GlanceServer, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, GlanceStartTimeout)
		defer cancel()
	}
	for _, d := range []string{"etc", "images", "staging", "cache", "lock", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	g := &GlanceServer{Dir: dir, client: &http.Client{Timeout: 5 * time.Minute}}

	// The database does not depend on the port: create it once.
	if err := g.writeConfig(0); err != nil {
		return nil, err
	}
	if err := g.createDB(ctx); err != nil {
		return nil, err
	}

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		ps, err := FreePorts(1)
		if err != nil {
			return nil, err
		}
		g.Port = ps[0]
		if err := g.writeConfig(g.Port); err != nil {
			return nil, err
		}
		lastErr = g.start(ctx)
		if lastErr == nil {
			return g, nil
		}
		if ctx.Err() != nil || !strings.Contains(lastErr.Error(), "Address already in use") {
			break
		}
	}
	return nil, lastErr
}

func (g *GlanceServer) confPath() string { return filepath.Join(g.Dir, "etc", "glance-api.conf") }
func (g *GlanceServer) dbPath() string   { return filepath.Join(g.Dir, "glance.sqlite") }

// LogFile is glance-api's oslo log.
func (g *GlanceServer) LogFile() string { return filepath.Join(g.Dir, "log", "glance-api.log") }

func (g *GlanceServer) writeConfig(port int) error {
	conf := fmt.Sprintf(`[DEFAULT]
bind_host = 127.0.0.1
bind_port = %[2]d
workers = 1
log_file = %[1]s/log/glance-api.log
use_stderr = false
node_staging_uri = file://%[1]s/staging
image_cache_dir = %[1]s/cache

[database]
connection = sqlite:///%[1]s/glance.sqlite

[image_format]
disk_formats = %[3]s

[glance_store]
stores = file
default_store = file
filesystem_store_datadir = %[1]s/images/

[paste_deploy]
# No flavor: pipeline "glance-api", i.e. unauthenticated-context (admin
# context, roles []). Creating a public image is refused by the Zed policy;
# images get the default visibility "shared".
config_file = %[4]s

[oslo_concurrency]
lock_path = %[1]s/lock
`, g.Dir, port, GlanceDiskFormats, glancePaste)
	return os.WriteFile(g.confPath(), []byte(conf), 0o644)
}

// glanceTemplate is a db_synced glance sqlite database, made once per
// process (in a temporary dir that is removed again) and kept in memory:
// db_sync costs about 2 s.
var glanceTemplate struct {
	once sync.Once
	db   []byte
	dur  time.Duration
	err  error
}

func (g *GlanceServer) createDB(ctx context.Context) error {
	glanceTemplate.once.Do(func() {
		glanceTemplate.db, glanceTemplate.dur, glanceTemplate.err = glanceDBSync(ctx)
	})
	if glanceTemplate.err != nil {
		return glanceTemplate.err
	}
	if err := os.WriteFile(g.dbPath(), glanceTemplate.db, 0o644); err != nil {
		return err
	}
	g.DBSync = glanceTemplate.dur
	return nil
}

// glanceDBSync runs glance-manage db_sync on a new sqlite database and
// returns its contents.
func glanceDBSync(ctx context.Context) ([]byte, time.Duration, error) {
	dir, err := os.MkdirTemp("", "lxc-agent-glance-db-")
	if err != nil {
		return nil, 0, err
	}
	defer os.RemoveAll(dir)
	t := &GlanceServer{Dir: dir}
	for _, d := range []string{"etc", "log", "lock"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, 0, err
		}
	}
	if err := t.writeConfig(0); err != nil {
		return nil, 0, err
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, glanceManage, "--config-file", t.confPath(), "db_sync")
	cmd.Env = serviceEnv([]string{"OS_", "PYTHON"}, "HOME="+dir)
	out, err := cmd.CombinedOutput()
	dur := time.Since(start)
	if err != nil {
		return nil, dur, fmt.Errorf("glance-manage db_sync: %v\n%s\n%s", err, out, tailFile(t.LogFile(), 30))
	}
	b, err := os.ReadFile(t.dbPath())
	return b, dur, err
}

func (g *GlanceServer) start(ctx context.Context) error {
	start := time.Now()
	p, err := startProc("glance-api", filepath.Join(g.Dir, "log", "glance-api.out"),
		serviceEnv([]string{"OS_", "PYTHON"}, "HOME="+g.Dir),
		glanceAPI, "--config-file", g.confPath())
	if err != nil {
		return err
	}
	c := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := c.Get(g.URL() + "/versions")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode < 400 && !p.exited() {
				g.proc = p
				g.Startup = time.Since(start)
				return nil
			}
		}
		if p.exited() {
			return fmt.Errorf("%w\n%s", p.exitError(), tailFile(g.LogFile(), 30))
		}
		select {
		case <-ctx.Done():
			_ = p.stop(glanceStopTimeout)
			return fmt.Errorf("glance-api on 127.0.0.1:%d not ready: %w\n%s", g.Port, ctx.Err(), tailFile(g.LogFile(), 30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// URL returns the glance endpoint, http://127.0.0.1:PORT (no /v2).
func (g *GlanceServer) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", g.Port) }

// Pid returns the pid of the glance-api parent process, or 0.
func (g *GlanceServer) Pid() int {
	if g.proc == nil || g.proc.exited() {
		return 0
	}
	return g.proc.Pid()
}

// Stop stops glance-api and its worker (SIGTERM, then SIGKILL after 15 s).
func (g *GlanceServer) Stop() error {
	err := g.proc.stop(glanceStopTimeout)
	g.proc = nil
	return err
}

// Image is the subset of a glance v2 image the tests look at.
type Image struct {
	ID              string `json:"id"`
	Name            string `json:"name"`
	Status          string `json:"status"`
	DiskFormat      string `json:"disk_format"`
	ContainerFormat string `json:"container_format"`
	Visibility      string `json:"visibility"`
	Size            int64  `json:"size"`
	Checksum        string `json:"checksum"`
	OSHashAlgo      string `json:"os_hash_algo"`
	OSHashValue     string `json:"os_hash_value"`
}

func (g *GlanceServer) do(ctx context.Context, method, path, ctype string, body io.Reader, want ...int) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, g.URL()+path, body)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := g.client.Do(req)
	if err != nil {
		return nil, err
	}
	for _, w := range want {
		if resp.StatusCode == w {
			return resp, nil
		}
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return nil, fmt.Errorf("glance %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
}

// CreateImage creates an image (default visibility), uploads data with
// PUT /v2/images/{id}/file and waits until the image is active. data is sent
// with chunked encoding unless its length is known (bytes/strings readers,
// regular files).
func (g *GlanceServer) CreateImage(ctx context.Context, name, diskFormat, containerFormat string, data io.Reader) (string, error) {
	meta, _ := json.Marshal(map[string]string{
		"name": name, "disk_format": diskFormat, "container_format": containerFormat,
	})
	resp, err := g.do(ctx, http.MethodPost, "/v2/images", "application/json", bytes.NewReader(meta), http.StatusCreated)
	if err != nil {
		return "", err
	}
	var img Image
	err = json.NewDecoder(resp.Body).Decode(&img)
	resp.Body.Close()
	if err != nil {
		return "", fmt.Errorf("glance create image: %w", err)
	}
	if img.ID == "" {
		return "", errors.New("glance create image: no id in response")
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodPut, g.URL()+"/v2/images/"+img.ID+"/file", data)
	if err != nil {
		return img.ID, err
	}
	if f, ok := data.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
			if off, err := f.Seek(0, io.SeekCurrent); err == nil {
				req.ContentLength = st.Size() - off
				req.Body = io.NopCloser(f) // keep the caller's file open
			}
		}
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	up, err := g.client.Do(req)
	if err != nil {
		return img.ID, fmt.Errorf("glance upload %s: %w", img.ID, err)
	}
	b, _ := io.ReadAll(io.LimitReader(up.Body, 4096))
	up.Body.Close()
	if up.StatusCode != http.StatusNoContent {
		return img.ID, fmt.Errorf("glance upload %s: %s: %s", img.ID, up.Status, bytes.TrimSpace(b))
	}

	for {
		cur, err := g.GetImage(ctx, img.ID)
		if err != nil {
			return img.ID, err
		}
		switch cur.Status {
		case "active":
			return img.ID, nil
		case "killed", "deleted", "pending_delete":
			return img.ID, fmt.Errorf("glance image %s went %s", img.ID, cur.Status)
		}
		select {
		case <-ctx.Done():
			return img.ID, fmt.Errorf("glance image %s still %s: %w", img.ID, cur.Status, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// QueueImage creates an image record without data, as nova-api does before
// it casts snapshot_instance: status "queued", no formats.
func (g *GlanceServer) QueueImage(ctx context.Context, name string, props map[string]string) (string, error) {
	body := map[string]string{"name": name}
	for k, v := range props {
		body[k] = v
	}
	meta, _ := json.Marshal(body)
	resp, err := g.do(ctx, http.MethodPost, "/v2/images", "application/json", bytes.NewReader(meta), http.StatusCreated)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var img Image
	if err := json.NewDecoder(resp.Body).Decode(&img); err != nil {
		return "", fmt.Errorf("glance queue image: %w", err)
	}
	return img.ID, nil
}

// GetImage returns GET /v2/images/{id}.
func (g *GlanceServer) GetImage(ctx context.Context, id string) (*Image, error) {
	resp, err := g.do(ctx, http.MethodGet, "/v2/images/"+id, "", nil, http.StatusOK)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var img Image
	if err := json.NewDecoder(resp.Body).Decode(&img); err != nil {
		return nil, fmt.Errorf("glance get image %s: %w", id, err)
	}
	return &img, nil
}

// DownloadImage returns the image data (GET /v2/images/{id}/file).
func (g *GlanceServer) DownloadImage(ctx context.Context, id string) ([]byte, error) {
	resp, err := g.do(ctx, http.MethodGet, "/v2/images/"+id+"/file", "", nil, http.StatusOK)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// DeleteImage deletes an image.
func (g *GlanceServer) DeleteImage(ctx context.Context, id string) error {
	resp, err := g.do(ctx, http.MethodDelete, "/v2/images/"+id, "", nil, http.StatusNoContent)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// StartGlanceT starts a private glance-api under t.TempDir() and stops it
// with t.Cleanup (printing its log when the test failed).
func StartGlanceT(t testing.TB) *GlanceServer {
	t.Helper()
	g, err := StartGlance(context.Background(), t.TempDir())
	if err != nil {
		t.Fatalf("start glance: %v", err)
	}
	t.Logf("glance-api ready at %s in %.1fs (db_sync %.1fs, pid %d)", g.URL(), g.Startup.Seconds(), g.DBSync.Seconds(), g.Pid())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("glance logs:\n%s", tailFile(g.LogFile(), 40))
		}
		if err := g.Stop(); err != nil {
			t.Errorf("stop glance: %v", err)
		}
	})
	return g
}

// Glance is StartGlanceT: a private glance-api for the test, stopped by
// t.Cleanup. (The type is GlanceServer: Go does not allow a type and a
// function both named Glance.)
func Glance(t testing.TB) *GlanceServer { return StartGlanceT(t) }

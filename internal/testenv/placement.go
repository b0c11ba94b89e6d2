package testenv

import (
	"context"
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
	placementWSGI        = "/usr/bin/placement-api"
	placementManage      = "/usr/bin/placement-manage"
	uwsgiBin             = "/usr/bin/uwsgi"
	placementStopTimeout = 15 * time.Second
	// PlacementStartTimeout bounds StartPlacement when the context has no
	// earlier deadline (db sync plus uwsgi startup; usually 3-6 s in all).
	PlacementStartTimeout = 120 * time.Second
	// PlacementToken is the X-Auth-Token placement's noauth2 middleware
	// accepts as user "admin" of project "admin" (which gets the admin role).
	PlacementToken = "admin:admin"
)

// PlacementServer is a private placement-api (Debian's, under uwsgi with
// /usr/bin/placement-api as the wsgi file) on 127.0.0.1 with
// [api] auth_strategy = noauth2: every request needs
// "X-Auth-Token: admin:admin" (Token()). Config, logs and (for sqlite) the
// database are under Dir.
type PlacementServer struct {
	Dir  string
	Port int
	// DBURL is the oslo.db URL of [placement_database] connection.
	DBURL string
	// Startup is how long uwsgi took from exec to the first 200 answer to
	// GET / (db sync not included).
	Startup time.Duration
	// DBSync is how long placement-manage db sync took (0 when the sqlite
	// database was copied from the per-process template).
	DBSync time.Duration

	processes int // uwsgi workers
	debug     bool
	proc      *proc
}

// StartPlacement writes a config under dir (created if needed), syncs the
// database dbURL (an oslo.db URL such as MariaDB.DSN("placement"); "" means a
// sqlite database dir/placement.sqlite) and starts placement-api under uwsgi
// on a free port. It returns once GET / answers 200.
func StartPlacement(ctx context.Context, dir, dbURL string) (*PlacementServer, error) {
	return startPlacement(ctx, dir, dbURL, false)
}

// startPlacement is StartPlacement, with debug logging if debug is set.
func startPlacement(ctx context.Context, dir, dbURL string, debug bool) (*PlacementServer, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, PlacementStartTimeout)
		defer cancel()
	}
	for _, d := range []string{"etc", "log", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	p := &PlacementServer{Dir: dir, DBURL: dbURL, debug: debug}
	if dbURL == "" {
		p.DBURL = "sqlite:///" + p.sqlitePath()
	}
	// With sqlite, one worker: each worker syncs the trait and resource
	// class tables when it loads the app, and two at once fail with
	// "(sqlite3.OperationalError) database is locked".
	p.processes = 2
	if dbURL == "" {
		p.processes = 1
	}
	if err := p.writeConfig(0); err != nil {
		return nil, err
	}
	if err := p.createDB(ctx, dbURL == ""); err != nil {
		return nil, err
	}

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		ps, err := FreePorts(1)
		if err != nil {
			return nil, err
		}
		p.Port = ps[0]
		if err := p.writeConfig(p.Port); err != nil {
			return nil, err
		}
		lastErr = p.start(ctx)
		if lastErr == nil {
			return p, nil
		}
		if ctx.Err() != nil || !strings.Contains(lastErr.Error(), "Address already in use") {
			break
		}
	}
	return nil, lastErr
}

func (p *PlacementServer) confDir() string  { return filepath.Join(p.Dir, "etc") }
func (p *PlacementServer) confPath() string { return filepath.Join(p.confDir(), "placement.conf") }
func (p *PlacementServer) uwsgiPath() string {
	return filepath.Join(p.confDir(), "placement-uwsgi.ini")
}
func (p *PlacementServer) sqlitePath() string { return filepath.Join(p.Dir, "placement.sqlite") }

// LogFile is placement-api's oslo log.
func (p *PlacementServer) LogFile() string { return filepath.Join(p.Dir, "log", "placement-api.log") }

// uwsgiLog is uwsgi's own output (startup, bind errors, tracebacks that
// happen before oslo.log is set up).
func (p *PlacementServer) uwsgiLog() string { return filepath.Join(p.Dir, "log", "placement-api.out") }

func (p *PlacementServer) writeConfig(port int) error {
	conf := fmt.Sprintf(`[DEFAULT]
debug = %[3]s
log_file = %[1]s
use_stderr = False

[api]
# No keystone: "X-Auth-Token: user:project" is the identity.
auth_strategy = noauth2

[placement_database]
connection = %[2]s
`, p.LogFile(), p.DBURL, pyBool(p.debug))
	if err := os.WriteFile(p.confPath(), []byte(conf), 0o644); err != nil {
		return err
	}
	ini := fmt.Sprintf(`[uwsgi]
plugins = python3
http-socket = 127.0.0.1:%[1]d
master = true
processes = %[4]d
threads = 4
enable-threads = true
lazy-apps = true
die-on-term = true
no-orphans = true
need-app = true
buffer-size = 65535
http-auto-chunked = true
http-chunked-input = true
http-raw-body = true
wsgi-manage-chunked-input = true
add-header = Connection: close
# Without this, workers may segfault in Py_FinalizeEx when uwsgi stops them.
skip-atexit-teardown = true
chdir = %[2]s
wsgi-file = %[3]s
`, port, filepath.Join(p.Dir, "run"), placementWSGI, max(p.processes, 1))
	return os.WriteFile(p.uwsgiPath(), []byte(ini), 0o644)
}

// pyBool formats b for an oslo.config file.
func pyBool(b bool) string {
	if b {
		return "True"
	}
	return "False"
}

// placementTemplate is a db-synced placement sqlite database, made once per
// process and kept in memory: db sync costs a few seconds.
var placementTemplate struct {
	once sync.Once
	db   []byte
	dur  time.Duration
	err  error
}

func (p *PlacementServer) createDB(ctx context.Context, sqlite bool) error {
	if !sqlite {
		start := time.Now()
		err := placementDBSync(ctx, p.confPath(), p.Dir)
		p.DBSync = time.Since(start)
		return err
	}
	placementTemplate.once.Do(func() {
		placementTemplate.db, placementTemplate.dur, placementTemplate.err = placementSqliteTemplate(ctx)
	})
	if placementTemplate.err != nil {
		return placementTemplate.err
	}
	if err := os.WriteFile(p.sqlitePath(), placementTemplate.db, 0o644); err != nil {
		return err
	}
	p.DBSync = placementTemplate.dur
	return nil
}

// placementSqliteTemplate runs placement-manage db sync on a new sqlite
// database (in a temporary dir that is removed again) and returns its contents.
func placementSqliteTemplate(ctx context.Context) ([]byte, time.Duration, error) {
	dir, err := os.MkdirTemp("", "lxc-agent-placement-db-")
	if err != nil {
		return nil, 0, err
	}
	defer os.RemoveAll(dir)
	t := &PlacementServer{Dir: dir}
	t.DBURL = "sqlite:///" + t.sqlitePath()
	for _, d := range []string{"etc", "log", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, 0, err
		}
	}
	if err := t.writeConfig(0); err != nil {
		return nil, 0, err
	}
	start := time.Now()
	if err := placementDBSync(ctx, t.confPath(), dir); err != nil {
		return nil, time.Since(start), err
	}
	dur := time.Since(start)
	b, err := os.ReadFile(t.sqlitePath())
	return b, dur, err
}

func placementDBSync(ctx context.Context, conf, home string) error {
	cmd := exec.CommandContext(ctx, placementManage, "--config-file", conf, "db", "sync")
	cmd.Env = serviceEnv([]string{"OS_", "PYTHON"}, "HOME="+home)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("placement-manage db sync: %w\n%s", err, out)
	}
	return nil
}

func (p *PlacementServer) start(ctx context.Context) error {
	start := time.Now()
	pr, err := startProc("placement-api", p.uwsgiLog(),
		serviceEnv([]string{"OS_", "PYTHON", "UWSGI_"}, "HOME="+p.Dir, "OS_PLACEMENT_CONFIG_DIR="+p.confDir()),
		uwsgiBin, "--ini", p.uwsgiPath())
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, pr, p.URL()+"/", nil, p.LogFile()); err != nil {
		return fmt.Errorf("placement-api on 127.0.0.1:%d: %w", p.Port, err)
	}
	p.proc = pr
	p.Startup = time.Since(start)
	return nil
}

// waitHTTP polls GET url (with the given headers) until it answers with a
// status below 400. If the process exits first, or ctx ends, pr is stopped
// and the error carries the tail of its output and of the extra logs.
func waitHTTP(ctx context.Context, pr *proc, url string, hdr map[string]string, logs ...string) error {
	c := &http.Client{Timeout: 5 * time.Second}
	tails := func() string {
		var b strings.Builder
		for _, l := range logs {
			b.WriteString("\n")
			b.WriteString(tailFile(l, 30))
		}
		return b.String()
	}
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode < 400 && !pr.exited() {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if pr.exited() {
			_ = pr.stop(placementStopTimeout) // reap what is left of its tree
			return fmt.Errorf("%w: %w%s", errExited, pr.exitError(), tails())
		}
		select {
		case <-ctx.Done():
			_ = pr.stop(placementStopTimeout)
			return fmt.Errorf("not ready (last answer to GET %s: %s): %w\n%s%s",
				url, last, ctx.Err(), tailFile(pr.logPath, 30), tails())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// URL returns the placement endpoint, http://127.0.0.1:PORT.
func (p *PlacementServer) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", p.Port) }

// Token returns the X-Auth-Token to send (noauth2 "user:project").
func (p *PlacementServer) Token() string { return PlacementToken }

// Pid returns the pid of the uwsgi master process, or 0.
func (p *PlacementServer) Pid() int {
	if p.proc == nil || p.proc.exited() {
		return 0
	}
	return p.proc.Pid()
}

// Stop stops uwsgi and its workers (SIGTERM, then SIGKILL after 15 s). The
// database and logs are left in place.
func (p *PlacementServer) Stop() error {
	err := p.proc.stop(placementStopTimeout)
	p.proc = nil
	return err
}

// StartPlacementT starts a private placement-api with a sqlite database
// under t.TempDir() and stops it with t.Cleanup (printing its logs when the
// test failed).
func StartPlacementT(t testing.TB) *PlacementServer {
	t.Helper()
	p, err := StartPlacement(context.Background(), t.TempDir(), "")
	if err != nil {
		t.Fatalf("start placement: %v", err)
	}
	t.Logf("placement-api ready at %s in %.1fs (db sync %.1fs, pid %d)", p.URL(), p.Startup.Seconds(), p.DBSync.Seconds(), p.Pid())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("placement logs:\n%s\n%s", tailFile(p.uwsgiLog(), 20), tailFile(p.LogFile(), 40))
		}
		if err := p.Stop(); err != nil {
			t.Errorf("stop placement: %v", err)
		}
	})
	return p
}

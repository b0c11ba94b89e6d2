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
	"syscall"
	"testing"
	"time"
)

const (
	novaManage        = "/usr/bin/nova-manage"
	novaConductor     = "/usr/bin/nova-conductor"
	novaScheduler     = "/usr/bin/nova-scheduler"
	novaAPIWSGI       = "/usr/bin/nova-api-wsgi"
	novaAPIPaste      = "/etc/nova/api-paste.ini"
	novaStopTimeout   = 20 * time.Second
	novaGracefulStop  = 5 // [DEFAULT] graceful_shutdown_timeout, seconds
	novaPollInterval  = 200 * time.Millisecond
	novaClientTimeout = 2 * time.Minute
	// NovaStartTimeout bounds StartNova when the context has no earlier
	// deadline.
	NovaStartTimeout = 4 * time.Minute
	// NovaMicroversion is the compute API microversion the client sends
	// (Zed's maximum is 2.93; "networks": "none" needs 2.37 or later).
	NovaMicroversion = "2.90"
	// NovaControlHost is [DEFAULT] host of nova-api, nova-conductor and
	// nova-scheduler (the host of their os-services records).
	NovaControlHost = "controller"
)

// novaAuthHeaders are the trusted identity headers nova-api's keystone
// pipeline (without authtoken) turns into the request context.
var novaAuthHeaders = map[string]string{
	"X-Auth-Token":      PlacementToken,
	"X-User-Id":         "admin",
	"X-User-Name":       "admin",
	"X-Project-Id":      "admin",
	"X-Project-Name":    "admin",
	"X-Roles":           "admin,member,reader",
	"X-Identity-Status": "Confirmed",
}

// NovaOptions configures StartNova.
type NovaOptions struct {
	// Dir holds everything: configs (etc/), logs (log/), the mariadb and
	// placement state, nova's state_path and per-compute directories. It is
	// created if needed and never removed; it must not hold an earlier
	// control plane.
	Dir string
	// TransportURL is the oslo.messaging URL of a private broker
	// (Rabbit.TransportURL of StartRabbitMQ). Not a shared broker: nova's
	// topics ("conductor", "scheduler", "compute") have fixed names.
	TransportURL string
	// GlanceURL is the glance endpoint (GlanceServer.URL of StartGlance).
	GlanceURL string
	// ServiceDownTime is [DEFAULT] service_down_time in seconds (default
	// 60): how long after its last report a compute is "down" for nova-api
	// and the scheduler. Below 30, report_interval is lowered to a third
	// of it (nova wants service_down_time > 2.5 * report_interval).
	ServiceDownTime int
	// Debug turns on debug logging in every OpenStack service.
	Debug bool
}

// Nova is a nova Zed control plane from Debian's packages on 127.0.0.1: a
// private mariadbd (databases nova_api, nova, nova_cell0, placement),
// placement-api and nova-api under uwsgi, nova-conductor, nova-scheduler
// and a Go neutron stub. Cells: cell0 and cell1 (the nova database). No
// keystone: nova-api trusts identity headers (the client sends them),
// placement runs noauth2 with token "admin:admin". No compute service runs:
// that is the agent under test (ComputeConf, DiscoverHosts).
type Nova struct {
	Dir          string
	TransportURL string
	GlanceURL    string
	// APIPort is nova-api's port.
	APIPort int
	// ServiceDownTime and ReportInterval are the seconds written to the
	// configs ([DEFAULT] service_down_time, report_interval).
	ServiceDownTime int
	ReportInterval  int
	Debug           bool
	// Timings of the startup phases and of Stop, for tests to log.
	Timings     []NovaTiming
	StopTimings []NovaTiming

	DB        *MariaDB
	Placement *PlacementServer
	Neutron   *NeutronStub

	mu        sync.Mutex
	api       *proc
	conductor *proc
	scheduler *proc
	client    *http.Client
}

// NovaTiming is how long one startup phase took.
type NovaTiming struct {
	Phase    string
	Duration time.Duration
}

func (t NovaTiming) String() string { return fmt.Sprintf("%s %.1fs", t.Phase, t.Duration.Seconds()) }

// StartNova brings up the control plane under opts.Dir and returns once
// nova-api answers and nova-conductor and nova-scheduler are "up" in
// os-services. On error everything it started is stopped again.
func StartNova(ctx context.Context, opts NovaOptions) (*Nova, error) {
	if opts.Dir == "" {
		return nil, errors.New("nova: NovaOptions.Dir is required")
	}
	if opts.TransportURL == "" || opts.GlanceURL == "" {
		return nil, errors.New("nova: NovaOptions.TransportURL and GlanceURL are required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, NovaStartTimeout)
		defer cancel()
	}
	n := &Nova{
		Dir:             dir,
		TransportURL:    opts.TransportURL,
		GlanceURL:       strings.TrimRight(opts.GlanceURL, "/"),
		ServiceDownTime: opts.ServiceDownTime,
		Debug:           opts.Debug,
		client:          &http.Client{Timeout: novaClientTimeout},
	}
	if n.ServiceDownTime <= 0 {
		n.ServiceDownTime = 60
	}
	n.ReportInterval = 10
	if n.ServiceDownTime < 30 {
		n.ReportInterval = max(1, n.ServiceDownTime/3)
	}
	// The cell mappings name the database by URL (with mariadbd's port,
	// which changes on every start): a second start on the same databases
	// would map a second cell1.
	if _, err := os.Stat(filepath.Join(dir, "mariadb")); err == nil {
		return nil, fmt.Errorf("nova: %s already holds a control plane; StartNova needs a new Dir", dir)
	}
	for _, d := range []string{"etc", "log", "state", "lock", "compute", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := n.start(ctx); err != nil {
		if e := n.Stop(); e != nil {
			err = errors.Join(err, fmt.Errorf("stop after failed start: %w", e))
		}
		return nil, err
	}
	return n, nil
}

func (n *Nova) phase(name string, start time.Time) {
	n.Timings = append(n.Timings, NovaTiming{name, time.Since(start)})
}

func (n *Nova) start(ctx context.Context) error {
	t0 := time.Now()
	var err error
	if n.Neutron, err = StartNeutronStub(filepath.Join(n.LogDir(), "neutron-stub.log")); err != nil {
		return err
	}

	// Importing nova costs about 4 CPU-seconds, the migrations themselves
	// about 3 s: one python process does every database step, and it
	// imports nova while mariadbd comes up.
	setup, err := n.startDBSetup(ctx)
	if err != nil {
		return err
	}
	defer setup.abort()

	start := time.Now()
	if n.DB, err = StartMariaDB(ctx, filepath.Join(n.Dir, "mariadb")); err != nil {
		return err
	}
	for _, db := range []string{"nova_api", "nova", "nova_cell0", "placement"} {
		if err := n.DB.CreateDatabase(ctx, db); err != nil {
			return err
		}
	}
	n.phase("mariadb", start)
	if err := n.writeConfigs(); err != nil { // placement's URL is not known yet
		return err
	}

	// placement (db sync + uwsgi) and the nova schemas and cells at once.
	start = time.Now()
	var wg sync.WaitGroup
	var perr error
	var pdur time.Duration
	wg.Add(1)
	go func() {
		defer wg.Done()
		s := time.Now()
		var p *PlacementServer
		p, perr = startPlacement(ctx, filepath.Join(n.Dir, "placement"), n.DB.DSN("placement"), n.Debug)
		pdur = time.Since(s)
		n.mu.Lock()
		n.Placement = p
		n.mu.Unlock()
	}()
	serr := setup.run(ctx, n.DB.DSN("nova_cell0"))
	n.phase("nova db setup", start)
	wg.Wait()
	if err := errors.Join(serr, perr); err != nil {
		return err
	}
	n.Timings = append(n.Timings, NovaTiming{fmt.Sprintf("placement (db sync %.1fs)", n.Placement.DBSync.Seconds()), pdur})
	if err := n.writeConfigs(); err != nil { // now with placement's URL
		return err
	}

	start = time.Now()
	if err := n.startServices(ctx); err != nil {
		return err
	}
	n.phase("nova services", start)
	n.phase("total", t0)
	return nil
}

// novaDBSetupPy does, in one process, what nova-manage api_db sync,
// cell_v2 map_cell0, cell_v2 create_cell --name cell1 and db sync do (with
// nova-manage's own command classes). It imports nova first, then waits for
// a line "go <cell0 database URL>" on stdin (the databases exist and the
// config is written).
const novaDBSetupPy = `import sys, time
t0 = time.time()
from nova.cmd import manage
from nova import config, objects
from oslo_log import log as logging
print('import nova: %.1fs' % (time.time() - t0), flush=True)
line = sys.stdin.readline().split()
if len(line) != 2 or line[0] != 'go':
    sys.exit('aborted')
conf_file, cell0_url = sys.argv[1], line[1]
config.parse_args(['nova-manage', '--config-file', conf_file])
logging.setup(manage.CONF, 'nova')
objects.register_all()


def step(name, fn):
    t = time.time()
    ret = fn()
    print('%s: %.1fs -> %r' % (name, time.time() - t, ret), flush=True)
    if ret not in (None, 0):
        sys.exit('%s failed: %r' % (name, ret))


step('api_db sync', manage.ApiDbCommands().sync)
step('cell_v2 map_cell0', lambda: manage.CellV2Commands().map_cell0(database_connection=cell0_url))
step('cell_v2 create_cell cell1', lambda: manage.CellV2Commands().create_cell(name='cell1', verbose=True))
step('db sync (cell0, cell1)', manage.DbCommands().sync)
`

// dbSetup is the running novaDBSetupPy process.
type dbSetup struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	log   string
	done  chan error
}

func (n *Nova) startDBSetup(ctx context.Context) (*dbSetup, error) {
	script := filepath.Join(n.Dir, "etc", "nova-db-setup.py")
	if err := os.WriteFile(script, []byte(novaDBSetupPy), 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(n.LogDir(), "nova-manage.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==== %s: nova db setup (%s)\n", time.Now().Format(time.RFC3339Nano), script)
	cmd := exec.CommandContext(ctx, PythonBin, script, n.NovaConfPath())
	cmd.Env = n.env()
	cmd.Dir = filepath.Join(n.Dir, "run")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("nova db setup: %w", err)
	}
	s := &dbSetup{cmd: cmd, stdin: stdin, log: logPath, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()
	return s, nil
}

// run lets the script go on and waits for it.
func (s *dbSetup) run(ctx context.Context, cell0URL string) error {
	_, err := fmt.Fprintf(s.stdin, "go %s\n", cell0URL)
	s.stdin.Close()
	if err == nil {
		select {
		case err = <-s.done:
			s.done <- err
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		return fmt.Errorf("nova db setup: %w\n%s", err, tailFile(s.log, 40))
	}
	return nil
}

// abort ends the script if it still runs (its whole process group).
func (s *dbSetup) abort() {
	s.stdin.Close()
	select {
	case err := <-s.done:
		s.done <- err
		return
	default:
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	err := <-s.done
	s.done <- err
}

// NovaConfPath is the nova.conf of nova-api, nova-conductor, nova-scheduler
// and nova-manage (with the database connections).
func (n *Nova) NovaConfPath() string { return filepath.Join(n.Dir, "etc", "nova.conf") }

// cell0ConfPath is nova.conf with [database] pointing at nova_cell0, for
// syncing the cell0 schema.
func (n *Nova) cell0ConfPath() string { return filepath.Join(n.Dir, "etc", "nova-cell0.conf") }

func (n *Nova) pastePath() string { return filepath.Join(n.Dir, "etc", "api-paste.ini") }

// LogDir holds every log: <service>.log (oslo), <service>.out (stdout and
// stderr), nova-manage.log, neutron-stub.log; placement's and mariadb's
// are under Dir/placement/log and Dir/mariadb/log.
func (n *Nova) LogDir() string { return filepath.Join(n.Dir, "log") }

// URL returns the compute API endpoint, http://127.0.0.1:PORT/v2.1.
func (n *Nova) URL() string { return fmt.Sprintf("http://127.0.0.1:%d/v2.1", n.APIPort) }

// PlacementURL returns the placement endpoint.
func (n *Nova) PlacementURL() string { return n.Placement.URL() }

// NeutronURL returns the neutron stub's endpoint.
func (n *Nova) NeutronURL() string { return n.Neutron.URL() }

// ComputeDir is the directory ComputeConf(host) puts state_path,
// instances_path and lock_path under.
func (n *Nova) ComputeDir(host string) string { return filepath.Join(n.Dir, "compute", host) }

// commonConf is the part of nova.conf shared by the control plane and the
// compute nodes: messaging, glance, placement, neutron, service liveness.
// extraDefault is appended to [DEFAULT].
func (n *Nova) commonConf(host, stateDir, lockDir, extraDefault string) string {
	placementURL := "" // first written (for the db syncs) before placement runs
	if n.Placement != nil {
		placementURL = n.Placement.URL()
	}
	return fmt.Sprintf(`[DEFAULT]
debug = %[1]s
use_stderr = False
host = %[2]s
my_ip = 127.0.0.1
transport_url = %[3]s
state_path = %[4]s
service_down_time = %[5]d
report_interval = %[6]d
graceful_shutdown_timeout = %[7]d
# No neutron: do not poll it for instance network info.
heal_instance_info_cache_interval = -1
%[13]s
[glance]
endpoint_override = %[8]s

[placement]
# placement runs noauth2: a static "user:project" token to a fixed endpoint.
auth_type = admin_token
endpoint = %[9]s
token = %[10]s

[neutron]
# The neutron stub: empty collections for the GETs nova makes.
auth_type = admin_token
endpoint = %[11]s
endpoint_override = %[11]s
token = %[10]s

[oslo_messaging_notifications]
driver = noop

[oslo_concurrency]
lock_path = %[12]s

[vnc]
enabled = False

[spice]
enabled = False

[serial_console]
enabled = False
`, pyBool(n.Debug), host, n.TransportURL, stateDir, n.ServiceDownTime, n.ReportInterval,
		novaGracefulStop, n.GlanceURL, placementURL, PlacementToken, n.Neutron.URL(), lockDir, extraDefault)
}

// ComputeConf returns the nova.conf a stock nova-compute named host would
// use on this deployment (and the agent under test is started with): no
// database connections, libvirt LXC, raw images (loop mounts, no nbd),
// state_path, instances_path and lock_path under ComputeDir(host) (see
// WriteComputeConf, which also creates them).
func (n *Nova) ComputeConf(host string) string {
	d := n.ComputeDir(host)
	return n.commonConf(host, filepath.Join(d, "state"), filepath.Join(d, "lock"), fmt.Sprintf(`instances_path = %s
compute_driver = libvirt.LibvirtDriver
# Raw (Flat) image backend: nova mounts the root disk with LoopMount;
# qcow2 would need NbdMount (qemu-nbd) and this kernel has no nbd.
use_cow_images = False
force_raw_images = True
`, filepath.Join(d, "instances"))) + `
[libvirt]
virt_type = lxc
connection_uri = lxc:///
images_type = raw

[workarounds]
# Debian's rootwrap filter for privsep-helper only accepts configs under
# /etc; this one is not.
disable_rootwrap = True
`
}

// WriteComputeConf creates ComputeDir(host) with its state, instances and
// lock directories and writes ComputeConf(host) to ComputeDir(host)/nova.conf,
// whose path it returns.
func (n *Nova) WriteComputeConf(host string) (string, error) {
	if host == "" || strings.ContainsAny(host, "/\x00") || host == "." || host == ".." {
		return "", fmt.Errorf("nova: bad compute host name %q", host)
	}
	d := n.ComputeDir(host)
	for _, s := range []string{"state", "instances", "lock"} {
		if err := os.MkdirAll(filepath.Join(d, s), 0o755); err != nil {
			return "", err
		}
	}
	p := filepath.Join(d, "nova.conf")
	return p, os.WriteFile(p, []byte(n.ComputeConf(host)), 0o644)
}

func (n *Nova) controlConf(cell0 bool) string {
	db := "nova"
	if cell0 {
		db = "nova_cell0"
	}
	return n.commonConf(NovaControlHost, filepath.Join(n.Dir, "state"), filepath.Join(n.Dir, "lock"), "") + fmt.Sprintf(`
[api]
# The "keystone" pipeline of api-paste.ini with keystonemiddleware's
# authtoken filter removed: NovaKeystoneContext trusts X-User-Id,
# X-Project-Id, X-Roles and X-Auth-Token. (noauth2 leaves the context
# without a token, and nova's glance client then refuses every request:
# "No valid authentication is available".)
auth_strategy = keystone

[wsgi]
api_paste_config = %[1]s

[api_database]
connection = %[2]s

[database]
connection = %[3]s

[conductor]
workers = 1

[scheduler]
workers = 1
# Tests map computes explicitly (DiscoverHosts).
discover_hosts_in_cells_interval = -1

[quota]
driver = nova.quota.NoopQuotaDriver

[cinder]
catalog_info = volumev3:cinderv3:publicURL
`, n.pastePath(), n.DB.DSN("nova_api"), n.DB.DSN(db))
}

func (n *Nova) writeConfigs() error {
	paste, err := os.ReadFile(novaAPIPaste)
	if err != nil {
		return fmt.Errorf("nova: %w", err)
	}
	p := strings.ReplaceAll(string(paste), " authtoken keystonecontext ", " keystonecontext ")
	if strings.Contains(p, " authtoken ") {
		return fmt.Errorf("nova: %s: cannot remove authtoken from the keystone pipelines", novaAPIPaste)
	}
	files := map[string]string{
		n.pastePath():     p,
		n.NovaConfPath():  n.controlConf(false),
		n.cell0ConfPath(): n.controlConf(true),
		// nova-api's own log file: a third config file for the wsgi app.
		filepath.Join(n.Dir, "etc", "nova-api.conf"): "[DEFAULT]\nlog_file = " + filepath.Join(n.LogDir(), "nova-api.log") + "\n",
	}
	for path, text := range files {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (n *Nova) writeAPIIni(port int) (string, error) {
	ini := fmt.Sprintf(`[uwsgi]
plugins = python3
http-socket = 127.0.0.1:%[1]d
master = true
processes = 2
threads = 1
enable-threads = true
lazy-apps = true
die-on-term = true
no-orphans = true
buffer-size = 65535
add-header = Connection: close
# Without this, workers segfault in Py_FinalizeEx (greenlet's thread state
# teardown) when uwsgi stops them.
skip-atexit-teardown = true
chdir = %[2]s
wsgi-file = %[3]s
`, port, filepath.Join(n.Dir, "run"), novaAPIWSGI)
	path := filepath.Join(n.Dir, "etc", "nova-api-uwsgi.ini")
	return path, os.WriteFile(path, []byte(ini), 0o644)
}

func (n *Nova) env() []string {
	return serviceEnv([]string{"OS_", "PYTHON", "UWSGI_"}, "HOME="+filepath.Join(n.Dir, "state"))
}

// manage runs nova-manage --config-file conf args..., appending its output
// to LogDir()/nova-manage.log.
func (n *Nova) manage(ctx context.Context, conf string, args ...string) error {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, novaManage, append([]string{"--config-file", conf}, args...)...)
	cmd.Env = n.env()
	cmd.Dir = filepath.Join(n.Dir, "run")
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	line := fmt.Sprintf("==== %s nova-manage %s (%.1fs, %v)\n", start.Format(time.RFC3339Nano),
		strings.Join(args, " "), time.Since(start).Seconds(), err)
	n.mu.Lock()
	if f, e := os.OpenFile(filepath.Join(n.LogDir(), "nova-manage.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); e == nil {
		f.WriteString(line)
		f.Write(out.Bytes())
		f.Close()
	}
	n.mu.Unlock()
	if err != nil {
		return fmt.Errorf("nova-manage %s: %w\n%s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// startServices starts nova-api (uwsgi), nova-conductor and nova-scheduler
// at once and waits until nova-api answers and the other two are up.
func (n *Nova) startServices(ctx context.Context) error {
	t0 := time.Now()
	svc := func(name, bin string) (*proc, error) {
		return startProc(name, filepath.Join(n.LogDir(), name+".out"), n.env(),
			bin, "--config-file", n.NovaConfPath(), "--log-file", filepath.Join(n.LogDir(), name+".log"))
	}
	var err error
	n.mu.Lock()
	n.conductor, err = svc("nova-conductor", novaConductor)
	if err == nil {
		n.scheduler, err = svc("nova-scheduler", novaScheduler)
	}
	n.mu.Unlock()
	if err != nil {
		return err
	}
	if err := n.startAPI(ctx); err != nil {
		return err
	}
	n.phase("nova-api answers", t0)

	for _, s := range []struct {
		binary string
		p      *proc
	}{{"nova-conductor", n.conductor}, {"nova-scheduler", n.scheduler}} {
		if err := n.waitServiceUp(ctx, s.binary, NovaControlHost, s.p); err != nil {
			return err
		}
		n.phase(s.binary+" up", t0)
	}
	return nil
}

func (n *Nova) startAPI(ctx context.Context) error {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		ps, err := FreePorts(1)
		if err != nil {
			return err
		}
		ini, err := n.writeAPIIni(ps[0])
		if err != nil {
			return err
		}
		env := append(n.env(), "OS_NOVA_CONFIG_DIR="+filepath.Join(n.Dir, "etc"),
			// The wsgi app takes the FIRST file as its paste config.
			"OS_NOVA_CONFIG_FILES=api-paste.ini;nova.conf;nova-api.conf")
		p, err := startProc("nova-api", filepath.Join(n.LogDir(), "nova-api.out"), env, uwsgiBin, "--ini", ini)
		if err != nil {
			return err
		}
		lastErr = waitHTTP(ctx, p, fmt.Sprintf("http://127.0.0.1:%d/", ps[0]), nil, filepath.Join(n.LogDir(), "nova-api.log"))
		if lastErr == nil {
			n.mu.Lock()
			n.api = p
			n.APIPort = ps[0]
			n.mu.Unlock()
			return nil
		}
		lastErr = fmt.Errorf("nova-api on 127.0.0.1:%d: %w", ps[0], lastErr)
		if ctx.Err() != nil || !strings.Contains(lastErr.Error(), "Address already in use") {
			break
		}
	}
	return lastErr
}

// waitServiceUp polls os-services until binary on host is "up".
func (n *Nova) waitServiceUp(ctx context.Context, binary, host string, p *proc) error {
	logf := filepath.Join(n.LogDir(), binary+".log")
	var last string
	for {
		svcs, err := n.Services(ctx)
		if err == nil {
			last = "not registered"
			for _, s := range svcs {
				if s.Binary == binary && s.Host == host {
					last = "state " + s.State
					if s.State == "up" {
						return nil
					}
				}
			}
		} else {
			last = err.Error()
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s: %w: %w\n%s", binary, errExited, p.exitError(), tailFile(logf, 30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s on %s not up in os-services (%s): %w\n%s\n%s", binary, host, last, ctx.Err(),
				tailFile(p.logPath, 10), tailFile(logf, 30))
		case <-time.After(novaPollInterval):
		}
	}
}

// DiscoverHosts maps new compute hosts into cell1
// (nova-manage cell_v2 discover_hosts).
func (n *Nova) DiscoverHosts(ctx context.Context) error {
	return n.manage(ctx, n.NovaConfPath(), "cell_v2", "discover_hosts", "--verbose")
}

// Pids returns the main pid of every service process the control plane runs
// (uwsgi masters, conductor, scheduler, mariadbd), by name. Their children
// are part of the tree Stop ends.
func (n *Nova) Pids() map[string]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	m := map[string]int{}
	for name, p := range map[string]*proc{"nova-api": n.api, "nova-conductor": n.conductor, "nova-scheduler": n.scheduler} {
		if p != nil && !p.exited() {
			m[name] = p.Pid()
		}
	}
	if n.Placement != nil && n.Placement.Pid() != 0 {
		m["placement-api"] = n.Placement.Pid()
	}
	if n.DB != nil && n.DB.Pid() != 0 {
		m["mariadbd"] = n.DB.Pid()
	}
	return m
}

// Stop stops everything StartNova started, in reverse order, each process
// with its whole tree (SIGTERM, SIGKILL after a timeout). Dir is left as it is.
func (n *Nova) Stop() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	var errs []error
	timed := func(name string, f func() error) {
		start := time.Now()
		err := f()
		n.StopTimings = append(n.StopTimings, NovaTiming{name, time.Since(start)})
		if err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", name, err))
		}
	}
	// nova-api, the scheduler and the conductor do not depend on each
	// other for shutting down: stop them at once.
	timed("nova services", func() error {
		var wg sync.WaitGroup
		ps := []*proc{n.scheduler, n.conductor, n.api}
		perr := make([]error, len(ps))
		for i, p := range ps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				perr[i] = p.stop(novaStopTimeout)
			}()
		}
		wg.Wait()
		n.scheduler, n.conductor, n.api = nil, nil, nil
		return errors.Join(perr...)
	})
	if n.Placement != nil {
		timed("placement-api", n.Placement.Stop)
	}
	if n.Neutron != nil {
		timed("neutron stub", n.Neutron.Stop)
		n.Neutron = nil
	}
	if n.DB != nil {
		timed("mariadbd", n.DB.Stop)
	}
	return errors.Join(errs...)
}

// NovaT starts a control plane for the test and stops it with t.Cleanup
// (printing the tails of the logs when the test failed). Empty fields of
// opts are filled in: Dir with t.TempDir(), TransportURL with a private
// broker (StartRabbitMQT), GlanceURL with a private glance (StartGlanceT).
func NovaT(t testing.TB, opts NovaOptions) *Nova {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.TransportURL == "" || opts.GlanceURL == "" {
		r, g := rabbitAndGlanceT(t, opts.TransportURL == "", opts.GlanceURL == "")
		if r != nil {
			opts.TransportURL = r.TransportURL()
		}
		if g != nil {
			opts.GlanceURL = g.URL()
		}
	}
	n, err := StartNova(context.Background(), opts)
	if err != nil {
		t.Fatalf("start nova: %v", err)
	}
	t.Logf("nova control plane ready at %s: %v", n.URL(), n.Timings)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nova logs:\n%s", n.LogTails(30))
		}
		if err := n.Stop(); err != nil {
			t.Errorf("stop nova: %v", err)
		}
	})
	return n
}

// rabbitAndGlanceT starts a private broker and/or glance for the test at
// the same time (like StartRabbitMQT and StartGlanceT) and stops them with
// t.Cleanup.
func rabbitAndGlanceT(t testing.TB, wantRabbit, wantGlance bool) (*Rabbit, *GlanceServer) {
	t.Helper()
	var (
		r          *Rabbit
		g          *GlanceServer
		rerr, gerr error
		wg         sync.WaitGroup
	)
	start := time.Now()
	if wantRabbit {
		dir := t.TempDir()
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, rerr = StartRabbitMQ(context.Background(), dir, 0)
		}()
	}
	if wantGlance {
		dir := t.TempDir()
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, gerr = StartGlance(context.Background(), dir)
		}()
	}
	wg.Wait()
	if r != nil {
		t.Logf("rabbitmq %s ready on 127.0.0.1:%d (pid %d)", r.Node, r.Port, r.Pid())
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("rabbitmq logs:\n%s", tailFile(r.nodeLog(), 40))
			}
			if err := r.Stop(); err != nil {
				t.Errorf("stop rabbitmq: %v", err)
			}
		})
	}
	if g != nil {
		t.Logf("glance-api ready at %s (pid %d)", g.URL(), g.Pid())
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("glance logs:\n%s", tailFile(g.LogFile(), 40))
			}
			if err := g.Stop(); err != nil {
				t.Errorf("stop glance: %v", err)
			}
		})
	}
	if err := errors.Join(rerr, gerr); err != nil {
		t.Fatalf("start rabbitmq / glance: %v", err)
	}
	t.Logf("rabbitmq + glance ready in %.1fs", time.Since(start).Seconds())
	return r, g
}

// LogTails returns the last lines of every control plane log.
func (n *Nova) LogTails(lines int) string {
	var b strings.Builder
	for _, f := range []string{"nova-api.log", "nova-conductor.log", "nova-scheduler.log", "nova-manage.log", "neutron-stub.log"} {
		b.WriteString(tailFile(filepath.Join(n.LogDir(), f), lines))
		b.WriteString("\n")
	}
	if n.Placement != nil {
		b.WriteString(tailFile(n.Placement.LogFile(), lines))
		b.WriteString("\n")
	}
	return b.String()
}

// ---- REST client ----

// NovaAPIError is a compute or placement API answer with an unexpected status.
type NovaAPIError struct {
	Method, URL string
	StatusCode  int
	Body        string
}

func (e *NovaAPIError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Method, e.URL, e.StatusCode, e.Body)
}

// IsNotFound reports whether err is a NovaAPIError with status 404.
func IsNotFound(err error) bool {
	var e *NovaAPIError
	return errors.As(err, &e) && e.StatusCode == http.StatusNotFound
}

func (n *Nova) do(ctx context.Context, method, url string, hdr map[string]string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := n.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	if resp.StatusCode >= 300 {
		return &NovaAPIError{Method: method, URL: url, StatusCode: resp.StatusCode, Body: string(bytes.TrimSpace(b))}
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: %w: %.300s", method, url, err, b)
		}
	}
	return nil
}

// NovaAPI sends a compute API request (path relative to /v2.1, e.g.
// "/servers") with the trusted identity headers and microversion
// NovaMicroversion, sending in (if not nil) as JSON and decoding the answer
// into out (if not nil). A status of 300 or more is a *NovaAPIError.
func (n *Nova) NovaAPI(ctx context.Context, method, path string, in, out any) error {
	hdr := map[string]string{"X-OpenStack-Nova-API-Version": NovaMicroversion}
	for k, v := range novaAuthHeaders {
		hdr[k] = v
	}
	return n.do(ctx, method, n.URL()+path, hdr, in, out)
}

// PlacementGet sends GET path (e.g. "/resource_providers") to placement with
// the token and the given microversion ("" means "latest") and decodes the
// answer into out.
func (n *Nova) PlacementGet(ctx context.Context, path, microversion string, out any) error {
	if microversion == "" {
		microversion = "latest"
	}
	return n.do(ctx, http.MethodGet, n.Placement.URL()+path, map[string]string{
		"X-Auth-Token":          PlacementToken,
		"OpenStack-API-Version": "placement " + microversion,
	}, nil, out)
}

// CreateFlavor creates a public flavor and returns its id.
func (n *Nova) CreateFlavor(ctx context.Context, name string, vcpus, ramMB, diskGB int) (string, error) {
	var out struct {
		Flavor struct {
			ID string `json:"id"`
		} `json:"flavor"`
	}
	err := n.NovaAPI(ctx, http.MethodPost, "/flavors", map[string]any{"flavor": map[string]any{
		"name": name, "vcpus": vcpus, "ram": ramMB, "disk": diskGB,
	}}, &out)
	if err != nil {
		return "", err
	}
	if out.Flavor.ID == "" {
		return "", errors.New("nova: create flavor: no id in the answer")
	}
	return out.Flavor.ID, nil
}

// CreateServer boots a server with no network ("networks": "none") and
// returns its id.
func (n *Nova) CreateServer(ctx context.Context, name, imageID, flavorID string) (string, error) {
	var out struct {
		Server struct {
			ID string `json:"id"`
		} `json:"server"`
	}
	err := n.NovaAPI(ctx, http.MethodPost, "/servers", map[string]any{"server": map[string]any{
		"name": name, "imageRef": imageID, "flavorRef": flavorID, "networks": "none",
	}}, &out)
	if err != nil {
		return "", err
	}
	if out.Server.ID == "" {
		return "", errors.New("nova: create server: no id in the answer")
	}
	return out.Server.ID, nil
}

// ServerFault is the fault of a server in ERROR.
type ServerFault struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Details string `json:"details"`
	Created string `json:"created"`
}

// Server is the part of GET /servers/{id} the tests look at; Raw has the
// whole answer.
type Server struct {
	ID         string
	Name       string
	Status     string
	VMState    string // OS-EXT-STS:vm_state
	TaskState  string // OS-EXT-STS:task_state, "" for null
	PowerState int    // OS-EXT-STS:power_state
	Host       string // OS-EXT-SRV-ATTR:host
	Fault      *ServerFault
	Raw        map[string]any
}

// Server returns GET /servers/{id}. A server that does not exist gives an
// error for which IsNotFound is true.
func (n *Nova) Server(ctx context.Context, id string) (*Server, error) {
	var out struct {
		Server json.RawMessage `json:"server"`
	}
	if err := n.NovaAPI(ctx, http.MethodGet, "/servers/"+id, nil, &out); err != nil {
		return nil, err
	}
	var s struct {
		ID         string       `json:"id"`
		Name       string       `json:"name"`
		Status     string       `json:"status"`
		VMState    *string      `json:"OS-EXT-STS:vm_state"`
		TaskState  *string      `json:"OS-EXT-STS:task_state"`
		PowerState *int         `json:"OS-EXT-STS:power_state"`
		Host       *string      `json:"OS-EXT-SRV-ATTR:host"`
		Fault      *ServerFault `json:"fault"`
	}
	srv := &Server{}
	if err := json.Unmarshal(out.Server, &s); err != nil {
		return nil, fmt.Errorf("nova: server %s: %w", id, err)
	}
	if err := json.Unmarshal(out.Server, &srv.Raw); err != nil {
		return nil, fmt.Errorf("nova: server %s: %w", id, err)
	}
	deref := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	srv.ID, srv.Name, srv.Status, srv.Fault = s.ID, s.Name, s.Status, s.Fault
	srv.VMState, srv.TaskState, srv.Host = deref(s.VMState), deref(s.TaskState), deref(s.Host)
	if s.PowerState != nil {
		srv.PowerState = *s.PowerState
	}
	return srv, nil
}

// transitional statuses are shown while a task runs (task_state set).
var transitionalStatus = map[string]bool{
	"BUILD": true, "REBOOT": true, "HARD_REBOOT": true, "REBUILD": true, "RESIZE": true,
	"REVERT_RESIZE": true, "MIGRATING": true, "PASSWORD": true,
}

func (s *Server) faultText() string {
	if s.Fault == nil {
		return "no fault recorded"
	}
	return fmt.Sprintf("fault %d: %s", s.Fault.Code, s.Fault.Message)
}

// WaitServer polls the server until its status is wantStatus and (for a
// status that is not transitional, such as ACTIVE or SHUTOFF) no task is
// running, and returns it. It fails at once with the server's fault when
// the status becomes ERROR and ERROR is not wanted.
func (n *Nova) WaitServer(ctx context.Context, id, wantStatus string) (*Server, error) {
	var last *Server
	for {
		s, err := n.Server(ctx, id)
		if err != nil && ctx.Err() == nil {
			return last, fmt.Errorf("nova: waiting for server %s to be %s: %w", id, wantStatus, err)
		}
		if err == nil {
			last = s
			if s.Status == wantStatus && (s.TaskState == "" || transitionalStatus[wantStatus] || wantStatus == "ERROR") {
				return s, nil
			}
			if s.Status == "ERROR" && wantStatus != "ERROR" {
				return s, fmt.Errorf("nova: server %s went ERROR (vm_state %s, task_state %q, host %q) while waiting for %s: %s",
					id, s.VMState, s.TaskState, s.Host, wantStatus, s.faultText())
			}
		}
		select {
		case <-ctx.Done():
			st := "unknown"
			if last != nil {
				st = fmt.Sprintf("%s (vm_state %s, task_state %q, power_state %d, host %q)", last.Status, last.VMState, last.TaskState, last.PowerState, last.Host)
			}
			return last, fmt.Errorf("nova: server %s still %s, want %s: %w", id, st, wantStatus, ctx.Err())
		case <-time.After(novaPollInterval):
		}
	}
}

// ServerAction sends POST /servers/{id}/action with action as the body,
// e.g. {"os-stop": nil} or {"reboot": {"type": "SOFT"}}.
func (n *Nova) ServerAction(ctx context.Context, id string, action map[string]any) error {
	return n.NovaAPI(ctx, http.MethodPost, "/servers/"+id+"/action", action, nil)
}

// DeleteServer sends DELETE /servers/{id}.
func (n *Nova) DeleteServer(ctx context.Context, id string) error {
	return n.NovaAPI(ctx, http.MethodDelete, "/servers/"+id, nil, nil)
}

// WaitServerGone polls until GET /servers/{id} answers 404. It fails at once
// when the server goes to ERROR (a failed delete).
func (n *Nova) WaitServerGone(ctx context.Context, id string) error {
	var last *Server
	for {
		s, err := n.Server(ctx, id)
		switch {
		case IsNotFound(err):
			return nil
		case err != nil && ctx.Err() == nil:
			return fmt.Errorf("nova: waiting for server %s to go: %w", id, err)
		case err == nil:
			last = s
			if s.Status == "ERROR" {
				return fmt.Errorf("nova: server %s went ERROR (vm_state %s, task_state %q, host %q) while being deleted: %s",
					id, s.VMState, s.TaskState, s.Host, s.faultText())
			}
		}
		select {
		case <-ctx.Done():
			st := "unknown"
			if last != nil {
				st = fmt.Sprintf("%s (vm_state %s, task_state %q)", last.Status, last.VMState, last.TaskState)
			}
			return fmt.Errorf("nova: server %s still there (%s): %w", id, st, ctx.Err())
		case <-time.After(novaPollInterval):
		}
	}
}

// NovaService is one entry of GET /os-services.
type NovaService struct {
	ID             string  `json:"id"`
	Binary         string  `json:"binary"`
	Host           string  `json:"host"`
	Zone           string  `json:"zone"`
	Status         string  `json:"status"` // enabled / disabled
	State          string  `json:"state"`  // up / down
	UpdatedAt      *string `json:"updated_at"`
	DisabledReason *string `json:"disabled_reason"`
	ForcedDown     bool    `json:"forced_down"`
}

// Services returns GET /os-services.
func (n *Nova) Services(ctx context.Context) ([]NovaService, error) {
	var out struct {
		Services []NovaService `json:"services"`
	}
	if err := n.NovaAPI(ctx, http.MethodGet, "/os-services", nil, &out); err != nil {
		return nil, err
	}
	return out.Services, nil
}

// Hypervisor is one entry of GET /os-hypervisors/detail (microversion
// NovaMicroversion: no resource figures, those are in placement).
type Hypervisor struct {
	ID                 string `json:"id"`
	HypervisorHostname string `json:"hypervisor_hostname"`
	HypervisorType     string `json:"hypervisor_type"`
	HypervisorVersion  int64  `json:"hypervisor_version"`
	HostIP             string `json:"host_ip"`
	State              string `json:"state"`  // up / down
	Status             string `json:"status"` // enabled / disabled
	Service            struct {
		ID   string `json:"id"`
		Host string `json:"host"`
	} `json:"service"`
}

// Hypervisors returns GET /os-hypervisors/detail.
func (n *Nova) Hypervisors(ctx context.Context) ([]Hypervisor, error) {
	var out struct {
		Hypervisors []Hypervisor `json:"hypervisors"`
	}
	if err := n.NovaAPI(ctx, http.MethodGet, "/os-hypervisors/detail", nil, &out); err != nil {
		return nil, err
	}
	return out.Hypervisors, nil
}

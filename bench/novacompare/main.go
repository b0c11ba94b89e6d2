// Command novacompare boots the same servers through the same nova Zed
// control plane on two compute services, one at a time, on one host, and
// prints a Markdown table of what each cost:
//
//   - "lxc-agent": the agent binary (-agent), go-lxc backend, started with
//     Nova.ComputeConf(host) plus a local.conf ([lxc_agent] backend = lxc);
//   - "nova-compute": Debian's /usr/bin/nova-compute (libvirt.LibvirtDriver,
//     virt_type=lxc) with the same Nova.ComputeConf(host) plus a local.conf
//     pointing [libvirt] connection_uri at a private libvirtd
//     (testenv.StartLibvirtd), run inside that libvirtd's mount namespace
//     (nsenter -t <NamespacePid> -m) so that libvirt_lxc sees the root disk
//     nova's privsep daemon loop-mounts.
//
// Everything comes from internal/testenv on 127.0.0.1: a private RabbitMQ,
// glance-api, mariadb, placement, nova-api, nova-conductor and
// nova-scheduler. The image is a busybox-static root filesystem in a raw
// ext4 image of 32 MiB, the flavor 1 vCPU / 256 MB / 1 GB, networks "none".
//
// Before measuring, one server is sent through the control plane with both
// computes disabled (it ends in ERROR, no valid host, and is deleted), so
// that the compute measured first does not pay for the control plane's
// first request. A compute is targeted by disabling the other one (PUT
// /os-services/{id}, then waiting for placement's COMPUTE_STATUS_DISABLED
// trait): the request then takes the path every user request takes
// (placement pre-filters, allocation candidates, all scheduler filters),
// which a forced "nova:<host>" availability zone would bypass.
//
// Per compute (the other one disabled): one warm-up server (create, then delete: the first boot after the service
// started, with the image download into that compute's cache), then N
// servers created one after the other (each POST waits for the previous
// ACTIVE), memory sampled with all N running, then the N deleted one after
// the other. Timings are client side (POST /servers -> ACTIVE, DELETE ->
// 404, polled every 0.2 s by testenv.Nova.WaitServer) and compute side
// (the services' own "built" log lines). CPU is utime+stime (reaped
// children included) from /proc/<pid>/stat, sampled before and after each
// phase; memory is VmRSS and Pss (smaps_rollup) from /proc.
//
// The table goes to stdout, progress to stderr. Everything started is
// stopped by pid, every container, domain, mount and loop device under the
// work directory is released, also on SIGINT/SIGTERM. Needs root. See
// bench/nova-compare.sh and docs/benchmarks-nova.md.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/testenv"
)

const (
	novaComputeBin = "/usr/bin/nova-compute"
	nsenterBin     = "/usr/bin/nsenter"
	hostPath       = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	userHZ         = 100 // USER_HZ: the unit of /proc/<pid>/stat times

	imageSizeMiB = 32
	flavorVCPUs  = 1
	flavorRAMMB  = 256
	flavorDiskGB = 1

	// The image's /etc/inittab: init and one sleep, as in
	// test/openstack, so every container runs two processes.
	inittab = `::sysinit:/bin/echo "novacompare: init is up"
::respawn:/bin/sh -c 'exec /bin/sleep 2147483647'
`
)

func main() {
	agentBin := flag.String("agent", "", "the lxc-agent binary (built from ./cmd/lxc-agent; required)")
	work := flag.String("work", "", "work directory (created; default: a new one under /var/tmp)")
	n := flag.Int("n", 5, "servers per compute, created one after the other after one warm-up server")
	settle := flag.Duration("settle", 3*time.Second, "rest before sampling memory with the N servers running")
	idle := flag.Duration("idle", 10*time.Second, "idle window before each compute's scenario (idle CPU)")
	order := flag.String("order", "lxc-agent,nova-compute", "which compute runs first")
	keep := flag.Bool("keep", false, "keep the work directory (configs, logs)")
	debug := flag.Bool("debug", false, "debug logging in nova-compute (for looking into it: changes its timings)")
	command := flag.String("command", "", "the command line to print in the report")
	flag.Parse()
	if *agentBin == "" || flag.NArg() > 0 || *n < 1 {
		fmt.Fprintln(os.Stderr, "usage: novacompare -agent PATH [-n 5] [-work DIR] [-keep]; see -h")
		os.Exit(2)
	}
	if *command == "" {
		*command = strings.Join(os.Args, " ")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	b := &bench{agentBin: *agentBin, workDir: *work, n: *n, settle: *settle, idle: *idle, keep: *keep, debug: *debug, command: *command}
	for _, name := range strings.Split(*order, ",") {
		if name != "lxc-agent" && name != "nova-compute" || slices.Contains(b.order, name) {
			fmt.Fprintf(os.Stderr, "novacompare: -order %q: want lxc-agent,nova-compute or nova-compute,lxc-agent\n", *order)
			os.Exit(2)
		}
		b.order = append(b.order, name)
	}
	if len(b.order) != 2 {
		fmt.Fprintf(os.Stderr, "novacompare: -order %q: name both computes\n", *order)
		os.Exit(2)
	}
	err := b.run(ctx)
	if cerr := b.teardown(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "novacompare: FAILED:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[novacompare %s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// bench is one run: the shared control plane and the two computes.
type bench struct {
	agentBin, workDir, command string
	n                          int
	settle, idle               time.Duration
	keep, debug                bool
	order                      []string

	rabbit   *testenv.Rabbit
	glance   *testenv.GlanceServer
	libvirtd *testenv.LibvirtdServer
	nova     *testenv.Nova
	computes map[string]*compute
	imageID  string
	flavorID string
	servers  map[string]bool // created and not yet seen gone
	startup  []string
	started  time.Time
	loadAvg  [2]string
}

// compute is one compute service under test.
type compute struct {
	name, host, label string
	dir               string // Nova.ComputeDir(host)
	logPath           string // where its build log lines go
	outPath           string // stdout and stderr
	argv              []string
	env               []string
	cmd               *exec.Cmd
	done              chan struct{}
	waitErr           error
	svcID, rpID       string
	registered        time.Duration

	// monitor reports whether process pid (with cmdline) is a
	// per-container monitor of this compute (lxc monitor / libvirt_lxc),
	// of server srv if srv is not nil; helper whether it is a detached
	// helper daemon of the service (nova's privsep daemons); daemons are
	// the hypervisor daemons it needs (libvirtd, virtlogd).
	monitor func(pid int, cmdline string, srv *testenv.Server) bool
	helper  func(cmdline string) bool
	daemons func() []int
	// buildTimes reads the compute-side build seconds per server uuid
	// (and the spawn seconds, when the service logs them) from its log.
	buildTimes func() (build, spawn map[string]float64)
	// leftovers lists containers/domains of this compute still defined.
	leftovers func() []string

	res result
}

func (c *compute) pid() int {
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

func (c *compute) exited() bool {
	if c.done == nil {
		return true
	}
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// result is what one compute measured.
type result struct {
	firstBoot, firstDelete   float64
	firstBuild, firstSpawn   float64
	boot, del, build, spawn  []float64
	cpuBoot, cpuDel          cpuSplit // CPU seconds per server
	cpuFirstBoot             cpuSplit
	ctlBoot, ctlDel          map[string]float64 // control plane CPU seconds per server, per service
	idleCPU                  float64            // service tree CPU ms per second, idle
	othersShare              float64            // share of the machine's CPU used by processes not of this benchmark
	instRSS, instPSS         []float64
	monRSS, monPSS           []float64
	payloadRSS, payloadPSS   []float64
	procs                    []int
	svcIdle, svcLoaded       memSplit
	helperIdle, helperLoaded memSplit
	daemonIdle, daemonLoaded memSplit
	helperCount              int
	notes                    []string
}

type memSplit struct{ rss, pss float64 } // MiB

type cpuSplit struct{ service, monitors, daemons float64 }

func (s cpuSplit) total() float64 { return s.service + s.monitors + s.daemons }

func (b *bench) run(ctx context.Context) error {
	b.started = time.Now()
	b.servers = map[string]bool{}
	b.loadAvg[0] = loadavg()
	if os.Geteuid() != 0 {
		return errors.New("needs root")
	}
	for _, f := range []string{b.agentBin, novaComputeBin, nsenterBin} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%w (bench/nova-compare.sh builds the agent and installs nova-compute)", err)
		}
	}
	if out, err := exec.Command("/usr/bin/python3", "-c", "import libvirt, nova.virt.libvirt.driver").CombinedOutput(); err != nil {
		return fmt.Errorf("python3 cannot import libvirt and nova's libvirt driver (packages python3-libvirt, nova-compute-lxc): %v: %s", err, out)
	}
	if b.workDir == "" {
		d, err := os.MkdirTemp("/var/tmp", "lxc-agent-novacompare.")
		if err != nil {
			return err
		}
		b.workDir = d
	} else if err := os.MkdirAll(b.workDir, 0o755); err != nil {
		return err
	}
	var err error
	if b.workDir, err = filepath.Abs(b.workDir); err != nil {
		return err
	}
	logf("work directory %s", b.workDir)

	if err := b.startControlPlane(ctx); err != nil {
		return err
	}
	if err := b.startComputes(ctx); err != nil {
		return err
	}
	if b.flavorID, err = b.nova.CreateFlavor(ctx, "bench-1-256-1", flavorVCPUs, flavorRAMMB, flavorDiskGB); err != nil {
		return err
	}
	if err := b.warmControlPlane(ctx); err != nil {
		return err
	}
	for _, name := range b.order {
		c := b.computes[name]
		var other *compute
		for _, o := range b.computes {
			if o != c {
				other = o
			}
		}
		if err := b.target(ctx, c, other); err != nil {
			return err
		}
		if err := b.scenario(ctx, c); err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
	b.loadAvg[1] = loadavg()
	b.report(os.Stdout)
	return nil
}

// ---- bring-up ----

func (b *bench) startControlPlane(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	// The broker, glance, libvirtd and the image at once.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	var imgPath string
	wg.Add(4)
	go func() {
		defer wg.Done()
		t := time.Now()
		b.rabbit, errs[0] = testenv.StartRabbitMQ(sctx, filepath.Join(b.workDir, "rabbit"), 0)
		b.addStartup("rabbitmq", t)
	}()
	go func() {
		defer wg.Done()
		t := time.Now()
		b.glance, errs[1] = testenv.StartGlance(sctx, filepath.Join(b.workDir, "glance"))
		b.addStartup("glance-api", t)
	}()
	go func() {
		defer wg.Done()
		t := time.Now()
		b.libvirtd, errs[2] = testenv.StartLibvirtd(sctx, filepath.Join(b.workDir, "libvirtd"))
		b.addStartup("libvirtd", t)
	}()
	go func() {
		defer wg.Done()
		dir := filepath.Join(b.workDir, "image")
		rootfs := filepath.Join(dir, "rootfs")
		imgPath = filepath.Join(dir, "busybox.img")
		if errs[3] = testenv.BuildBusyboxRootfs(rootfs, inittab); errs[3] == nil {
			errs[3] = testenv.BuildExt4Image(rootfs, imgPath, imageSizeMiB)
		}
	}()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	logf("rabbitmq, glance-api, libvirtd up in %.1fs", time.Since(t0).Seconds())

	f, err := os.Open(imgPath)
	if err != nil {
		return err
	}
	b.imageID, err = b.glance.CreateImage(sctx, "bench-busybox", "raw", "bare", f)
	f.Close()
	if err != nil {
		return err
	}

	t := time.Now()
	b.nova, err = testenv.StartNova(sctx, testenv.NovaOptions{Dir: filepath.Join(b.workDir, "nova"),
		TransportURL: b.rabbit.TransportURL(), GlanceURL: b.glance.URL()})
	if err != nil {
		return err
	}
	b.addStartup("nova control plane", t)
	logf("nova control plane up in %.1fs: %v", time.Since(t).Seconds(), b.nova.Timings)
	return nil
}

var startupMu sync.Mutex

func (b *bench) addStartup(what string, t time.Time) {
	startupMu.Lock()
	defer startupMu.Unlock()
	b.startup = append(b.startup, fmt.Sprintf("%s %.1fs", what, time.Since(t).Seconds()))
}

func serviceEnv(home string) []string {
	return []string{"PATH=" + hostPath, "LANG=C.UTF-8", "LC_ALL=C.UTF-8", "HOME=" + home}
}

func (b *bench) startComputes(ctx context.Context) error {
	b.computes = map[string]*compute{}
	agent, err := b.newAgent()
	if err != nil {
		return err
	}
	stock, err := b.newNovaCompute()
	if err != nil {
		return err
	}
	b.computes[agent.name], b.computes[stock.name] = agent, stock
	for _, c := range []*compute{agent, stock} {
		if err := c.start(); err != nil {
			return err
		}
		logf("%s started (pid %d, host %s)", c.name, c.pid(), c.host)
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	t0 := time.Now()
	for _, c := range []*compute{agent, stock} {
		err := waitFor(wctx, c.name+" service up", func() (bool, string, error) {
			if c.exited() {
				return false, "", fmt.Errorf("%s exited: %v\n%s", c.name, c.waitErr, tail(c.outPath, 30)+tail(c.logPath, 30))
			}
			svcs, err := b.nova.Services(wctx)
			if err != nil {
				return false, err.Error(), nil
			}
			for _, s := range svcs {
				if s.Binary == "nova-compute" && s.Host == c.host {
					c.svcID = s.ID
					return s.State == "up", s.State, nil
				}
			}
			return false, "not registered", nil
		})
		if err != nil {
			return fmt.Errorf("%w\n%s", err, tail(c.logPath, 30))
		}
		c.registered = time.Since(t0)
		logf("%s registered and up after %.1fs", c.name, c.registered.Seconds())
	}
	if err := b.nova.DiscoverHosts(wctx); err != nil {
		return err
	}
	for _, c := range []*compute{agent, stock} {
		err := waitFor(wctx, c.name+" hypervisor and provider", func() (bool, string, error) {
			hyps, err := b.nova.Hypervisors(wctx)
			if err != nil {
				return false, err.Error(), nil
			}
			for _, h := range hyps {
				if h.Service.Host == c.host {
					c.rpID = h.ID
					if h.State != "up" || h.Status != "enabled" {
						return false, h.State + "/" + h.Status, nil
					}
					var inv struct {
						Inventories map[string]struct {
							Total int `json:"total"`
						} `json:"inventories"`
					}
					if err := b.nova.PlacementGet(wctx, "/resource_providers/"+h.ID+"/inventories", "1.26", &inv); err != nil {
						return false, err.Error(), nil
					}
					return inv.Inventories["MEMORY_MB"].Total >= flavorRAMMB, fmt.Sprintf("inventories %v", inv.Inventories), nil
				}
			}
			return false, "no hypervisor", nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) newAgent() (*compute, error) {
	host := "bench-lxc-agent"
	conf, err := b.nova.WriteComputeConf(host)
	if err != nil {
		return nil, err
	}
	dir := b.nova.ComputeDir(host)
	local := filepath.Join(dir, "local.conf")
	// As test/openstack: the go-lxc backend (this host runs no system
	// libvirtd for the agent), no metrics listener.
	if err := os.WriteFile(local, []byte("[lxc_agent]\nbackend = lxc\nmetrics_address = off\n"), 0o644); err != nil {
		return nil, err
	}
	lxcPath := filepath.Join(dir, "state", "lxc") // [lxc_agent] lxc_path default: $state_path/lxc
	c := &compute{
		name: "lxc-agent", host: host, dir: dir, label: "lxc-agent (go-lxc)",
		logPath: filepath.Join(dir, "agent.log"), outPath: filepath.Join(dir, "agent.log"),
		argv: []string{b.agentBin, "serve", "--config-file", conf, "--config-file", local},
		env:  serviceEnv(dir),
	}
	c.monitor = func(_ int, cmdline string, srv *testenv.Server) bool {
		// liblxc's monitor: "[lxc monitor] <lxcpath> <name>", name = uuid.
		return strings.HasPrefix(cmdline, "[lxc monitor] "+lxcPath+" ") && (srv == nil || strings.HasSuffix(cmdline, " "+srv.ID))
	}
	c.helper = func(string) bool { return false }
	c.daemons = func() []int { return nil }
	built := regexp.MustCompile(`msg="instance built and running"`)
	uuidRe := regexp.MustCompile(`instance_uuid=([0-9a-f-]{36})`)
	secRe := regexp.MustCompile(`seconds=([0-9.eE+-]+)`)
	c.buildTimes = func() (map[string]float64, map[string]float64) {
		build := map[string]float64{}
		eachLine(c.logPath, func(l string) {
			if !built.MatchString(l) {
				return
			}
			u, s := uuidRe.FindStringSubmatch(l), secRe.FindStringSubmatch(l)
			if u != nil && s != nil {
				build[u[1]], _ = strconv.ParseFloat(s[1], 64)
			}
		})
		return build, nil
	}
	c.leftovers = func() []string {
		out, _ := exec.Command("lxc-ls", "-P", lxcPath, "-1").Output()
		return strings.Fields(string(out))
	}
	return c, nil
}

func (b *bench) newNovaCompute() (*compute, error) {
	host := "bench-nova-compute"
	conf, err := b.nova.WriteComputeConf(host)
	if err != nil {
		return nil, err
	}
	dir := b.nova.ComputeDir(host)
	local := filepath.Join(dir, "local.conf")
	// What the stock service needs on this host besides ComputeConf: the
	// private libvirtd (not lxc:///, whose default socket no daemon serves).
	text := fmt.Sprintf("[libvirt]\nconnection_uri = %s\n", b.libvirtd.URI())
	if b.debug {
		text += "[DEFAULT]\ndebug = True\n"
	}
	if err := os.WriteFile(local, []byte(text), 0o644); err != nil {
		return nil, err
	}
	l := b.libvirtd
	c := &compute{
		name: "nova-compute", host: host, dir: dir, label: "nova-compute (libvirt lxc)",
		logPath: filepath.Join(dir, "nova-compute.log"), outPath: filepath.Join(dir, "nova-compute.out"),
		// In libvirtd's mount namespace: privsep's loop mount of the root
		// disk must be visible to libvirt_lxc (FINDINGS.md, item 2).
		argv: []string{nsenterBin, "-t", strconv.Itoa(l.NamespacePid()), "-m", "--",
			novaComputeBin, "--config-file", conf, "--config-file", local, "--log-file", filepath.Join(dir, "nova-compute.log")},
		env: serviceEnv(dir),
	}
	// libvirt_lxc runs in a mount namespace of its own and is daemonized
	// (parent 1): it is known by libvirtd's pid file for the domain,
	// <state dir>/lxc/<domain>.pid (Dir/run is libvirtd's /run/libvirt).
	stateDir := filepath.Join(l.Dir, "run", "lxc")
	c.monitor = func(pid int, cmdline string, srv *testenv.Server) bool {
		f := strings.Fields(cmdline)
		if len(f) < 3 || filepath.Base(f[0]) != "libvirt_lxc" || f[1] != "--name" {
			return false
		}
		if srv != nil {
			if name, _ := srv.Raw["OS-EXT-SRV-ATTR:instance_name"].(string); name != f[2] {
				return false
			}
		}
		b, err := os.ReadFile(filepath.Join(stateDir, f[2]+".pid"))
		return err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(pid)
	}
	c.helper = func(cmdline string) bool {
		return strings.Contains(cmdline, "privsep-helper") && strings.Contains(cmdline, conf) && !strings.HasPrefix(cmdline, "sudo ")
	}
	c.daemons = func() []int {
		var pids []int
		for _, p := range []int{l.Pid(), l.VirtlogdPid()} {
			if p != 0 {
				pids = append(pids, p)
			}
		}
		return pids
	}
	buildRe := regexp.MustCompile(`\[instance: ([0-9a-f-]{36})\] Took ([0-9.]+) seconds to (build instance|spawn the instance on the hypervisor)`)
	c.buildTimes = func() (map[string]float64, map[string]float64) {
		build, spawn := map[string]float64{}, map[string]float64{}
		eachLine(c.logPath, func(l string) {
			if m := buildRe.FindStringSubmatch(l); m != nil {
				v, _ := strconv.ParseFloat(m[2], 64)
				if m[3] == "build instance" {
					build[m[1]] = v
				} else {
					spawn[m[1]] = v
				}
			}
		})
		return build, spawn
	}
	c.leftovers = func() []string {
		vctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, _ := l.Virsh(vctx, "list", "--all", "--name")
		return strings.Fields(out)
	}
	return c, nil
}

func (c *compute) start() error {
	out, err := os.OpenFile(c.outPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	fmt.Fprintf(out, "==== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(c.argv, " "))
	cmd := exec.Command(c.argv[0], c.argv[1:]...)
	cmd.Env, cmd.Dir = c.env, c.dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	c.cmd, c.done = cmd, make(chan struct{})
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()
	return nil
}

// stop sends SIGTERM to the service and waits; SIGKILL to its process
// group after timeout.
func (c *compute) stop(timeout time.Duration) error {
	if c.exited() {
		return nil
	}
	_ = syscall.Kill(c.pid(), syscall.SIGTERM)
	select {
	case <-c.done:
		return nil
	case <-time.After(timeout):
	}
	_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
	}
	return fmt.Errorf("%s (pid %d) did not stop within %s: killed", c.name, c.pid(), timeout)
}

// ---- scenario ----

// warmControlPlane sends one server through nova-api, the conductor, the
// scheduler and placement with both computes disabled: it ends in ERROR
// (no valid host) and is deleted. Whichever compute is measured first then
// does not pay for the control plane's first request (cold code paths and
// caches in nova-api, conductor and scheduler).
func (b *bench) warmControlPlane(ctx context.Context) error {
	t := time.Now()
	for _, c := range b.computes {
		if err := b.nova.NovaAPI(ctx, "PUT", "/os-services/"+c.svcID, map[string]any{"status": "disabled", "disabled_reason": "novacompare: control plane warm-up"}, nil); err != nil {
			return err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	id, err := b.nova.CreateServer(wctx, "bench-control-plane-warmup", b.imageID, b.flavorID)
	if err != nil {
		return err
	}
	b.servers[id] = true
	srv, err := b.nova.WaitServer(wctx, id, "ERROR")
	if err != nil {
		return fmt.Errorf("control plane warm-up: %w", err)
	}
	if srv.Host != "" {
		return fmt.Errorf("control plane warm-up: server %s went to host %q with both computes disabled", id, srv.Host)
	}
	// A server without a host is deleted by nova-api itself; it stays in
	// ERROR until then, which WaitServerGone would take for a failed delete.
	if err := b.nova.DeleteServer(wctx, id); err != nil {
		return err
	}
	if err := waitFor(wctx, "warm-up server gone", func() (bool, string, error) {
		_, err := b.nova.Server(wctx, id)
		if testenv.IsNotFound(err) {
			return true, "", nil
		}
		return false, fmt.Sprint(err), nil
	}); err != nil {
		return err
	}
	delete(b.servers, id)
	b.addStartup("control plane warm-up server (no valid host, deleted)", t)
	logf("control plane warmed up in %.1fs (%s)", time.Since(t).Seconds(), faultText(srv))
	return nil
}

// target enables c and disables other in nova (os-services), and waits
// until placement shows it (the COMPUTE_STATUS_DISABLED trait, which the
// scheduler's pre-filter uses; the ComputeFilter reads the service record).
func (b *bench) target(ctx context.Context, c, other *compute) error {
	set := func(x *compute, status string) error {
		body := map[string]any{"status": status}
		if status == "disabled" {
			body["disabled_reason"] = "novacompare: measuring " + c.name
		}
		return b.nova.NovaAPI(ctx, "PUT", "/os-services/"+x.svcID, body, nil)
	}
	if err := set(c, "enabled"); err != nil {
		return err
	}
	if err := set(other, "disabled"); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return waitFor(wctx, "placement traits after enabling "+c.name, func() (bool, string, error) {
		var got []string
		for _, x := range []*compute{c, other} {
			var tr struct {
				Traits []string `json:"traits"`
			}
			if err := b.nova.PlacementGet(wctx, "/resource_providers/"+x.rpID+"/traits", "1.6", &tr); err != nil {
				return false, err.Error(), nil
			}
			got = append(got, fmt.Sprintf("%s disabled=%v", x.name, slices.Contains(tr.Traits, "COMPUTE_STATUS_DISABLED")))
		}
		want := []string{c.name + " disabled=false", other.name + " disabled=true"}
		return slices.Equal(got, want), strings.Join(got, ", "), nil
	})
}

func (b *bench) scenario(ctx context.Context, c *compute) error {
	r := &c.res
	logf("%s: idle %s", c.name, b.idle)
	idle0, t0 := b.cpu(c), time.Now()
	if err := sleep(ctx, b.idle); err != nil {
		return err
	}
	idle1 := b.cpu(c)
	r.idleCPU = 1000 * idle1.delta(idle0).service / time.Since(t0).Seconds()
	r.svcIdle, r.helperIdle, r.daemonIdle, _ = b.serviceMem(c)

	// Warm-up: the first boot after the service started.
	logf("%s: warm-up server", c.name)
	ours0, busy0, wall0, all0 := b.ours(), machineBusy(), time.Now(), allTicks()
	c0 := b.cpu(c)
	id, boot, err := b.boot(ctx, c, "warmup")
	if err != nil {
		return err
	}
	if err := sleep(ctx, 2*time.Second); err != nil {
		return err
	}
	r.firstBoot, r.cpuFirstBoot = boot, b.cpu(c).delta(c0)
	if r.firstDelete, err = b.delete(ctx, id); err != nil {
		return err
	}

	// N servers, one after the other.
	logf("%s: %d servers, one after the other", c.name, b.n)
	ids := make([]string, 0, b.n)
	c0, ctl0 := b.cpu(c), b.controlCPU()
	for i := 0; i < b.n; i++ {
		id, boot, err := b.boot(ctx, c, fmt.Sprintf("seq%d", i+1))
		if err != nil {
			return err
		}
		ids = append(ids, id)
		r.boot = append(r.boot, boot)
	}
	// Let the last build's tail (instance action finish, logging) land.
	if err := sleep(ctx, 2*time.Second); err != nil {
		return err
	}
	c1, ctl1 := b.cpu(c), b.controlCPU()
	r.cpuBoot = c1.delta(c0).per(b.n)
	r.ctlBoot = controlDelta(ctl1, ctl0, b.n)
	logf("%s: CPU s for %d boots: service: %s; monitors: %s; daemons: %s", c.name, b.n,
		c1.service.breakdown(c0.service), c1.monitors.breakdown(c0.monitors), c1.daemons.breakdown(c0.daemons))
	logf("%s: control plane CPU s per boot: %s", c.name, fmtMap(r.ctlBoot))

	if err := sleep(ctx, b.settle); err != nil {
		return err
	}
	for _, id := range ids {
		srv, err := b.nova.Server(ctx, id)
		if err != nil {
			return err
		}
		m, err := instanceMem(c, srv)
		if err != nil {
			return err
		}
		r.instRSS = append(r.instRSS, m.monitor.rss+m.payload.rss)
		r.instPSS = append(r.instPSS, m.monitor.pss+m.payload.pss)
		r.monRSS, r.monPSS = append(r.monRSS, m.monitor.rss), append(r.monPSS, m.monitor.pss)
		r.payloadRSS, r.payloadPSS = append(r.payloadRSS, m.payload.rss), append(r.payloadPSS, m.payload.pss)
		r.procs = append(r.procs, m.procs)
	}
	r.svcLoaded, r.helperLoaded, r.daemonLoaded, r.helperCount = b.serviceMem(c)

	logf("%s: deleting the %d servers, one after the other", c.name, b.n)
	c0, ctl0 = b.cpu(c), b.controlCPU()
	for _, id := range ids {
		d, err := b.delete(ctx, id)
		if err != nil {
			return err
		}
		r.del = append(r.del, d)
	}
	if err := sleep(ctx, 2*time.Second); err != nil {
		return err
	}
	c1, ctl1 = b.cpu(c), b.controlCPU()
	ours1 := b.ours()
	r.othersShare = (float64(machineBusy()-busy0)/userHZ - ours1.sub(ours0)) / (time.Since(wall0).Seconds() * float64(runtime.NumCPU()))
	logf("%s: %.1f%% of the machine used by other work; largest other processes (CPU s): %s", c.name, 100*r.othersShare,
		topOthers(allTicks(), all0, ours1, 5))
	r.cpuDel = c1.delta(c0).per(b.n)
	r.ctlDel = controlDelta(ctl1, ctl0, b.n)
	logf("%s: CPU s for %d deletes: service: %s; daemons: %s", c.name, b.n,
		c1.service.breakdown(c0.service), c1.daemons.breakdown(c0.daemons))
	logf("%s: control plane CPU s per delete: %s", c.name, fmtMap(r.ctlDel))

	build, spawn := c.buildTimes()
	r.firstBuild, r.firstSpawn = math.NaN(), math.NaN()
	if v, ok := build[id]; ok {
		r.firstBuild = v
	}
	if v, ok := spawn[id]; ok {
		r.firstSpawn = v
	}
	for _, id := range ids {
		if v, ok := build[id]; ok {
			r.build = append(r.build, v)
		}
		if v, ok := spawn[id]; ok {
			r.spawn = append(r.spawn, v)
		}
	}
	if len(r.build) != len(ids) {
		r.notes = append(r.notes, fmt.Sprintf("%s: build log lines found for %d of %d servers", c.name, len(r.build), len(ids)))
	}
	if left := c.leftovers(); len(left) > 0 {
		return fmt.Errorf("containers/domains still defined after the deletes: %v", left)
	}
	logf("%s: done: boot median %.2fs, delete median %.2fs", c.name, median(r.boot), median(r.del))
	return nil
}

// boot creates one server and waits until it is ACTIVE on c.
func (b *bench) boot(ctx context.Context, c *compute, tag string) (string, float64, error) {
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	t := time.Now()
	id, err := b.nova.CreateServer(wctx, "bench-"+c.name+"-"+tag, b.imageID, b.flavorID)
	if err != nil {
		return "", 0, err
	}
	b.servers[id] = true
	srv, err := b.nova.WaitServer(wctx, id, "ACTIVE")
	d := time.Since(t).Seconds()
	if err != nil {
		return id, 0, fmt.Errorf("%w\n%s", err, tail(c.logPath, 40))
	}
	if srv.Host != c.host {
		return id, 0, fmt.Errorf("server %s went to host %q, not %q", id, srv.Host, c.host)
	}
	return id, d, nil
}

func (b *bench) delete(ctx context.Context, id string) (float64, error) {
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	t := time.Now()
	if err := b.nova.DeleteServer(wctx, id); err != nil {
		return 0, err
	}
	if err := b.nova.WaitServerGone(wctx, id); err != nil {
		return 0, err
	}
	delete(b.servers, id)
	return time.Since(t).Seconds(), nil
}

// ---- /proc ----

type procInfo struct {
	pid, ppid int
	comm      string
	start     uint64
	self, kid uint64 // utime+stime, cutime+cstime (ticks)
}

type snapshot struct {
	procs    map[int]procInfo
	children map[int][]int
}

func takeSnapshot() snapshot {
	s := snapshot{procs: map[int]procInfo{}, children: map[int][]int{}}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProcStat(pid); ok {
			s.procs[pid] = p
			s.children[p.ppid] = append(s.children[p.ppid], pid)
		}
	}
	return s
}

func readProcStat(pid int) (procInfo, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, false
	}
	i, j := bytes.LastIndexByte(b, ')'), bytes.IndexByte(b, '(')
	if i < 0 || j < 0 || j > i {
		return procInfo{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return procInfo{}, false
	}
	u := func(k int) uint64 { v, _ := strconv.ParseUint(f[k], 10, 64); return v }
	ppid, _ := strconv.Atoi(f[1])
	return procInfo{pid: pid, ppid: ppid, comm: string(b[j+1 : i]), start: u(19), self: u(11) + u(12), kid: u(13) + u(14)}, true
}

// tree is root and its descendants.
func (s snapshot) tree(root int) []int {
	if _, ok := s.procs[root]; !ok {
		return nil
	}
	out, queue := []int{}, []int{root}
	seen := map[int]bool{}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, p)
		queue = append(queue, s.children[p]...)
	}
	return out
}

func cmdline(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
}

type procKey struct {
	pid   int
	start uint64
}

// ticks is a CPU sample of a set of processes: ticks (own + reaped
// children) and parent per process.
type ticks struct {
	v      map[procKey]uint64 // own + reaped children
	kid    map[procKey]uint64 // reaped children
	parent map[procKey]int
	comm   map[procKey]string
}

func (s snapshot) sample(pids []int) ticks {
	t := ticks{v: map[procKey]uint64{}, kid: map[procKey]uint64{}, parent: map[procKey]int{}, comm: map[procKey]string{}}
	for _, pid := range pids {
		if p, ok := s.procs[pid]; ok {
			k := procKey{pid, p.start}
			t.v[k], t.kid[k], t.parent[k], t.comm[k] = p.self+p.kid, p.kid, p.ppid, p.comm
		}
	}
	return t
}

// sub is the CPU seconds the set used from before to t: processes alive in
// t count from their value in before (0 if new), a process that exited
// meanwhile counts if its parent was in the set (its time moved into the
// parent's reaped-children figure), and is lost otherwise.
func (t ticks) sub(before ticks) float64 {
	var d float64
	for _, v := range t.byComm(before) {
		d += v
	}
	return d
}

// byComm is sub per command name, own time and reaped children's apart
// ("name" and "name children": the time of a process that exited
// meanwhile and was reaped by its parent in the set counts there).
func (t ticks) byComm(before ticks) map[string]float64 {
	alivePid := map[int]string{}
	for k := range t.v {
		alivePid[k.pid] = t.comm[k]
	}
	d := map[string]float64{}
	for k, v := range t.v {
		kid := int64(t.kid[k]) - int64(before.kid[k])
		self := int64(v) - int64(before.v[k]) - kid
		d[t.comm[k]] += float64(self) / userHZ
		if kid != 0 {
			d[t.comm[k]+" children"] += float64(kid) / userHZ
		}
	}
	for k, v := range before.v {
		if _, ok := t.v[k]; ok {
			continue
		}
		if name, ok := alivePid[before.parent[k]]; ok {
			d[name+" children"] -= float64(v) / userHZ // reaped by a process of the set: its time is in the parent now
		}
	}
	return d
}

// breakdown formats byComm, largest first.
func (t ticks) breakdown(before ticks) string {
	d := t.byComm(before)
	names := make([]string, 0, len(d))
	for n, v := range d {
		if v >= 0.005 || v <= -0.005 {
			names = append(names, n)
		}
	}
	sort.Slice(names, func(i, j int) bool { return d[names[i]] > d[names[j]] })
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %.2f", n, d[n])
	}
	return strings.Join(parts, ", ")
}

type cpuSample struct{ service, monitors, daemons ticks }

func (a cpuSample) delta(before cpuSample) cpuSplit {
	return cpuSplit{a.service.sub(before.service), a.monitors.sub(before.monitors), a.daemons.sub(before.daemons)}
}

func (s cpuSplit) per(n int) cpuSplit {
	f := float64(n)
	return cpuSplit{s.service / f, s.monitors / f, s.daemons / f}
}

// cpu samples the three CPU sets of c: the service (its process tree and
// its detached helper daemons with theirs), the per-container monitors
// (themselves only: their children are the guests) and the hypervisor
// daemons (their trees minus the monitors).
func (b *bench) cpu(c *compute) cpuSample {
	s := takeSnapshot()
	var svc, mons, dmns []int
	if c.pid() != 0 {
		svc = s.tree(c.pid())
	}
	monSet := map[int]bool{}
	for pid := range s.procs {
		cl := cmdline(pid)
		switch {
		case c.helper(cl):
			svc = append(svc, s.tree(pid)...)
		case c.monitor(pid, cl, nil):
			mons = append(mons, pid)
			monSet[pid] = true
		}
	}
	for _, d := range c.daemons() {
		for _, p := range s.tree(d) {
			if !monSet[p] {
				dmns = append(dmns, p)
			}
		}
	}
	return cpuSample{s.sample(dedupe(svc)), s.sample(mons), s.sample(dedupe(dmns))}
}

// ours samples every process of the benchmark: this one, both computes
// with their helpers, monitors and daemons, the control plane, with their
// trees (the guests' processes are left out: they sleep).
func (b *bench) ours() ticks {
	s := takeSnapshot()
	pids := s.tree(os.Getpid())
	for _, c := range b.computes {
		if c.pid() != 0 {
			pids = append(pids, s.tree(c.pid())...)
		}
		for pid := range s.procs {
			if cl := cmdline(pid); c.helper(cl) || c.monitor(pid, cl, nil) {
				pids = append(pids, pid)
			}
		}
		for _, d := range c.daemons() {
			pids = append(pids, s.tree(d)...)
		}
	}
	ctl := b.nova.Pids()
	ctl["rabbitmq"], ctl["glance-api"] = b.rabbit.Pid(), b.glance.Pid()
	for _, p := range ctl {
		pids = append(pids, s.tree(p)...)
	}
	return s.sample(dedupe(pids))
}

// allTicks samples every process.
func allTicks() ticks {
	s := takeSnapshot()
	pids := make([]int, 0, len(s.procs))
	for pid := range s.procs {
		pids = append(pids, pid)
	}
	return s.sample(pids)
}

// topOthers lists the n command names whose processes (not in ours,
// alive at the end) used the most CPU themselves from before to after.
// Reaped children are left out: a child that ran for minutes and exited
// meanwhile would show its whole life in its parent.
func topOthers(after, before, ours ticks, n int) string {
	d := map[string]float64{}
	for k, v := range after.v {
		if _, mine := ours.v[k]; mine {
			continue
		}
		self := int64(v) - int64(after.kid[k])
		if _, ok := before.v[k]; ok {
			self -= int64(before.v[k]) - int64(before.kid[k])
		}
		d[after.comm[k]] += float64(self) / userHZ
	}
	names := make([]string, 0, len(d))
	for name, v := range d {
		if v >= 0.01 {
			names = append(names, name)
		}
	}
	sort.Slice(names, func(i, j int) bool { return d[names[i]] > d[names[j]] })
	if len(names) > n {
		names = names[:n]
	}
	parts := make([]string, len(names))
	for i, name := range names {
		parts[i] = fmt.Sprintf("%s %.2f", name, d[name])
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// machineBusy is the user, nice and system ticks of all CPUs (/proc/stat).
func machineBusy() uint64 {
	var busy uint64
	eachLine("/proc/stat", func(l string) {
		f := strings.Fields(l)
		if len(f) > 4 && f[0] == "cpu" {
			for _, v := range f[1:4] {
				n, _ := strconv.ParseUint(v, 10, 64)
				busy += n
			}
		}
	})
	return busy
}

// controlCPU samples the control plane per service: nova-api,
// nova-conductor, nova-scheduler, placement-api, mariadbd, rabbitmq and
// glance-api, each with its tree.
func (b *bench) controlCPU() map[string]ticks {
	s := takeSnapshot()
	pids := b.nova.Pids()
	pids["rabbitmq"], pids["glance-api"] = b.rabbit.Pid(), b.glance.Pid()
	out := map[string]ticks{}
	for name, p := range pids {
		out[name] = s.sample(s.tree(p))
	}
	return out
}

// controlDelta is the CPU seconds per server each control plane service
// used between two controlCPU samples.
func controlDelta(after, before map[string]ticks, n int) map[string]float64 {
	d := map[string]float64{}
	for name, t := range after {
		d[name] = t.sub(before[name]) / float64(n)
	}
	return d
}

func dedupe(pids []int) []int {
	sort.Ints(pids)
	return slices.Compact(pids)
}

// mem reads VmRSS (status) and Pss (smaps_rollup) of pid, in MiB.
func mem(pid int) memSplit {
	var m memSplit
	read := func(file, key string) float64 {
		f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/" + file)
		if err != nil {
			return 0
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				return kb / 1024
			}
		}
		return 0
	}
	m.rss, m.pss = read("status", "VmRSS"), read("smaps_rollup", "Pss")
	return m
}

func (m memSplit) add(o memSplit) memSplit { return memSplit{m.rss + o.rss, m.pss + o.pss} }

type instMem struct {
	monitor, payload memSplit
	procs            int
}

// instanceMem finds srv's monitor, its container init (the child in another
// pid namespace) and every process in that pid namespace.
func instanceMem(c *compute, srv *testenv.Server) (instMem, error) {
	s := takeSnapshot()
	var im instMem
	mon := 0
	for pid := range s.procs {
		if c.monitor(pid, cmdline(pid), srv) {
			if mon != 0 {
				return im, fmt.Errorf("server %s: two monitors (%d, %d)", srv.ID, mon, pid)
			}
			mon = pid
		}
	}
	if mon == 0 {
		return im, fmt.Errorf("server %s: no monitor process found", srv.ID)
	}
	pidNS := func(pid int) string { l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); return l }
	monNS, initNS := pidNS(mon), ""
	for _, ch := range s.children[mon] {
		if ns := pidNS(ch); ns != "" && ns != monNS {
			initNS = ns
		}
	}
	if initNS == "" {
		return im, fmt.Errorf("server %s: monitor %d has no container init", srv.ID, mon)
	}
	im.monitor = mem(mon)
	for pid := range s.procs {
		if pidNS(pid) == initNS {
			im.payload = im.payload.add(mem(pid))
			im.procs++
		}
	}
	return im, nil
}

// serviceMem: the service's main process, its helper daemons, the
// hypervisor daemons.
func (b *bench) serviceMem(c *compute) (svc, helpers, daemons memSplit, nHelpers int) {
	if c.pid() != 0 {
		svc = mem(c.pid())
	}
	s := takeSnapshot()
	for pid := range s.procs {
		if c.helper(cmdline(pid)) {
			helpers = helpers.add(mem(pid))
			nHelpers++
		}
	}
	for _, d := range c.daemons() {
		daemons = daemons.add(mem(d))
	}
	return
}

// ---- teardown ----

// teardown deletes servers still there, stops the computes and the
// control plane, and releases whatever is left under the work directory.
func (b *bench) teardown() error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if b.nova != nil && len(b.servers) > 0 {
		logf("deleting %d servers left by a failed run", len(b.servers))
		for id := range b.servers {
			_ = b.nova.DeleteServer(ctx, id)
		}
		for id := range b.servers {
			wctx, c := context.WithTimeout(ctx, 60*time.Second)
			if err := b.nova.WaitServerGone(wctx, id); err != nil {
				errs = append(errs, err)
			}
			c()
		}
	}
	for _, c := range b.computes {
		if err := c.stop(60 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	// nova's privsep daemons exit when nova-compute's socket closes.
	for _, c := range b.computes {
		deadline := time.Now().Add(10 * time.Second)
		for {
			var left []int
			for pid := range takeSnapshot().procs {
				if c.helper(cmdline(pid)) {
					left = append(left, pid)
				}
			}
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("%s: helper daemons still running, killed: %v", c.name, left))
				for _, p := range left {
					_ = syscall.Kill(p, syscall.SIGKILL)
				}
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if c := b.computes["lxc-agent"]; c != nil {
		lxcPath := filepath.Join(c.dir, "state", "lxc")
		for _, name := range c.leftovers() {
			errs = append(errs, fmt.Errorf("lxc-agent: container %s left behind: destroyed", name))
			_ = exec.Command("lxc-stop", "-P", lxcPath, "-n", name, "-k").Run()
			_ = exec.Command("lxc-destroy", "-P", lxcPath, "-n", name).Run()
		}
	}
	if b.libvirtd != nil {
		if err := b.libvirtd.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if b.nova != nil {
		if err := b.nova.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if b.glance != nil {
		if err := b.glance.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if b.rabbit != nil {
		if err := b.rabbit.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if b.workDir != "" {
		errs = append(errs, b.sweep()...)
		if b.keep || len(errs) > 0 {
			logf("work directory (configs, logs) kept: %s", b.workDir)
		} else if err := os.RemoveAll(b.workDir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// sweep releases (and reports) mounts and loop devices under the work
// directory and processes whose command line names it. The agent keeps an
// image base mounted while it runs; what it leaves after its shutdown is
// reported, not counted as an error.
func (b *bench) sweep() []error {
	var errs []error
	mounts, _ := testenv.MountsUnder(b.workDir)
	for _, m := range mounts {
		logf("still mounted after shutdown: %s: unmounting", m)
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	if len(mounts) > 0 {
		b.sweepNote(fmt.Sprintf("after the services stopped, %d mounts were left under the work directory (released): %s", len(mounts), strings.Join(mounts, ", ")))
	}
	loops, _ := testenv.LoopDevicesUnder(b.workDir)
	for _, d := range loops {
		logf("loop device %s still attached to %s: detaching", d.Dev, d.BackingFile)
		if out, err := exec.Command("losetup", "-d", d.Dev).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("losetup -d %s: %v: %s", d.Dev, err, out))
		}
	}
	if len(loops) > 0 {
		b.sweepNote(fmt.Sprintf("%d loop devices were left attached (detached)", len(loops)))
	}
	self := os.Getpid()
	for pid := range takeSnapshot().procs {
		if pid != self && strings.Contains(cmdline(pid), b.workDir) {
			errs = append(errs, fmt.Errorf("process %d still running (%s): killed", pid, cmdline(pid)))
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	return errs
}

func (b *bench) sweepNote(s string) {
	fmt.Fprintln(os.Stderr, "NOTE:", s)
}

// ---- report ----

func (b *bench) report(w io.Writer) {
	a, s := b.computes["lxc-agent"], b.computes["nova-compute"]
	fmt.Fprintf(w, "## lxc-agent vs nova-compute (libvirt LXC): same nova Zed control plane, same image, same flavor\n\n")
	fmt.Fprintf(w, "- date: %s, run took %.0f s in all (bring-up, both scenarios; teardown not included)\n", b.started.UTC().Format("2006-01-02 15:04 UTC"), time.Since(b.started).Seconds())
	fmt.Fprintf(w, "- command: `%s`\n", b.command)
	fmt.Fprintf(w, "- machine: %s\n", machine())
	fmt.Fprintf(w, "- load average: %s at start, %s at the end\n", b.loadAvg[0], b.loadAvg[1])
	fmt.Fprintf(w, "- software: %s; lxc-agent %s\n", packages(), gitRev())
	fmt.Fprintf(w, "- image: busybox-static rootfs, raw ext4 %d MiB (init + one sleep); flavor %d vCPU / %d MB / %d GB; networks \"none\"; status polled every 0.2 s\n",
		imageSizeMiB, flavorVCPUs, flavorRAMMB, flavorDiskGB)
	fmt.Fprintf(w, "- bring-up: %s; registered and up: lxc-agent %.1f s, nova-compute %.1f s after start\n", strings.Join(b.startup, ", "), a.registered.Seconds(), s.registered.Seconds())
	fmt.Fprintf(w, "- order: %s; the other compute disabled (PUT /os-services/{id}) while one is measured; N = %d sequential after 1 warm-up\n\n", strings.Join(b.order, " then "), b.n)

	fmt.Fprintf(w, "| figure | %s | %s | nova-compute / lxc-agent |\n|---|---|---|---|\n", a.label, s.label)
	row := func(name string, fa, fs func(r *result) string, ratio func(r *result) float64) {
		q := ""
		if ratio != nil {
			va, vs := ratio(&a.res), ratio(&s.res)
			if va > 0 && !math.IsNaN(vs) && !math.IsNaN(va) {
				q = fmt.Sprintf("%.1fx", vs/va)
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", name, fa(&a.res), fs(&s.res), q)
	}
	same := func(f func(r *result) string) (func(r *result) string, func(r *result) string) { return f, f }
	r2 := func(name string, f func(r *result) string, ratio func(r *result) float64) {
		fa, fs := same(f)
		row(name, fa, fs, ratio)
	}
	r2("first boot after service start (image not cached): POST → ACTIVE, s", func(r *result) string { return f2(r.firstBoot) }, func(r *result) float64 { return r.firstBoot })
	r2("first boot: compute-side build (spawn), s", func(r *result) string {
		if math.IsNaN(r.firstSpawn) {
			return f2(r.firstBuild)
		}
		return fmt.Sprintf("%s (%s)", f2(r.firstBuild), f2(r.firstSpawn))
	}, func(r *result) float64 { return r.firstBuild })
	r2("first delete: DELETE → 404, s", func(r *result) string { return f2(r.firstDelete) }, func(r *result) float64 { return r.firstDelete })
	r2(fmt.Sprintf("boot, %d sequential: POST → ACTIVE, s, median / min / max", b.n), func(r *result) string { return mmm(r.boot) }, func(r *result) float64 { return median(r.boot) })
	r2("compute-side build, s, median / min / max ¹", func(r *result) string { return mmm(r.build) }, func(r *result) float64 { return median(r.build) })
	r2("  of which spawn on the hypervisor (nova log), s, median", func(r *result) string {
		if len(r.spawn) == 0 {
			return "–"
		}
		return f2(median(r.spawn))
	}, nil)
	r2(fmt.Sprintf("delete, %d sequential: DELETE → 404, s, median / min / max", b.n), func(r *result) string { return mmm(r.del) }, func(r *result) float64 { return median(r.del) })
	r2("CPU s per boot: compute service ²", func(r *result) string { return f2(r.cpuBoot.service) }, func(r *result) float64 { return r.cpuBoot.service })
	r2("CPU s per boot: per-container monitors ³", func(r *result) string { return f2(r.cpuBoot.monitors) }, nil)
	r2("CPU s per boot: hypervisor daemons (libvirtd, virtlogd)", func(r *result) string { return f2(r.cpuBoot.daemons) }, nil)
	r2("CPU s per boot: all of the above", func(r *result) string { return f2(r.cpuBoot.total()) }, func(r *result) float64 { return r.cpuBoot.total() })
	r2("CPU s for the first boot: all of the above", func(r *result) string { return f2(r.cpuFirstBoot.total()) }, func(r *result) float64 { return r.cpuFirstBoot.total() })
	r2("CPU s per delete: service + daemons (monitors: see note 3)", func(r *result) string { return f2(r.cpuDel.total()) }, func(r *result) float64 { return r.cpuDel.total() })
	r2("control plane CPU s per boot: nova-api ⁴", func(r *result) string { return f2(r.ctlBoot["nova-api"]) }, nil)
	r2("control plane CPU s per boot: conductor, scheduler, placement, mariadb, rabbitmq, glance", func(r *result) string { return ctlOthers(r.ctlBoot) }, nil)
	r2("control plane CPU s per delete: nova-api ⁴", func(r *result) string { return f2(r.ctlDel["nova-api"]) }, nil)
	r2("control plane CPU s per delete: the others (as above)", func(r *result) string { return ctlOthers(r.ctlDel) }, nil)
	r2("idle CPU of the compute service, ms per s", func(r *result) string { return f1(r.idleCPU) }, nil)
	r2("CPU used by processes outside this benchmark while measuring, % of the machine ⁷", func(r *result) string { return f1(100 * r.othersShare) }, nil)
	r2(fmt.Sprintf("memory per running instance (%d running): RSS, MiB, median ⁵", b.n), func(r *result) string { return f1(median(r.instRSS)) }, func(r *result) float64 { return median(r.instRSS) })
	r2("  monitor + container processes, RSS, MiB", func(r *result) string {
		return f1(median(r.monRSS)) + " + " + f1(median(r.payloadRSS))
	}, nil)
	r2("memory per running instance: PSS, MiB, median", func(r *result) string { return f1(median(r.instPSS)) }, func(r *result) float64 { return median(r.instPSS) })
	r2("  monitor + container processes, PSS, MiB", func(r *result) string {
		return f1(median(r.monPSS)) + " + " + f1(median(r.payloadPSS))
	}, nil)
	r2("processes per container", func(r *result) string { return intsText(r.procs) }, nil)
	r2("compute service RSS (PSS), MiB: idle before → with N running", func(r *result) string {
		return fmt.Sprintf("%s (%s) → %s (%s)", f1(r.svcIdle.rss), f1(r.svcIdle.pss), f1(r.svcLoaded.rss), f1(r.svcLoaded.pss))
	}, func(r *result) float64 { return r.svcLoaded.rss })
	r2("helper daemons RSS (PSS), MiB: idle before → with N running ⁶", func(r *result) string {
		if r.helperLoaded.rss == 0 && r.helperIdle.rss == 0 {
			return "none"
		}
		return fmt.Sprintf("%s (%s) → %s (%s), in %d process(es)", f1(r.helperIdle.rss), f1(r.helperIdle.pss), f1(r.helperLoaded.rss), f1(r.helperLoaded.pss), r.helperCount)
	}, nil)
	r2("hypervisor daemons RSS (PSS), MiB, with N running", func(r *result) string {
		if r.daemonLoaded.rss == 0 {
			return "none"
		}
		return fmt.Sprintf("%s (%s)", f1(r.daemonLoaded.rss), f1(r.daemonLoaded.pss))
	}, nil)
	r2("service + helpers + daemons RSS with N running, MiB", func(r *result) string {
		return f1(r.svcLoaded.rss + r.helperLoaded.rss + r.daemonLoaded.rss)
	}, func(r *result) float64 { return r.svcLoaded.rss + r.helperLoaded.rss + r.daemonLoaded.rss })

	fmt.Fprintf(w, "\n1. lxc-agent: its log line \"instance built and running\" (seconds=, from the build's start to the container running, before the final instance save); nova-compute: \"Took X seconds to build instance\" (the whole _build_and_run_instance), with \"Took X seconds to spawn the instance on the hypervisor\" in parentheses.\n")
	fmt.Fprintf(w, "2. utime+stime of the service's process tree, reaped children included (/proc/<pid>/stat fields 14-17), plus nova's detached privsep-helper daemons (and their children); sampled before the first POST and 2 s after the last ACTIVE, divided by N.\n")
	fmt.Fprintf(w, "3. lxc-agent: liblxc's \"[lxc monitor]\" process of each container; nova-compute: libvirt_lxc. Their own CPU while they live (not their guests'); a monitor's last moments at delete are not seen (it is gone when sampled).\n")
	fmt.Fprintf(w, "4. Each service with its process tree. nova-api also answers this client's status polls (GET /servers/{id} every 0.2 s, each one a neutron call and database reads), so its figure grows with the time to ACTIVE / 404; the others see only what the compute and the scheduling make them do.\n")
	fmt.Fprintf(w, "5. VmRSS / Pss (smaps_rollup) of the container's monitor plus every process in the container's pid namespace, sampled %s after the last ACTIVE; median over the N instances.\n", b.settle)
	fmt.Fprintf(w, "6. nova's privsep-helper daemons (sys_admin context, started lazily by the first boot); lxc-agent has none (its short-lived forklxc start helper is a reaped child, counted in note 2).\n")
	fmt.Fprintf(w, "7. (user+nice+system ticks of /proc/stat) minus the CPU of every process of this benchmark, from the warm-up to the last delete, over %d CPUs × wall time: how busy the host was with other work. Above a few percent, timings are inflated.\n", runtime.NumCPU())
	for _, c := range []*compute{a, s} {
		for _, note := range c.res.notes {
			fmt.Fprintf(w, "\nNote: %s\n", note)
		}
	}
	fmt.Fprintf(w, "\nRaw samples (s): lxc-agent boot %s, delete %s; nova-compute boot %s, delete %s\n",
		floats(a.res.boot), floats(a.res.del), floats(s.res.boot), floats(s.res.del))
}

// ctlOthers formats the control plane services other than nova-api, and
// their sum.
func ctlOthers(m map[string]float64) string {
	var parts []string
	sum := 0.0
	for _, name := range []string{"nova-conductor", "nova-scheduler", "placement-api", "mariadbd", "rabbitmq", "glance-api"} {
		parts = append(parts, f2(m[name]))
		sum += m[name]
	}
	return strings.Join(parts, ", ") + " = " + f2(sum)
}

func fmtMap(m map[string]float64) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %.2f", n, m[n])
	}
	return strings.Join(parts, ", ")
}

func f1(v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func f2(v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func floats(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = f2(x)
	}
	return strings.Join(s, " ")
}

func intsText(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(dedupeStrings(s), ", ")
}

func dedupeStrings(s []string) []string {
	sort.Strings(s)
	return slices.Compact(s)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func mmm(v []float64) string {
	if len(v) == 0 {
		return "–"
	}
	return fmt.Sprintf("%s / %s / %s", f2(median(v)), f2(slices.Min(v)), f2(slices.Max(v)))
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func machine() string {
	model := "?"
	eachLine("/proc/cpuinfo", func(l string) {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" && model == "?" {
			model = strings.TrimSpace(v)
		}
	})
	memTotal := 0.0
	eachLine("/proc/meminfo", func(l string) {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			memTotal = kb / 1024 / 1024
		}
	})
	var u syscall.Utsname
	_ = syscall.Uname(&u)
	rel := make([]byte, 0, len(u.Release))
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	return fmt.Sprintf("nproc %d (%s), %.1f GiB RAM, kernel %s", runtime.NumCPU(), model, memTotal, rel)
}

func packages() string {
	var out []string
	for _, p := range []string{"nova-compute", "python3-nova", "libvirt-daemon", "python3-libvirt", "liblxc1"} {
		v, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", p).Output()
		if err != nil {
			v = []byte("?")
		}
		out = append(out, p+" "+string(v))
	}
	return strings.Join(out, ", ")
}

func gitRev() string {
	rev, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "(no git)"
	}
	s := "commit " + strings.TrimSpace(string(rev))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
		s += " with uncommitted changes in the work tree"
	}
	return s
}

// ---- small helpers ----

func faultText(s *testenv.Server) string {
	if s == nil || s.Fault == nil {
		return "no fault recorded"
	}
	return s.Fault.Message
}

func eachLine(path string, f func(string)) {
	fh, err := os.Open(path)
	if err != nil {
		return
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		f(sc.Text())
	}
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "---- " + path + " (tail) ----\n" + strings.Join(lines, "\n") + "\n"
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// waitFor polls f every 200 ms until it reports done, fails, or ctx ends.
func waitFor(ctx context.Context, what string, f func() (bool, string, error)) error {
	var last string
	for {
		ok, s, err := f()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		last = s
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out waiting for %s (last: %s): %w", what, last, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

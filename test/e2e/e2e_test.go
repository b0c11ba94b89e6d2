// Package e2e runs the real lxc-agent binary against real peers: RabbitMQ,
// glance-api, python3-nova's ComputeAPI, liblxc containers, netlink bridges.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/lxc-agent/lxc-agent/internal/testenv"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

var agentBin string

func TestMain(m *testing.M) {
	bin, remove, err := testenv.BuildAgent()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = bin
	code := m.Run()
	remove()
	os.Exit(code)
}

const bootLine = "lxc-agent e2e: init is up"

const inittab = `::sysinit:/bin/echo "` + bootLine + `"
::respawn:/bin/sh -c 'exec /bin/sleep 2147483647'
::shutdown:/bin/echo "e2e: halting"
`

// env is one agent under test with its peers.
type env struct {
	t         *testing.T
	dir       string
	state     string
	conf      string
	novaConf  string
	host      string
	amqp      string
	metrics   string
	agent     *exec.Cmd
	agentLog  *bytes.Buffer
	agentDone chan error
	// peerEnv is the environment of nova_peer.py (E2E_VIF_TYPE, …).
	peerEnv map[string]string
}

func newEnv(t *testing.T, glanceURL string, extraAgentConf ...string) *env {
	testenv.RequireRoot(t)
	testenv.RequireNovaPython(t)
	e := &env{t: t, dir: t.TempDir(), host: "e2e-" + uuid.NewString()[:8], amqp: testenv.RabbitMQ(t)}
	e.state = filepath.Join(e.dir, "state")
	ports, err := testenv.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	e.metrics = fmt.Sprintf("127.0.0.1:%d", ports[0])
	transport := strings.Replace(e.amqp, "amqp://", "rabbit://", 1)
	e.conf = filepath.Join(e.dir, "agent.conf")
	writeFile(t, e.conf, fmt.Sprintf(`[DEFAULT]
host = %s
state_path = %s
instances_path = $state_path/instances
transport_url = %s
shutdown_timeout = 5
%s
[lxc_agent]
metrics_address = %s
%s
`, e.host, e.state, transport, glanceSection(glanceURL), e.metrics, strings.Join(extraAgentConf, "\n")))
	e.novaConf = filepath.Join(e.dir, "nova.conf")
	writeFile(t, e.novaConf, fmt.Sprintf("[DEFAULT]\nhost = %s\ntransport_url = %s\n[upgrade_levels]\ncompute = zed\n[oslo_concurrency]\nlock_path = %s\n",
		e.host, transport, e.dir))
	t.Cleanup(e.cleanupContainers)
	return e
}

// cleanupNet removes, when the test ends (passed or not), the bridge and the
// taps a test's instances may have left if the test failed half-way.
func cleanupNet(t *testing.T, net string, ports ...string) {
	t.Cleanup(func() {
		for _, p := range ports {
			_ = exec.Command("ip", "link", "del", "tap"+p[:11]).Run()
		}
		_ = exec.Command("ip", "link", "del", "brq"+net[:11]).Run()
	})
}

func glanceSection(url string) string {
	if url == "" {
		return "# no [glance]: images come from the local image directory"
	}
	return "[glance]\nendpoint_override = " + url
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (e *env) startAgent() {
	e.t.Helper()
	e.agentLog = &bytes.Buffer{}
	// Play systemd: the agent must send READY=1 (Type=notify) once it consumes.
	sock := filepath.Join(e.dir, fmt.Sprintf("notify-%d.sock", time.Now().UnixNano()))
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		e.t.Fatal(err)
	}
	defer notify.Close()
	ready := make(chan string, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				return
			}
			if strings.Contains(string(buf[:n]), "READY=1") {
				ready <- string(buf[:n])
				return
			}
		}
	}()
	cmd := exec.Command(agentBin, "serve", "--config-file", e.conf)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	cmd.Stdout, cmd.Stderr = e.agentLog, e.agentLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.agent, e.agentDone = cmd, make(chan error, 1)
	go func() { e.agentDone <- cmd.Wait() }()
	e.t.Cleanup(func() {
		e.stopAgent(syscall.SIGTERM)
		if e.t.Failed() {
			e.t.Logf("agent log:\n%s", e.agentLog.String())
		}
	})
	select {
	case <-ready:
	case err := <-e.agentDone:
		e.t.Fatalf("agent exited: %v\n%s", err, e.agentLog.String())
	case <-time.After(30 * time.Second):
		e.t.Fatalf("agent never sent READY=1 to $NOTIFY_SOCKET\n%s", e.agentLog.String())
	}
	// READY means the consumers are up: the first call must be answered.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := e.ping(); err == nil {
			return
		} else if time.Now().After(deadline) {
			e.t.Fatalf("agent not answering: %v\n%s", err, e.agentLog.String())
		}
		select {
		case err := <-e.agentDone:
			e.t.Fatalf("agent exited: %v\n%s", err, e.agentLog.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// stopAgent signals the agent (by pid) and waits for it.
func (e *env) stopAgent(sig syscall.Signal) {
	if e.agent == nil {
		return
	}
	_ = e.agent.Process.Signal(sig)
	select {
	case <-e.agentDone:
	case <-time.After(30 * time.Second):
		_ = e.agent.Process.Kill()
		<-e.agentDone
	}
	e.agent = nil
}

func (e *env) ping() error {
	c, err := rpc.Dial(context.Background(), rpc.TransportConfig{URL: e.amqp}, "nova", nil)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Call(context.Background(), rpc.Target{Topic: "compute", Server: e.host, Namespace: "baseapi", Version: "1.0"},
		"ping", map[string]any{"arg": 1}, nil, 2*time.Second)
	return err
}

func (e *env) nova(args ...string) string {
	e.t.Helper()
	start := time.Now()
	out := testenv.Python(e.t, "nova_peer.py", e.peerEnv, append([]string{e.novaConf}, args...)...)
	e.t.Logf("nova %s: %.2fs", args[0], time.Since(start).Seconds())
	return out
}

func (e *env) lxcPath() string          { return filepath.Join(e.state, "lxc") }
func (e *env) instances() string        { return filepath.Join(e.state, "instances") }
func (e *env) instDir(id string) string { return filepath.Join(e.instances(), id) }

type record struct {
	VMState string `json:"vm_state"`
	Fault   string `json:"fault"`
}

// waitActive polls the instance record until the build finished.
func (e *env) waitActive(id string) {
	e.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		var r record
		if b, err := os.ReadFile(filepath.Join(e.instDir(id), "state.json")); err == nil && json.Unmarshal(b, &r) == nil && r.VMState == "active" {
			e.t.Logf("instance %s active", id)
			return
		}
		if b, err := os.ReadFile(filepath.Join(e.state, "faults", id+".json")); err == nil {
			e.t.Fatalf("build failed: %s\n%s", b, e.agentLog.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("instance %s not active in time\n%s", id, e.agentLog.String())
}

// initPID waits (briefly) for the container's init pid: right after a
// (re)start liblxc can report RUNNING before the pid is known.
func (e *env) initPID(id string) int {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if pid := e.pidNow(id); pid > 0 {
			return pid
		}
		if time.Now().After(deadline) {
			out, err := exec.Command("lxc-info", "-P", e.lxcPath(), "-n", id).CombinedOutput()
			e.t.Fatalf("container %s has no init pid: %v\n%s", id, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pidNow is the container's init pid, 0 while it has none.
func (e *env) pidNow(id string) int {
	out, err := exec.Command("lxc-info", "-P", e.lxcPath(), "-n", id, "-p", "-H").Output()
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return pid
}

func (e *env) waitGone(id string) {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(e.instDir(id)); os.IsNotExist(err) {
			e.t.Logf("instance %s gone", id)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("instance %s still present after terminate\n%s", id, e.agentLog.String())
}

func (e *env) cleanupContainers() {
	out, _ := exec.Command("lxc-ls", "-P", e.lxcPath(), "-1").Output()
	for _, name := range strings.Fields(string(out)) {
		_ = exec.Command("lxc-stop", "-P", e.lxcPath(), "-n", name, "-k").Run()
		_ = exec.Command("lxc-destroy", "-P", e.lxcPath(), "-n", name).Run()
	}
	if mounts, _ := testenv.MountsUnder(e.dir); len(mounts) > 0 {
		for i := len(mounts) - 1; i >= 0; i-- {
			_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
		}
	}
}

func uploadBusybox(t *testing.T, g *testenv.GlanceServer) string {
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	testenv.BusyboxRootfs(t, rootfs, inittab)
	img := filepath.Join(dir, "busybox.img")
	testenv.MakeExt4Image(t, rootfs, img, 32)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id, err := g.CreateImage(context.Background(), "busybox-e2e", "raw", "bare", f)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func nsenter(t *testing.T, pid int, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(pid), "-n"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter %v: %v: %s", args, err, out)
	}
	return string(out)
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestNovaBuildsContainer is the walking skeleton end to end: nova's
// ComputeAPI casts build_and_run_instance for a raw ext4 image in Glance with
// one network; the container runs init with the VIF's MAC, IP and MTU; the
// console and diagnostics come back through nova's calls; terminate leaves
// nothing behind.
func TestNovaBuildsContainer(t *testing.T) {
	g := testenv.Glance(t)
	image := uploadBusybox(t, g)
	e := newEnv(t, g.URL())
	e.startAgent()

	id, port, net := uuid.NewString(), uuid.NewString(), uuid.NewString()
	mac, ip, mtu := "fa:16:3e:12:34:56", "10.77.0.5/24", "1450"
	bridge, tap := "brq"+net[:11], "tap"+port[:11]
	cleanupNet(t, net, port)
	// cache_images (a long call with call-monitor heartbeats) pre-fetches.
	missing := uuid.NewString()
	var cached map[string]string
	if err := json.Unmarshal([]byte(e.nova("cache_images", image, missing)), &cached); err != nil {
		t.Fatal(err)
	}
	if cached[image] != "cached" || cached[missing] != "error" {
		t.Errorf("cache_images = %v", cached)
	}
	e.nova("build", id, image, net, port, mac, ip, "10.77.0.1", mtu)
	e.waitActive(id)

	pid := e.initPID(id)
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "init" {
		t.Errorf("container pid 1 is %q, want init", comm)
	}
	link := nsenter(t, pid, "ip", "-o", "link", "show", "eth0")
	if !strings.Contains(link, mac) || !strings.Contains(link, "mtu "+mtu) {
		t.Errorf("eth0 = %s, want mac %s mtu %s", link, mac, mtu)
	}
	if addr := nsenter(t, pid, "ip", "-o", "-4", "addr", "show", "eth0"); !strings.Contains(addr, ip) {
		t.Errorf("eth0 addresses = %s, want %s", addr, ip)
	}
	if route := nsenter(t, pid, "ip", "-4", "route"); !strings.Contains(route, "default via 10.77.0.1") {
		t.Errorf("routes = %s, want default via the gateway", route)
	}
	master, err := os.Readlink("/sys/class/net/" + tap + "/master")
	if err != nil || filepath.Base(master) != bridge {
		t.Errorf("tap %s master = %q (%v), want %s", tap, master, err, bridge)
	}

	deadline := time.Now().Add(10 * time.Second)
	var out string
	for time.Now().Before(deadline) {
		if out = e.nova("console", id, "none"); strings.Contains(out, bootLine) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(out, bootLine) {
		t.Errorf("console output %q lacks the boot line", out)
	}
	if tail := e.nova("console", id, "1"); strings.Count(tail, "\n") > 1 {
		t.Errorf("tail_length=1 returned %q", tail)
	}
	var diag struct {
		State, Driver, Hypervisor string
		MemoryMax                 int      `json:"memory_max"`
		NumNICs                   int      `json:"num_nics"`
		MACs                      []string `json:"macs"`
	}
	if err := json.Unmarshal([]byte(e.nova("diagnostics", id)), &diag); err != nil {
		t.Fatal(err)
	}
	if diag.State != "running" || diag.Hypervisor != "lxc" || diag.MemoryMax != 256 || diag.NumNICs != 1 || diag.MACs[0] != mac {
		t.Errorf("diagnostics = %+v", diag)
	}
	m := scrape(t, e.metrics)
	for _, want := range []string{`lxc_agent_instances{power_state="running"} 1`, `lxc_agent_image_cache_requests_total{result="miss"} 1`, `lxc_agent_image_cache_requests_total{result="hit"} 1`,
		`lxc_agent_build_phase_duration_seconds_count{phase="start"} 1`, `lxc_agent_rpc_requests_total{method="build_and_run_instance",result="success"} 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	e.nova("terminate", id)
	e.waitGone(id)
	testenv.AssertNoLeftovers(t, e.dir, tap)
	if out, _ := exec.Command("lxc-ls", "-P", e.lxcPath(), "-1").Output(); strings.TrimSpace(string(out)) != "" {
		t.Errorf("containers left: %s", out)
	}
	if _, err := os.Stat("/sys/class/net/" + bridge); err != nil {
		t.Errorf("bridge %s was deleted; bridges are never deleted: %v", bridge, err)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		t.Errorf("container init %d still running", pid)
	}
	e.nova("diagnostics-stopped", id)
}

// TestAgentRestartKeepsContainers: killing the agent leaves containers
// running; the next agent knows them and can terminate them.
func TestAgentRestartKeepsContainers(t *testing.T) {
	g := testenv.Glance(t)
	image := uploadBusybox(t, g)
	e := newEnv(t, g.URL())
	e.startAgent()
	id, port, net := uuid.NewString(), uuid.NewString(), uuid.NewString()
	cleanupNet(t, net, port)
	e.nova("build", id, image, net, port, "fa:16:3e:00:00:42", "10.78.0.5/24", "10.78.0.1", "1500")
	e.waitActive(id)
	pid := e.initPID(id)

	e.stopAgent(syscall.SIGKILL)
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
		t.Fatalf("container died with the agent: %v", err)
	}
	// While the agent is down the tap is deleted (its container end goes
	// with it): the next agent re-creates the pair and hot-plugs it again.
	tap := "tap" + port[:11]
	run(t, "ip", "link", "del", tap)
	e.startAgent()
	if got := e.initPID(id); got != pid {
		t.Errorf("container restarted: pid %d → %d", pid, got)
	}
	if master, err := os.Readlink("/sys/class/net/" + tap + "/master"); err != nil || filepath.Base(master) != "brq"+net[:11] {
		t.Errorf("tap %s not re-plugged into its bridge: %q %v", tap, master, err)
	}
	link := nsenter(t, pid, "ip", "-o", "link", "show", "eth0")
	addr := nsenter(t, pid, "ip", "-o", "addr", "show", "eth0")
	if !strings.Contains(link, "fa:16:3e:00:00:42") || !strings.Contains(addr, "10.78.0.5/24") {
		t.Errorf("eth0 after the re-plug: %s %s", link, addr)
	}
	if routes := nsenter(t, pid, "ip", "route"); !strings.Contains(routes, "default via 10.78.0.1") {
		t.Errorf("routes after the re-plug: %s", routes)
	}
	if diag := e.nova("diagnostics", id); !strings.Contains(diag, `"state": "running"`) {
		t.Errorf("restarted agent does not see the container running: %s", diag)
	}
	e.nova("terminate", id)
	e.waitGone(id)
	testenv.AssertNoLeftovers(t, e.dir, "tap"+port[:11])
}

func (e *env) waitFault(id string) string {
	e.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	path := filepath.Join(e.state, "faults", id+".json")
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil {
			return string(b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("build of %s did not fail\n%s", id, e.agentLog.String())
	return ""
}

func upload(t *testing.T, g *testenv.GlanceServer, name string, data []byte) string {
	t.Helper()
	id, err := g.CreateImage(context.Background(), name, "raw", "bare", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestFailedBuildLeavesNothing fails builds at each phase with real
// components and checks that nothing is left: no mount, loop device, tap,
// container or instance directory; the fault is recorded and terminate
// forgets it.
func TestFailedBuildLeavesNothing(t *testing.T) {
	g := testenv.Glance(t)
	dir := t.TempDir()
	// An ext4 image without /sbin/init: image, rootfs and network succeed,
	// the container cannot start.
	empty := filepath.Join(dir, "empty")
	if err := os.MkdirAll(filepath.Join(empty, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	noInit := filepath.Join(dir, "noinit.img")
	testenv.MakeExt4Image(t, empty, noInit, 8)
	noInitData, err := os.ReadFile(noInit)
	if err != nil {
		t.Fatal(err)
	}
	garbage := bytes.Repeat([]byte("not a filesystem "), 4096)
	cases := []struct{ name, image, want string }{
		{"image missing in glance", uuid.NewString(), "not found"},
		{"image is not a filesystem", upload(t, g, "garbage", garbage), "unsupported"},
		{"container cannot start", upload(t, g, "noinit", noInitData), "start container"},
	}
	e := newEnv(t, g.URL())
	e.startAgent()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id, port, net := uuid.NewString(), uuid.NewString(), uuid.NewString()
			cleanupNet(t, net, port)
			e.nova("build", id, c.image, net, port, "fa:16:3e:00:00:99", "10.79.0.5/24", "10.79.0.1", "1500")
			fault := e.waitFault(id)
			if !strings.Contains(strings.ToLower(fault), c.want) {
				t.Errorf("fault %s does not say %q", fault, c.want)
			}
			testenv.AssertNoLeftovers(t, e.dir, "tap"+port[:11])
			testenv.AssertNoLeftovers(t, e.dir, "tin"+port[:11])
			if _, err := os.Stat(e.instDir(id)); !os.IsNotExist(err) {
				t.Errorf("instance directory left: %v", err)
			}
			if out, _ := exec.Command("lxc-ls", "-P", e.lxcPath(), "-1").Output(); strings.TrimSpace(string(out)) != "" {
				t.Errorf("containers left: %s", out)
			}
			e.nova("terminate", id)
			deadline := time.Now().Add(30 * time.Second)
			for {
				if _, err := os.Stat(filepath.Join(e.state, "faults", id+".json")); os.IsNotExist(err) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("terminate did not forget the failed instance")
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	if err := e.ping(); err != nil {
		t.Fatalf("agent stopped answering after failed builds: %v", err)
	}
}

func (e *env) cli(args ...string) string {
	e.t.Helper()
	full := append([]string{args[0], "--config-file", e.conf}, args[1:]...)
	out, err := exec.Command(agentBin, full...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("lxc-agent %v: %v\n%s\nagent log:\n%s", full, err, out, e.agentLog.String())
	}
	return string(out)
}

// TestStandaloneCLI is the README demo without OpenStack: the agent takes
// images from its local image directory, and lxc-agent's own client commands
// publish the same compute RPCs.
func TestStandaloneCLI(t *testing.T) {
	e := newEnv(t, "")
	images := filepath.Join(e.state, "images")
	rootfs := filepath.Join(e.dir, "rootfs")
	testenv.BusyboxRootfs(t, rootfs, inittab)
	if err := os.MkdirAll(images, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.MakeExt4Image(t, rootfs, filepath.Join(images, "busybox"), 32)
	e.startAgent()

	if out := e.cli("ping"); !strings.Contains(out, `"service":"compute"`) {
		t.Errorf("ping: %s", out)
	}
	net := uuid.NewString()
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", "brq"+net[:11]).Run() })
	out := e.cli("boot", "--image", "busybox", "--name", "demo", "--memory", "128",
		"--net", net+",ip=10.80.0.5/24,gw=10.80.0.1,mtu=1400", "--wait", "60s")
	id := strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
	list := e.cli("list")
	if !strings.Contains(list, id) || !strings.Contains(list, "active") || !strings.Contains(list, "running") ||
		!strings.Contains(list, "10.80.0.5/24") {
		t.Errorf("list:\n%s", list)
	}
	var rows []struct {
		UUID string `json:"uuid"`
		VIFs []struct {
			Tap string `json:"tap"`
		} `json:"vifs"`
	}
	if err := json.Unmarshal([]byte(e.cli("list", "--json")), &rows); err != nil || len(rows) != 1 || len(rows[0].VIFs) != 1 {
		t.Fatalf("list --json: %+v %v", rows, err)
	}
	tap := rows[0].VIFs[0].Tap
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", tap).Run() })
	pid := e.initPID(id)
	if link := nsenter(t, pid, "ip", "-o", "link", "show", "eth0"); !strings.Contains(link, "mtu 1400") {
		t.Errorf("eth0: %s", link)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.cli("console", id), bootLine) {
		if time.Now().After(deadline) {
			t.Fatal("console lacks the boot line")
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.cli("delete", id)
	e.waitGone(id)
	testenv.AssertNoLeftovers(t, e.dir, tap)
	if list := e.cli("list"); strings.Contains(list, id) {
		t.Errorf("deleted instance still listed:\n%s", list)
	}
}

// snapshotRoundTrip: a file written inside the guest survives
// snapshot_instance (cast by nova's ComputeAPI, uploaded to the queued image
// in a real glance-api) and a build from the snapshot.
func snapshotRoundTrip(t *testing.T, format, wantDiskFormat string) {
	g := testenv.Glance(t)
	image := uploadBusybox(t, g)
	e := newEnv(t, g.URL(), "snapshot_format = "+format)
	e.startAgent()
	id, port, net := uuid.NewString(), uuid.NewString(), uuid.NewString()
	cleanupNet(t, net, port)
	e.nova("build", id, image, net, port, "fa:16:3e:00:00:51", "10.81.0.5/24", "10.81.0.1", "1500")
	e.waitActive(id)
	pid := e.initPID(id)
	marker := "written inside the guest " + uuid.NewString()
	if out, err := exec.Command("lxc-attach", "-P", e.lxcPath(), "-n", id, "--", "/bin/sh", "-c",
		"echo '"+marker+"' > /root/marker && sync").CombinedOutput(); err != nil {
		t.Fatalf("write inside the guest: %v: %s", err, out)
	}

	snap, err := g.QueueImage(context.Background(), "snap-of-"+id[:8], map[string]string{"instance_uuid": id, "image_type": "snapshot"})
	if err != nil {
		t.Fatal(err)
	}
	e.nova("snapshot", id, snap)
	deadline := time.Now().Add(60 * time.Second)
	var img *testenv.Image
	for {
		if img, err = g.GetImage(context.Background(), snap); err == nil && img.Status == "active" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshot image never went active: %+v %v\n%s", img, err, e.agentLog.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if img.DiskFormat != wantDiskFormat || img.ContainerFormat != "bare" || img.Size == 0 {
		t.Errorf("snapshot image = %+v", img)
	}
	if got := e.initPID(id); got != pid {
		t.Errorf("snapshot restarted the instance: pid %d → %d", pid, got)
	}
	if st, _ := exec.Command("lxc-info", "-P", e.lxcPath(), "-n", id, "-s", "-H").Output(); strings.TrimSpace(string(st)) != "RUNNING" {
		t.Errorf("instance left %s after the snapshot", st)
	}
	if m := scrape(t, e.metrics); !strings.Contains(m, `lxc_agent_snapshot_phase_duration_seconds_count{phase="freeze"} 1`) {
		t.Errorf("no freeze measured")
	}

	id2, port2 := uuid.NewString(), uuid.NewString()
	cleanupNet(t, net, port2)
	e.nova("build", id2, snap, net, port2, "fa:16:3e:00:00:52", "10.81.0.6/24", "10.81.0.1", "1500")
	e.waitActive(id2)
	out, err := exec.Command("lxc-attach", "-P", e.lxcPath(), "-n", id2, "--", "/bin/cat", "/root/marker").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != marker {
		t.Errorf("booted snapshot lacks the guest's file: %q %v", out, err)
	}
	for _, x := range []string{id, id2} {
		e.nova("terminate", x)
		e.waitGone(x)
	}
	testenv.AssertNoLeftovers(t, e.dir, "tap"+port[:11])
}

func TestSnapshotRoundTripRaw(t *testing.T) { snapshotRoundTrip(t, "raw", "raw") }

func (e *env) waitLXCState(id, want string) {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var got string
	for time.Now().Before(deadline) {
		out, _ := exec.Command("lxc-info", "-P", e.lxcPath(), "-n", id, "-s", "-H").Output()
		if got = strings.TrimSpace(string(out)); got == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("container %s is %q, want %s\n%s", id, got, want, e.agentLog.String())
}

func (e *env) vmState(id string) string {
	var r record
	b, _ := os.ReadFile(filepath.Join(e.instDir(id), "state.json"))
	_ = json.Unmarshal(b, &r)
	return r.VMState
}

// TestLifecycleThroughNova drives every lifecycle verb with nova's ComputeAPI
// against real containers.
func TestLifecycleThroughNova(t *testing.T) {
	g := testenv.Glance(t)
	image := uploadBusybox(t, g)
	e := newEnv(t, g.URL())
	e.startAgent()
	id, port, net := uuid.NewString(), uuid.NewString(), uuid.NewString()
	cleanupNet(t, net, port)
	e.nova("build", id, image, net, port, "fa:16:3e:00:00:61", "10.82.0.5/24", "10.82.0.1", "1500")
	e.waitActive(id)
	pid := e.initPID(id)

	steps := []struct{ verb, lxc, vm string }{
		{"stop", "STOPPED", "stopped"},
		{"start", "RUNNING", "active"},
		{"pause", "FROZEN", "paused"},
		{"unpause", "RUNNING", "active"},
		{"suspend", "FROZEN", "suspended"},
		{"resume", "RUNNING", "active"},
		{"reboot-soft", "RUNNING", "active"},
		{"reboot-hard", "RUNNING", "active"},
		{"stop-hard", "STOPPED", "stopped"},
		{"start", "RUNNING", "active"},
	}
	for _, s := range steps {
		e.nova(s.verb, id)
		e.waitLXCState(id, s.lxc)
		deadline := time.Now().Add(30 * time.Second)
		for e.vmState(id) != s.vm && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if got := e.vmState(id); got != s.vm {
			t.Errorf("after %s: vm_state %q, want %q", s.verb, got, s.vm)
		}
		if s.verb == "reboot-soft" || s.verb == "reboot-hard" {
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				if p := e.pidNow(id); p != 0 && p != pid && e.vmState(id) == "active" {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			e.waitLXCState(id, "RUNNING")
			if got := e.initPID(id); got == pid {
				t.Errorf("%s did not restart init (pid %d)", s.verb, pid)
			}
			pid = e.initPID(id)
		}
	}
	// The container keeps its network over stop/start: eth0 has the VIF's MAC and address.
	pid = e.initPID(id)
	if addr := nsenter(t, pid, "ip", "-o", "addr", "show", "eth0"); !strings.Contains(addr, "10.82.0.5/24") {
		t.Errorf("after restarts eth0 = %s", addr)
	}

	if diag := e.nova("get_diagnostics", id); !strings.Contains(diag, `"cpu0_time"`) || !strings.Contains(diag, `"memory": 262144`) {
		t.Errorf("get_diagnostics = %s", diag)
	}
	if up := e.nova("get_host_uptime"); !strings.Contains(up, "load average") {
		t.Errorf("get_host_uptime = %q", up)
	}
	if out := e.nova("get_vnc_console", id); !strings.Contains(out, "ConsoleTypeUnavailable") {
		t.Errorf("get_vnc_console: %s", out)
	}
	// busybox image without /etc/shadow: nova's InstancePasswordSetFailed.
	if out := e.nova("set_admin_password", id, "s3cret"); !strings.Contains(out, "InstancePasswordSetFailed") {
		t.Errorf("set_admin_password without shadow: %s", out)
	}
	if out, err := exec.Command("lxc-attach", "-P", e.lxcPath(), "-n", id, "--", "/bin/sh", "-c",
		"echo 'root:*:19000:0:99999:7:::' > /etc/shadow; echo marker > /root/before-rebuild").CombinedOutput(); err != nil {
		t.Fatalf("prepare shadow: %v %s", err, out)
	}
	if out := e.nova("set_admin_password", id, "s3cret"); !strings.Contains(out, "password set") {
		t.Errorf("set_admin_password: %s", out)
	}
	out, _ := exec.Command("lxc-attach", "-P", e.lxcPath(), "-n", id, "--", "/bin/cat", "/etc/shadow").CombinedOutput()
	if !strings.HasPrefix(string(out), "root:$6$") {
		t.Errorf("shadow inside the guest = %q", out)
	}

	// Rebuild: a fresh root filesystem from the image, same uuid, MAC and IP.
	e.nova("rebuild", id, image)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(filepath.Join(e.instDir(id), "rootfs", "root", "before-rebuild")); os.IsNotExist(err) && e.vmState(id) == "active" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.waitLXCState(id, "RUNNING")
	if _, err := os.Stat(filepath.Join(e.instDir(id), "rootfs", "root", "before-rebuild")); !os.IsNotExist(err) {
		t.Errorf("rebuild kept the old root filesystem: %v", err)
	}
	pid = e.initPID(id)
	link := nsenter(t, pid, "ip", "-o", "link", "show", "eth0")
	addr := nsenter(t, pid, "ip", "-o", "addr", "show", "eth0")
	if !strings.Contains(link, "fa:16:3e:00:00:61") || !strings.Contains(addr, "10.82.0.5/24") {
		t.Errorf("rebuild changed the NIC: %s %s", link, addr)
	}
	e.nova("terminate", id)
	e.waitGone(id)
	testenv.AssertNoLeftovers(t, e.dir, "tap"+port[:11])
}

func TestSnapshotRoundTripRootTar(t *testing.T) { snapshotRoundTrip(t, "root-tar", "root-tar") }

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// TestBootsEveryFormat: a qcow2, a GPT-partitioned raw disk and a compressed
// root tarball from Glance each boot a real container through nova's
// ComputeAPI, and terminate leaves no mount, FUSE export, loop device,
// qemu-storage-daemon or temporary file.
func TestBootsEveryFormat(t *testing.T) {
	g := testenv.Glance(t)
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	testenv.BusyboxRootfs(t, rootfs, inittab)
	ext4 := filepath.Join(dir, "root.ext4")
	testenv.MakeExt4Image(t, rootfs, ext4, 24)

	qcow2 := filepath.Join(dir, "disk.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", ext4, qcow2)

	// GPT: an 8 MiB first partition, the root filesystem in the second.
	st, err := os.Stat(ext4)
	if err != nil {
		t.Fatal(err)
	}
	rootSectors := st.Size() / 512
	gpt := filepath.Join(dir, "disk.gpt")
	run(t, "truncate", "-s", strconv.FormatInt((2048+16384+rootSectors+2048)*512, 10), gpt)
	script := fmt.Sprintf("label: gpt\nstart=2048, size=16384, type=L\nstart=18432, size=%d, type=L\n", rootSectors)
	cmd := exec.Command("sfdisk", "-q", gpt)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v %s", err, out)
	}
	run(t, "dd", "if="+ext4, "of="+gpt, "bs=512", "seek=18432", "conv=notrunc", "status=none")

	tgz := filepath.Join(dir, "root.tar.gz")
	run(t, "tar", "-C", rootfs, "-czf", tgz, ".")

	images := []struct{ name, file, disk string }{
		{"qcow2", qcow2, "qcow2"}, {"gpt", gpt, "raw"}, {"tar.gz", tgz, "root-tar"},
	}
	e := newEnv(t, g.URL())
	e.startAgent()
	for _, im := range images {
		t.Run(im.name, func(t *testing.T) {
			f, err := os.Open(im.file)
			if err != nil {
				t.Fatal(err)
			}
			imageID, err := g.CreateImage(context.Background(), "busybox-"+im.name, im.disk, "bare", f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			id, port, net := uuid.NewString(), uuid.NewString(), uuid.NewString()
			cleanupNet(t, net, port)
			e.nova("build", id, imageID, net, port, "fa:16:3e:00:00:71", "10.83.0.5/24", "10.83.0.1", "1500")
			e.waitActive(id)
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(e.nova("console", id, "none"), bootLine) {
				if time.Now().After(deadline) {
					t.Fatal("no boot line on the console")
				}
				time.Sleep(300 * time.Millisecond)
			}
			e.nova("terminate", id)
			e.waitGone(id)
			testenv.AssertNoLeftovers(t, e.dir, "tap"+port[:11])
			if mounts, _ := exec.Command("findmnt", "-rn", "-t", "fuse,fuse.qemu-storage-daemon,fuseblk", "-o", "TARGET").Output(); strings.Contains(string(mounts), e.dir) {
				t.Errorf("FUSE exports left: %s", mounts)
			}
			if out, _ := exec.Command("pgrep", "-f", "qemu-storage-daemon.*"+e.dir).Output(); len(out) > 0 {
				t.Errorf("qemu-storage-daemon left: %s", out)
			}
			tmp, _ := filepath.Glob(filepath.Join(e.state, "image-cache", "*", ".*"))
			for _, p := range tmp {
				if strings.Contains(filepath.Base(p), "tmp") || strings.Contains(filepath.Base(p), "part") {
					t.Errorf("temporary file left in the cache: %s", p)
				}
			}
		})
	}
}

// TestLibvirtBackendThroughNova: the same agent with [lxc_agent] backend =
// libvirt-lxc against a real libvirtd (in its own mount namespace): nova's
// ComputeAPI builds, pauses, stops, starts and terminates; libvirt makes the
// tap in the brq bridge; nothing is left.
func TestLibvirtBackendThroughNova(t *testing.T) {
	lv := testenv.Libvirtd(t)
	g := testenv.Glance(t)
	image := uploadBusybox(t, g)
	e := newEnv(t, g.URL(), "backend = libvirt-lxc", "[libvirt]", "connection_uri = "+lv.URI())
	e.startAgent()
	id, port, net := uuid.NewString(), uuid.NewString(), uuid.NewString()
	bridge, tap := "brq"+net[:11], "tap"+port[:11]
	cleanupNet(t, net, port)
	e.nova("build", id, image, net, port, "fa:16:3e:00:00:81", "10.84.0.5/24", "10.84.0.1", "1450")
	e.waitActive(id)
	master, err := os.Readlink("/sys/class/net/" + tap + "/master")
	if err != nil || filepath.Base(master) != bridge {
		t.Errorf("tap %s master = %q (%v), want %s", tap, master, err, bridge)
	}
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(e.nova("console", id, "none"), bootLine) {
		if time.Now().After(deadline) {
			t.Fatal("no boot line on the console")
		}
		time.Sleep(300 * time.Millisecond)
	}
	if diag := e.nova("diagnostics", id); !strings.Contains(diag, `"state": "running"`) || !strings.Contains(diag, "fa:16:3e:00:00:81") {
		t.Errorf("diagnostics = %s", diag)
	}
	for _, s := range []struct{ verb, vm string }{{"pause", "paused"}, {"unpause", "active"}, {"stop", "stopped"}, {"start", "active"}} {
		e.nova(s.verb, id)
		deadline := time.Now().Add(30 * time.Second)
		for e.vmState(id) != s.vm && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if got := e.vmState(id); got != s.vm {
			t.Fatalf("after %s: vm_state %q", s.verb, got)
		}
	}
	if diag := e.nova("diagnostics", id); !strings.Contains(diag, `"state": "running"`) {
		t.Errorf("after stop/start: %s", diag)
	}
	e.nova("terminate", id)
	e.waitGone(id)
	testenv.AssertNoLeftovers(t, e.dir, tap)
	if out, _ := lv.Virsh(context.Background(), "list", "--all", "--name"); strings.TrimSpace(out) != "" {
		t.Errorf("domains left: %s", out)
	}
}

// TestTwoContainersOnOneBridge: two instances on one network share its brq
// bridge and reach each other over their static addresses, with the
// network's MTU inside.
func TestTwoContainersOnOneBridge(t *testing.T) {
	g := testenv.Glance(t)
	image := uploadBusybox(t, g)
	e := newEnv(t, g.URL())
	e.startAgent()
	net := uuid.NewString()
	a, b := uuid.NewString(), uuid.NewString()
	pa, pb := uuid.NewString(), uuid.NewString()
	cleanupNet(t, net, pa, pb)
	e.nova("build", a, image, net, pa, "fa:16:3e:00:00:91", "10.91.0.5/24", "10.91.0.1", "1400")
	e.nova("build", b, image, net, pb, "fa:16:3e:00:00:92", "10.91.0.6/24", "10.91.0.1", "1400")
	e.waitActive(a)
	e.waitActive(b)
	pidA, pidB := e.initPID(a), e.initPID(b)
	if l := nsenter(t, pidA, "ip", "-o", "link", "show", "eth0"); !strings.Contains(l, "mtu 1400") {
		t.Errorf("eth0 of a: %s", l)
	}
	for _, c := range []struct {
		pid int
		to  string
	}{{pidA, "10.91.0.6"}, {pidB, "10.91.0.5"}} {
		out, err := exec.Command("nsenter", "-t", strconv.Itoa(c.pid), "-n", "-m", "/bin/busybox", "ping", "-c", "2", "-W", "5", c.to).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "2 packets received") {
			t.Errorf("ping %s: %v\n%s", c.to, err, out)
		}
	}
	// A large ping fits the network's MTU without fragmentation.
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pidA), "-n", "-m", "/bin/busybox", "ping", "-c", "1", "-W", "5", "-s", "1372", "10.91.0.6").CombinedOutput()
	if err != nil {
		t.Errorf("ping at the MTU: %v\n%s", err, out)
	}
	e.nova("terminate", a)
	e.nova("terminate", b)
	e.waitGone(a)
	e.waitGone(b)
	testenv.AssertNoLeftovers(t, e.dir, "tap"+pa[:11])
	testenv.AssertNoLeftovers(t, e.dir, "tap"+pb[:11])
}

// TestOVSVIFs: VIFs of type ovs through nova's ComputeAPI plug the tap into
// the integration bridge of a private Open vSwitch with the external ids
// neutron's OVS/OVN agents look for; two containers on br-int reach each
// other; terminate removes the OVS port and the veth.
func TestOVSVIFs(t *testing.T) {
	ovs := testenv.OVST(t)
	g := testenv.Glance(t)
	image := uploadBusybox(t, g)
	e := newEnv(t, g.URL(), "[os_vif_ovs]", "ovsdb_connection = "+ovs.DB)
	e.peerEnv = map[string]string{"E2E_VIF_TYPE": "ovs", "E2E_OVS_DATAPATH": ovs.Datapath}
	e.startAgent()
	t.Cleanup(func() { _, _ = ovs.Vsctl("--if-exists", "del-br", "br-int") })
	net := uuid.NewString()
	a, b := uuid.NewString(), uuid.NewString()
	pa, pb := uuid.NewString(), uuid.NewString()
	cleanupNet(t, net, pa, pb)
	e.nova("build", a, image, net, pa, "fa:16:3e:00:00:a1", "10.95.0.5/24", "10.95.0.1", "1450")
	e.nova("build", b, image, net, pb, "fa:16:3e:00:00:a2", "10.95.0.6/24", "10.95.0.1", "1450")
	e.waitActive(a)
	e.waitActive(b)
	tapA := "tap" + pa[:11]
	if br, err := ovs.Vsctl("port-to-br", tapA); err != nil || strings.TrimSpace(br) != "br-int" {
		t.Fatalf("port %s in %q: %v", tapA, br, err)
	}
	ids, err := ovs.Vsctl("get", "Interface", tapA, "external_ids")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`iface-id="` + pa + `"`, `attached-mac="fa:16:3e:00:00:a1"`, `iface-status=active`, `vm-uuid="` + a + `"`} {
		if !strings.Contains(ids, want) {
			t.Errorf("external_ids of %s = %s, want %s", tapA, ids, want)
		}
	}
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(e.initPID(a)), "-n", "-m", "/bin/busybox", "ping", "-c", "2", "-W", "5", "10.95.0.6").CombinedOutput()
	if err != nil {
		t.Errorf("ping across br-int: %v\n%s", err, out)
	}
	e.nova("terminate", a)
	e.nova("terminate", b)
	e.waitGone(a)
	e.waitGone(b)
	if ports, err := ovs.Vsctl("list-ports", "br-int"); err != nil || strings.TrimSpace(ports) != "" {
		t.Errorf("ports left in br-int: %q %v", ports, err)
	}
	testenv.AssertNoLeftovers(t, e.dir, tapA)
}

// Package openstack joins the real lxc-agent binary to a real nova Zed
// control plane (nova-api, nova-scheduler, nova-conductor, placement-api,
// glance-api, RabbitMQ, MariaDB, all Debian's packages on 127.0.0.1) and
// drives it through nova's REST API, as an operator's cloud would.
package openstack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lxc-agent/lxc-agent/internal/testenv"
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

const inittab = `::sysinit:/bin/echo "lxc-agent openstack: init is up"
::respawn:/bin/sh -c 'exec /bin/sleep 2147483647'
`

// agent is one lxc-agent process joined to the control plane.
type agent struct {
	t     *testing.T
	host  string
	dir   string
	confs []string
	cmd   *exec.Cmd
	log   *bytes.Buffer
	done  chan error
}

func (a *agent) lxcPath() string { return filepath.Join(a.dir, "state", "lxc") }

func (a *agent) start() {
	a.t.Helper()
	args := []string{"serve"}
	for _, c := range a.confs {
		args = append(args, "--config-file", c)
	}
	a.log = &bytes.Buffer{}
	cmd := exec.Command(agentBin, args...)
	cmd.Stdout, cmd.Stderr = a.log, a.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	a.cmd, a.done = cmd, make(chan error, 1)
	go func() { a.done <- cmd.Wait() }()
}

func (a *agent) stop(sig syscall.Signal) {
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Signal(sig)
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
	a.cmd = nil
}

func (a *agent) cleanupContainers() {
	out, _ := exec.Command("lxc-ls", "-P", a.lxcPath(), "-1").Output()
	for _, name := range strings.Fields(string(out)) {
		_ = exec.Command("lxc-stop", "-P", a.lxcPath(), "-n", name, "-k").Run()
		_ = exec.Command("lxc-destroy", "-P", a.lxcPath(), "-n", name).Run()
	}
	if mounts, _ := testenv.MountsUnder(a.dir); len(mounts) > 0 {
		for i := len(mounts) - 1; i >= 0; i-- {
			_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
		}
	}
}

func (a *agent) lxcState(id string) string {
	out, _ := exec.Command("lxc-info", "-P", a.lxcPath(), "-n", id, "-s", "-H").Output()
	return strings.TrimSpace(string(out))
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
	id, err := g.CreateImage(context.Background(), "busybox-openstack", "raw", "bare", f)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestServerLifecycleThroughNovaAPI: the agent runs from the nova.conf a
// stock nova-compute of this deployment would use, registers its service,
// compute node and placement provider, and servers created through nova's
// REST API go ACTIVE on it and through every lifecycle state nova expects.
func TestServerLifecycleThroughNovaAPI(t *testing.T) {
	testenv.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// The suite's broker (make test starts one) or a private one.
	amqpURL := testenv.RabbitMQ(t)
	transport := strings.Replace(amqpURL, "amqp://", "rabbit://", 1)
	g := testenv.Glance(t)
	image := uploadBusybox(t, g)
	t0 := time.Now()
	nova := testenv.NovaT(t, testenv.NovaOptions{TransportURL: transport, GlanceURL: g.URL(), ServiceDownTime: 20})
	t.Logf("control plane up in %.1fs", time.Since(t0).Seconds())

	a := &agent{t: t, host: "lxc-" + uuid.NewString()[:8], dir: t.TempDir()}
	novaConf := filepath.Join(a.dir, "nova.conf")
	writeFile(t, novaConf, nova.ComputeConf(a.host))
	// Only what differs on this test host: a private state dir, go-lxc
	// (the deployment's libvirt is not running here), no metrics port.
	local := filepath.Join(a.dir, "local.conf")
	writeFile(t, local, fmt.Sprintf("[DEFAULT]\nstate_path = %s\ninstances_path = $state_path/instances\nsync_power_state_interval = 2\n[lxc_agent]\nbackend = lxc\nmetrics_address = off\n"+
		"[oslo_messaging_notifications]\ndriver = messagingv2\n[notifications]\nnotification_format = versioned\n",
		filepath.Join(a.dir, "state")))
	a.confs = []string{novaConf, local}
	t.Cleanup(a.cleanupContainers)
	t.Cleanup(func() {
		a.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("agent log:\n%s", a.log.String())
		}
	})
	t1 := time.Now()
	a.start()

	// The service shows up and is up; the host is mapped; the hypervisor
	// reports this host's resources; placement has the provider.
	waitService(t, ctx, nova, a.host, "up")
	t.Logf("agent registered and up in %.1fs", time.Since(t1).Seconds())
	if err := nova.DiscoverHosts(ctx); err != nil {
		t.Fatal(err)
	}
	var rp string
	waitFor(t, 30*time.Second, "hypervisor", func() (bool, string) {
		hyps, err := nova.Hypervisors(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, h := range hyps {
			if h.HypervisorHostname == a.host {
				rp = h.ID
				return h.State == "up" && h.Status == "enabled", fmt.Sprintf("%+v", h)
			}
		}
		return false, fmt.Sprintf("%+v", hyps)
	})
	var inv struct {
		Inventories map[string]struct {
			Total int `json:"total"`
		} `json:"inventories"`
	}
	if err := nova.PlacementGet(ctx, "/resource_providers/"+rp+"/inventories", "1.26", &inv); err != nil {
		t.Fatal(err)
	}
	if inv.Inventories["VCPU"].Total < 1 || inv.Inventories["MEMORY_MB"].Total < 256 || inv.Inventories["DISK_GB"].Total < 1 {
		t.Fatalf("placement inventories = %+v", inv)
	}

	// Disabling the service through nova's API reaches the agent
	// (set_host_enabled): the provider gets COMPUTE_STATUS_DISABLED at once.
	var svcID string
	if svcs, err := nova.Services(ctx); err == nil {
		for _, s := range svcs {
			if s.Binary == "nova-compute" && s.Host == a.host {
				svcID = s.ID
			}
		}
	}
	traits := func() string {
		var tr struct {
			Traits []string `json:"traits"`
		}
		if err := nova.PlacementGet(ctx, "/resource_providers/"+rp+"/traits", "1.6", &tr); err != nil {
			t.Fatal(err)
		}
		return strings.Join(tr.Traits, " ")
	}
	if tr := traits(); !strings.Contains(tr, "COMPUTE_NODE") || strings.Contains(tr, "COMPUTE_STATUS_DISABLED") {
		t.Errorf("traits of an enabled compute: %s", tr)
	}
	for _, status := range []string{"disabled", "enabled"} {
		body := map[string]any{"status": status}
		if status == "disabled" {
			body["disabled_reason"] = "maintenance"
		}
		if err := nova.NovaAPI(ctx, "PUT", "/os-services/"+svcID, body, nil); err != nil {
			t.Fatalf("service %s: %v", status, err)
		}
		waitFor(t, 20*time.Second, "trait after "+status, func() (bool, string) {
			tr := traits()
			return strings.Contains(tr, "COMPUTE_STATUS_DISABLED") == (status == "disabled"), tr
		})
	}

	notes := consumeNotifications(t, amqpURL, "versioned_notifications.info")
	flavor, err := nova.CreateFlavor(ctx, "lxc-"+uuid.NewString()[:6], 1, 256, 1)
	if err != nil {
		t.Fatal(err)
	}
	t2 := time.Now()
	id, err := nova.CreateServer(ctx, "os-"+uuid.NewString()[:6], image, flavor)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := nova.WaitServer(ctx, id, "ACTIVE")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("POST /servers -> ACTIVE in %.2fs", time.Since(t2).Seconds())
	if srv.Host != a.host || srv.PowerState != 1 || srv.TaskState != "" {
		t.Fatalf("server = %+v", srv)
	}
	if st := a.lxcState(id); st != "RUNNING" {
		t.Fatalf("container state %q", st)
	}
	usage := func() map[string]int {
		var u struct {
			Usages map[string]int `json:"usages"`
		}
		if err := nova.PlacementGet(ctx, "/resource_providers/"+rp+"/usages", "1.9", &u); err != nil {
			t.Fatal(err)
		}
		return u.Usages
	}
	if u := usage(); u["VCPU"] != 1 || u["MEMORY_MB"] != 256 {
		t.Errorf("placement usage with the server = %v", u)
	}

	steps := []struct {
		action     map[string]any
		status     string
		lxc        string
		powerState int
	}{
		{map[string]any{"os-stop": nil}, "SHUTOFF", "STOPPED", 4},
		{map[string]any{"os-start": nil}, "ACTIVE", "RUNNING", 1},
		{map[string]any{"reboot": map[string]any{"type": "SOFT"}}, "ACTIVE", "RUNNING", 1},
		{map[string]any{"reboot": map[string]any{"type": "HARD"}}, "ACTIVE", "RUNNING", 1},
		{map[string]any{"pause": nil}, "PAUSED", "FROZEN", 3},
		{map[string]any{"unpause": nil}, "ACTIVE", "RUNNING", 1},
		{map[string]any{"suspend": nil}, "SUSPENDED", "FROZEN", 7},
		{map[string]any{"resume": nil}, "ACTIVE", "RUNNING", 1},
	}
	for _, s := range steps {
		ts := time.Now()
		if err := nova.ServerAction(ctx, id, s.action); err != nil {
			t.Fatalf("%v: %v", s.action, err)
		}
		// The task state clears only when the agent saved the end state.
		var got *testenv.Server
		waitFor(t, 60*time.Second, fmt.Sprintf("%v -> %s", s.action, s.status), func() (bool, string) {
			got, err = nova.Server(ctx, id)
			if err != nil {
				return false, err.Error()
			}
			return got.Status == s.status && got.TaskState == "", fmt.Sprintf("%+v", got)
		})
		if got.PowerState != s.powerState {
			t.Errorf("%v: power_state %d, want %d", s.action, got.PowerState, s.powerState)
		}
		if st := a.lxcState(id); st != s.lxc {
			t.Errorf("%v: container %s, want %s", s.action, st, s.lxc)
		}
		t.Logf("%v -> %s in %.2fs", s.action, s.status, time.Since(ts).Seconds())
	}

	// A snapshot through nova's API (createImage): nova's task states end
	// with None, the Glance image nova created goes active, and a server
	// boots from it.
	var snap struct {
		ImageID string `json:"image_id"`
	}
	ts := time.Now()
	if err := nova.NovaAPI(ctx, "POST", "/servers/"+id+"/action", map[string]any{"createImage": map[string]any{"name": "snap-" + id[:6]}}, &snap); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "snapshot "+snap.ImageID+" active", func() (bool, string) {
		img, err := g.GetImage(ctx, snap.ImageID)
		if err != nil {
			return false, err.Error()
		}
		srv, err := nova.Server(ctx, id)
		if err != nil {
			return false, err.Error()
		}
		return img.Status == "active" && srv.TaskState == "" && srv.Status == "ACTIVE", fmt.Sprintf("image %+v server %+v", img, srv)
	})
	t.Logf("createImage -> image active in %.2fs", time.Since(ts).Seconds())
	fromSnap, err := nova.CreateServer(ctx, "os-snap-"+uuid.NewString()[:6], snap.ImageID, flavor)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nova.WaitServer(ctx, fromSnap, "ACTIVE"); err != nil {
		t.Fatal(err)
	}
	if st := a.lxcState(fromSnap); st != "RUNNING" {
		t.Errorf("server from the snapshot: container %q", st)
	}
	if err := nova.DeleteServer(ctx, fromSnap); err != nil {
		t.Fatal(err)
	}
	if err := nova.WaitServerGone(ctx, fromSnap); err != nil {
		t.Fatal(err)
	}

	// Every operation left its compute event in the instance's actions.
	var actions struct {
		InstanceActions []struct {
			Action    string `json:"action"`
			RequestID string `json:"request_id"`
		} `json:"instanceActions"`
	}
	if err := nova.NovaAPI(ctx, "GET", "/servers/"+id+"/os-instance-actions", nil, &actions); err != nil {
		t.Fatal(err)
	}
	events := map[string]string{}
	for _, act := range actions.InstanceActions {
		var one struct {
			InstanceAction struct {
				Events []struct {
					Event  string `json:"event"`
					Result string `json:"result"`
				} `json:"events"`
			} `json:"instanceAction"`
		}
		if err := nova.NovaAPI(ctx, "GET", "/servers/"+id+"/os-instance-actions/"+act.RequestID, nil, &one); err != nil {
			t.Fatal(err)
		}
		for _, ev := range one.InstanceAction.Events {
			events[ev.Event] = ev.Result
		}
	}
	for _, ev := range []string{"compute__do_build_and_run_instance", "compute_stop_instance", "compute_start_instance",
		"compute_reboot_instance", "compute_pause_instance", "compute_unpause_instance", "compute_suspend_instance",
		"compute_resume_instance", "compute_snapshot_instance"} {
		if events[ev] != "Success" {
			t.Errorf("instance action event %s: %q (all: %v)", ev, events[ev], events)
		}
	}

	// A container that dies behind nova's back shows up as SHUTOFF (the
	// power-state sync), and starts again through nova.
	if out, err := exec.Command("lxc-stop", "-P", a.lxcPath(), "-n", id, "-k").CombinedOutput(); err != nil {
		t.Fatalf("lxc-stop: %v %s", err, out)
	}
	if got, err := nova.WaitServer(ctx, id, "SHUTOFF"); err != nil {
		t.Fatal(err)
	} else if got.PowerState != 4 {
		t.Errorf("after the container died: %+v", got)
	}
	if err := nova.ServerAction(ctx, id, map[string]any{"os-start": nil}); err != nil {
		t.Fatal(err)
	}
	if _, err := nova.WaitServer(ctx, id, "ACTIVE"); err != nil {
		t.Fatal(err)
	}

	td := time.Now()
	if err := nova.DeleteServer(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := nova.WaitServerGone(ctx, id); err != nil {
		t.Fatal(err)
	}
	t.Logf("DELETE -> 404 in %.2fs", time.Since(td).Seconds())
	if st := a.lxcState(id); st != "" {
		t.Errorf("container still there after delete: %q", st)
	}
	waitFor(t, 20*time.Second, "placement usage back to 0", func() (bool, string) {
		u := usage()
		return u["VCPU"] == 0 && u["MEMORY_MB"] == 0, fmt.Sprintf("%v", u)
	})
	testenv.AssertNoLeftovers(t, a.dir, "tap-none")

	// nova's versioned notifications, one pair per operation.
	waitFor(t, 20*time.Second, "versioned notifications", func() (bool, string) {
		got := notes.events(id)
		for _, want := range []string{"instance.create.start", "instance.create.end", "instance.power_off.start",
			"instance.power_off.end", "instance.power_on.end", "instance.reboot.start", "instance.reboot.end",
			"instance.pause.end", "instance.unpause.end", "instance.suspend.end", "instance.resume.end",
			"instance.snapshot.start", "instance.snapshot.end", "instance.delete.start", "instance.delete.end"} {
			if !slices.Contains(got, want) {
				return false, fmt.Sprintf("no %s in %v", want, got)
			}
		}
		return true, ""
	})
	if st := notes.state(id, "instance.create.end"); st != "active" {
		t.Errorf("instance.create.end payload state %q", st)
	}

	neutronServer(t, ctx, nova, a, image, flavor)
	libvirtCompute(t, ctx, nova, a, image, flavor)

	// Killed for longer than service_down_time, the service is down.
	a.stop(syscall.SIGKILL)
	waitService(t, ctx, nova, a.host, "down")
}

func waitFor(t *testing.T, timeout time.Duration, what string, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		ok, s := f()
		if ok {
			return
		}
		last = s
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; last: %s", what, last)
}

// notifications collects nova's versioned notifications from a queue.
type notifications struct {
	mu   sync.Mutex
	msgs []map[string]any
}

func consumeNotifications(t *testing.T, url, queue string) *notifications {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	// As oslo's notifier declares it: named after the routing key, bound
	// to the control exchange.
	if err := ch.ExchangeDeclare("nova", "topic", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, false, false, false, false, amqp.Table{}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(queue, queue, "nova", false, nil); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := &notifications{}
	go func() {
		for d := range deliveries {
			var env struct {
				Message string `json:"oslo.message"`
			}
			var m map[string]any
			if json.Unmarshal(d.Body, &env) != nil || json.Unmarshal([]byte(env.Message), &m) != nil {
				continue
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, m)
			n.mu.Unlock()
		}
	}()
	return n
}

func payloadData(m map[string]any) map[string]any {
	p, _ := m["payload"].(map[string]any)
	d, _ := p["nova_object.data"].(map[string]any)
	return d
}

// events lists the event types of the notifications about instance uuid.
func (n *notifications) events(uuid string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, m := range n.msgs {
		if payloadData(m)["uuid"] == uuid {
			et, _ := m["event_type"].(string)
			out = append(out, et)
		}
	}
	return out
}

// state is the payload's state of the first notification of eventType.
func (n *notifications) state(uuid, eventType string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.msgs {
		if d := payloadData(m); d["uuid"] == uuid && m["event_type"] == eventType {
			s, _ := d["state"].(string)
			return s
		}
	}
	return ""
}

// neutronServer: a server on a Neutron network. The agent creates the port
// bound to its host, builds network_info from Neutron (nova-api shows the
// address from the info cache), and the container has the port's MAC and
// address, the subnet's host route and name server, and its tap in the
// network's brq bridge; delete removes the port.
func neutronServer(t *testing.T, ctx context.Context, nova *testenv.Nova, a *agent, image, flavor string) {
	t.Helper()
	net := nova.Neutron.AddNetwork("lxc-net", 1450)
	nova.Neutron.AddSubnet(net.ID, "10.93.0.0/24", "10.93.0.1", []string{"10.93.0.2"}, [][2]string{{"192.168.93.0/24", "10.93.0.254"}})
	bridge := ("brq" + net.ID)[:14]
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridge).Run() })
	var created struct {
		Server struct {
			ID string `json:"id"`
		} `json:"server"`
	}
	body := map[string]any{"server": map[string]any{"name": "os-net-" + uuid.NewString()[:6], "imageRef": image,
		"flavorRef": flavor, "networks": []map[string]string{{"uuid": net.ID}}}}
	ts := time.Now()
	if err := nova.NovaAPI(ctx, "POST", "/servers", body, &created); err != nil {
		t.Fatal(err)
	}
	id := created.Server.ID
	t.Cleanup(func() { _ = nova.DeleteServer(context.Background(), id) })
	srv, err := nova.WaitServer(ctx, id, "ACTIVE")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("server on a neutron network: POST -> ACTIVE in %.2fs", time.Since(ts).Seconds())
	var port map[string]any
	for _, p := range nova.Neutron.Ports() {
		if p["device_id"] == id {
			port = p
		}
	}
	if port == nil || port["binding:host_id"] != a.host || port["device_owner"] != "compute:nova" || port["binding:vif_type"] != "bridge" {
		t.Fatalf("port of the server: %v", port)
	}
	ips, _ := port["fixed_ips"].([]any)
	if len(ips) != 1 {
		t.Fatalf("port fixed_ips: %v", port["fixed_ips"])
	}
	ip := ips[0].(map[string]any)["ip_address"].(string)
	mac := port["mac_address"].(string)
	portID := port["id"].(string)
	if addrs, _ := json.Marshal(srv.Raw["addresses"]); !strings.Contains(string(addrs), ip) {
		t.Errorf("nova-api addresses %s do not show the port's %s (info cache)", addrs, ip)
	}
	pid := initPID(t, a, id)
	in := func(args ...string) string {
		out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(pid), "-n", "-m"}, args...)...).CombinedOutput()
		if err != nil {
			t.Errorf("%v: %v %s", args, err, out)
		}
		return string(out)
	}
	link := in("ip", "-o", "link", "show", "eth0")
	if !strings.Contains(link, mac) || !strings.Contains(link, "mtu 1450") {
		t.Errorf("eth0: %s (want %s, mtu 1450)", link, mac)
	}
	if addr := in("ip", "-o", "addr", "show", "eth0"); !strings.Contains(addr, ip+"/24") {
		t.Errorf("eth0 addresses: %s (want %s/24)", addr, ip)
	}
	if routes := in("ip", "route"); !strings.Contains(routes, "default via 10.93.0.1") || !strings.Contains(routes, "192.168.93.0/24 via 10.93.0.254") {
		t.Errorf("routes: %s", routes)
	}
	if rc := in("cat", "/etc/resolv.conf"); !strings.Contains(rc, "nameserver 10.93.0.2") {
		t.Errorf("resolv.conf: %s", rc)
	}
	tap := ("tap" + portID)[:14]
	if out, _ := exec.Command("ip", "-o", "link", "show", tap).CombinedOutput(); !strings.Contains(string(out), "master "+bridge) {
		t.Errorf("tap %s not in %s: %s", tap, bridge, out)
	}

	// A second network hot-plugged through nova's API (attach_interface):
	// eth1 appears with the new port's MAC and address, then detaching it
	// (detach_interface) removes it, its tap and the port nova's agent made.
	net2 := nova.Neutron.AddNetwork("lxc-net-2", 1400)
	nova.Neutron.AddSubnet(net2.ID, "10.94.0.0/24", "10.94.0.1", nil, nil)
	bridge2 := ("brq" + net2.ID)[:14]
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridge2).Run() })
	var att struct {
		InterfaceAttachment struct {
			PortID  string `json:"port_id"`
			MAC     string `json:"mac_addr"`
			FixedIP []struct {
				IP string `json:"ip_address"`
			} `json:"fixed_ips"`
		} `json:"interfaceAttachment"`
	}
	ta := time.Now()
	if err := nova.NovaAPI(ctx, "POST", "/servers/"+id+"/os-interface", map[string]any{"interfaceAttachment": map[string]any{"net_id": net2.ID}}, &att); err != nil {
		t.Fatalf("attach interface: %v", err)
	}
	t.Logf("os-interface attach answered in %.2fs", time.Since(ta).Seconds())
	ia := att.InterfaceAttachment
	if ia.PortID == "" || len(ia.FixedIP) != 1 {
		t.Fatalf("interfaceAttachment = %+v", ia)
	}
	if l := in("ip", "-o", "addr", "show", "eth1"); !strings.Contains(l, ia.FixedIP[0].IP+"/24") {
		t.Errorf("eth1 after attach: %s (want %s/24)", l, ia.FixedIP[0].IP)
	}
	if l := in("ip", "-o", "link", "show", "eth1"); !strings.Contains(l, ia.MAC) || !strings.Contains(l, "mtu 1400") {
		t.Errorf("eth1 link after attach: %s (want %s, mtu 1400)", l, ia.MAC)
	}
	tap2 := ("tap" + ia.PortID)[:14]
	if out, _ := exec.Command("ip", "-o", "link", "show", tap2).CombinedOutput(); !strings.Contains(string(out), "master "+bridge2) {
		t.Errorf("tap %s not in %s: %s", tap2, bridge2, out)
	}
	// Neutron's network-changed event through nova-api reaches the agent
	// (external_instance_event), which refreshes the info cache from
	// Neutron: it lists the instance's ports.
	since := time.Now()
	if err := nova.NovaAPI(ctx, "POST", "/os-server-external-events", map[string]any{"events": []map[string]any{
		{"name": "network-changed", "server_uuid": id, "tag": ia.PortID}}}, nil); err != nil {
		t.Fatalf("external event: %v", err)
	}
	waitFor(t, 20*time.Second, "the agent refreshing network info on network-changed", func() (bool, string) {
		for _, r := range nova.Neutron.Requests() {
			if r.Time.After(since) && r.Method == "GET" && strings.HasSuffix(r.Path, "/ports") && strings.Contains(r.Query, id) {
				return true, ""
			}
		}
		return false, "no GET /v2.0/ports?device_id=" + id
	})
	if err := nova.NovaAPI(ctx, "DELETE", "/servers/"+id+"/os-interface/"+ia.PortID, nil, nil); err != nil {
		t.Fatalf("detach interface: %v", err)
	}
	waitFor(t, 30*time.Second, "eth1 and its port gone after detach", func() (bool, string) {
		out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "ip", "link", "show", "eth1").CombinedOutput()
		_, portLeft := nova.Neutron.Port(ia.PortID)
		_, tapErr := os.Stat("/sys/class/net/" + tap2)
		return err != nil && !portLeft && os.IsNotExist(tapErr), fmt.Sprintf("eth1: %s, port left %v, tap %v", out, portLeft, tapErr)
	})

	if err := nova.DeleteServer(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := nova.WaitServerGone(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, ok := nova.Neutron.Port(portID); ok {
		t.Errorf("the port nova's agent created is still there after delete")
	}
	if out, err := exec.Command("ip", "link", "show", tap).CombinedOutput(); err == nil {
		t.Errorf("tap left after delete: %s", out)
	}
}

// initPID is the init pid of the container id.
func initPID(t *testing.T, a *agent, id string) int {
	t.Helper()
	out, err := exec.Command("lxc-info", "-P", a.lxcPath(), "-n", id, "-p", "-H").Output()
	if err != nil {
		t.Fatalf("lxc-info: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("init pid %q: %v", out, err)
	}
	return pid
}

// libvirtCompute: a second compute host from the stock nova-compute's
// nova.conf, whose [libvirt] virt_type = lxc selects the libvirt-lxc
// backend; only the test host's specifics are overridden (a private
// libvirtd socket and state directory). A server forced onto it goes
// ACTIVE as a libvirt LXC domain, stops and starts, and is deleted.
func libvirtCompute(t *testing.T, ctx context.Context, nova *testenv.Nova, a *agent, image, flavor string) {
	t.Helper()
	lv := testenv.Libvirtd(t)
	b := &agent{t: t, host: "lxv-" + uuid.NewString()[:8], dir: t.TempDir()}
	novaConf := filepath.Join(b.dir, "nova.conf")
	writeFile(t, novaConf, nova.ComputeConf(b.host))
	local := filepath.Join(b.dir, "local.conf")
	// reserved_host_memory_mb makes the scheduler prefer the other
	// compute (more free RAM) for the reschedule check below.
	writeFile(t, local, fmt.Sprintf("[DEFAULT]\nstate_path = %s\ninstances_path = $state_path/instances\nreserved_host_memory_mb = 4096\n[libvirt]\nconnection_uri = %s\n[lxc_agent]\nmetrics_address = off\n",
		filepath.Join(b.dir, "state"), lv.URI()))
	b.confs = []string{novaConf, local}
	t.Cleanup(func() {
		b.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("libvirt agent log:\n%s", b.log.String())
		}
	})
	b.start()
	waitService(t, ctx, nova, b.host, "up")
	if err := nova.DiscoverHosts(ctx); err != nil {
		t.Fatal(err)
	}
	var hyp testenv.Hypervisor
	waitFor(t, 30*time.Second, "libvirt hypervisor", func() (bool, string) {
		hyps, err := nova.Hypervisors(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, h := range hyps {
			if h.HypervisorHostname == b.host {
				hyp = h
				return h.State == "up", fmt.Sprintf("%+v", h)
			}
		}
		return false, ""
	})
	if hyp.HypervisorType != "lxc" || hyp.HypervisorVersion == 0 {
		t.Errorf("hypervisor %+v: want type lxc and libvirt's version", hyp)
	}
	var created struct {
		Server struct {
			ID string `json:"id"`
		} `json:"server"`
	}
	body := map[string]any{"server": map[string]any{"name": "os-lv-" + uuid.NewString()[:6], "imageRef": image,
		"flavorRef": flavor, "networks": "none", "availability_zone": "nova:" + b.host}}
	ts := time.Now()
	if err := nova.NovaAPI(ctx, "POST", "/servers", body, &created); err != nil {
		t.Fatal(err)
	}
	id := created.Server.ID
	t.Cleanup(func() { _ = nova.DeleteServer(context.Background(), id) })
	srv, err := nova.WaitServer(ctx, id, "ACTIVE")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("libvirt-lxc compute: POST -> ACTIVE in %.2fs", time.Since(ts).Seconds())
	if srv.Host != b.host {
		t.Fatalf("server on %s, want %s", srv.Host, b.host)
	}
	if out, err := lv.Virsh(ctx, "domstate", id); err != nil || !strings.Contains(out, "running") {
		t.Errorf("libvirt domain %s: %s %v", id, out, err)
	}
	for _, s := range []struct {
		action map[string]any
		status string
	}{{map[string]any{"os-stop": nil}, "SHUTOFF"}, {map[string]any{"os-start": nil}, "ACTIVE"}} {
		if err := nova.ServerAction(ctx, id, s.action); err != nil {
			t.Fatal(err)
		}
		if _, err := nova.WaitServer(ctx, id, s.status); err != nil {
			t.Fatalf("%v: %v", s.action, err)
		}
	}
	if err := nova.DeleteServer(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := nova.WaitServerGone(ctx, id); err != nil {
		t.Fatal(err)
	}
	if out, err := lv.Virsh(ctx, "list", "--all", "--name"); err != nil || strings.Contains(out, id) {
		t.Errorf("domain left after delete: %s %v", out, err)
	}
	testenv.AssertNoLeftovers(t, b.dir, "tap-none")

	rescheduled(t, ctx, nova, a, b, image, flavor)
}

// rescheduled: a build that fails on the host the scheduler preferred (the
// go-lxc agent, whose container directory is made read-only for this) is
// handed back to conductor, which builds it on the alternate host.
func rescheduled(t *testing.T, ctx context.Context, nova *testenv.Nova, a, b *agent, image, flavor string) {
	t.Helper()
	lxcPath := a.lxcPath()
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	run("mount", "--bind", lxcPath, lxcPath)
	t.Cleanup(func() { _ = exec.Command("umount", lxcPath).Run() })
	run("mount", "-o", "remount,ro,bind", lxcPath)
	var created struct {
		Server struct {
			ID string `json:"id"`
		} `json:"server"`
	}
	body := map[string]any{"server": map[string]any{"name": "os-rs-" + uuid.NewString()[:6], "imageRef": image,
		"flavorRef": flavor, "networks": "none"}}
	if err := nova.NovaAPI(ctx, "POST", "/servers", body, &created); err != nil {
		t.Fatal(err)
	}
	id := created.Server.ID
	t.Cleanup(func() { _ = nova.DeleteServer(context.Background(), id) })
	srv, err := nova.WaitServer(ctx, id, "ACTIVE")
	if err != nil {
		t.Fatal(err)
	}
	run("umount", lxcPath)
	if srv.Host != b.host {
		t.Fatalf("server on %s, want the alternate %s", srv.Host, b.host)
	}
	if !strings.Contains(a.log.String(), "rescheduled through conductor") {
		t.Errorf("the first host did not reschedule (was it tried?):\n%s", a.log.String())
	}
	if err := nova.DeleteServer(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := nova.WaitServerGone(ctx, id); err != nil {
		t.Fatal(err)
	}
	testenv.AssertNoLeftovers(t, a.dir, "tap-none")
}

// waitService waits until nova-api shows host's nova-compute service in
// state ("up" or "down").
func waitService(t *testing.T, ctx context.Context, nova *testenv.Nova, host, state string) {
	t.Helper()
	waitFor(t, 60*time.Second, "nova-compute on "+host+" "+state, func() (bool, string) {
		svcs, err := nova.Services(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, s := range svcs {
			if s.Binary == "nova-compute" && s.Host == host {
				return s.State == state, fmt.Sprintf("%+v", s)
			}
		}
		return false, fmt.Sprintf("no service for %s in %+v", host, svcs)
	})
}

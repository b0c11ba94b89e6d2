package testenv

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStartPlacement(t *testing.T) {
	RequireRoot(t)
	start := time.Now()
	p := StartPlacementT(t)
	t.Logf("placement up in %.1fs", time.Since(start).Seconds())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL()+"/resource_providers", nil)
	req.Header.Set("X-Auth-Token", p.Token())
	req.Header.Set("OpenStack-API-Version", "placement 1.39")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		ResourceProviders []any `json:"resource_providers"`
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /resource_providers: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if len(out.ResourceProviders) != 0 {
		t.Fatalf("resource providers in a new placement: %v", out.ResourceProviders)
	}
}

func TestStartMariaDB(t *testing.T) {
	RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	// Deep enough that Dir/mysqld.sock would not fit in sun_path.
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	m, err := StartMariaDB(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mariadb up in %.1fs (install-db %.1fs, startup %.1fs, pid %d)", time.Since(start).Seconds(), m.InstallDB.Seconds(), m.Startup.Seconds(), m.Pid())
	sock := m.Socket
	if strings.HasPrefix(sock, dir) || len(sock) > maxSocketPath {
		t.Errorf("socket %s: want a short path outside %s", sock, dir)
	}
	defer func() {
		if err := m.Stop(); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(filepath.Dir(sock)); !os.IsNotExist(err) {
			t.Errorf("socket dir %s left after Stop: %v", filepath.Dir(sock), err)
		}
	}()
	if err := m.CreateDatabase(ctx, "nova"); err != nil {
		t.Fatal(err)
	}
	out, err := m.Query(ctx, "SHOW DATABASES")
	if err != nil || !strings.Contains(out, "nova\n") {
		t.Fatalf("show databases: %q %v", out, err)
	}
	if err := m.CreateDatabase(ctx, "x; DROP"); err == nil {
		t.Error("CreateDatabase accepted a bad name")
	}
}

func TestNeutronStub(t *testing.T) {
	s := NeutronStubT(t)
	for path, want := range map[string]int{
		"/":                                 200,
		"/v2.0/ports?device_id=x":           200,
		"/v2.0/networks.json?shared=True":   200,
		"/v2.0/security-groups":             200,
		"/v2.0/ports/0b0b0b0b-0000-0000-00": 404,
		"/v2.0/bogus":                       404,
	} {
		resp, err := http.Get(s.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != want || err != nil {
			t.Errorf("GET %s: %d (%v), want %d", path, resp.StatusCode, err, want)
		}
		if path == "/v2.0/security-groups" {
			if l, ok := body["security_groups"].([]any); !ok || len(l) != 0 {
				t.Errorf("GET %s: %v", path, body)
			}
		}
	}
	if got := len(s.Requests()); got != 6 {
		t.Errorf("%d requests recorded, want 6: %v", got, s.Requests())
	}
}

// descendants returns pid and its live descendants with their start times.
func descendants(pid int) procTree {
	children := map[int][]procStat{}
	var root *procStat
	for _, st := range allStats() {
		children[st.ppid] = append(children[st.ppid], st)
		if st.pid == pid {
			st := st
			root = &st
		}
	}
	t := procTree{}
	if root == nil {
		return t
	}
	queue := []procStat{*root}
	for len(queue) > 0 {
		st := queue[0]
		queue = queue[1:]
		if _, ok := t[st.pid]; ok {
			continue
		}
		t[st.pid] = st.start
		queue = append(queue, children[st.pid]...)
	}
	return t
}

func TestNovaControlPlane(t *testing.T) {
	RequireRoot(t)
	rabbit, glance := rabbitAndGlanceT(t, true, true)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	dir := t.TempDir()
	if d := os.Getenv("LXC_AGENT_NOVA_TEST_DIR"); d != "" {
		dir = d // keep the logs for a look
	}
	n, err := StartNova(ctx, NovaOptions{
		Dir: dir, TransportURL: rabbit.TransportURL(), GlanceURL: glance.URL(), ServiceDownTime: 20,
	})
	if err != nil {
		t.Fatalf("StartNova: %v", err)
	}
	up := time.Since(start)
	t.Logf("nova control plane up in %.1fs: %v", up.Seconds(), n.Timings)
	stopped := false
	defer func() {
		if !stopped {
			if t.Failed() {
				t.Logf("nova logs:\n%s", n.LogTails(30))
			}
			_ = n.Stop()
		}
	}()
	if up > 90*time.Second {
		t.Errorf("control plane took %v to come up, want well under 90 s", up)
	}

	svcs, err := n.Services(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"nova-conductor", "nova-scheduler"} {
		ok := false
		for _, s := range svcs {
			if s.Binary == want && s.State == "up" && s.Status == "enabled" {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s not up: %+v", want, svcs)
		}
	}

	fid, err := n.CreateFlavor(ctx, "test-flavor", 1, 256, 1)
	if err != nil {
		t.Fatal(err)
	}
	var fl struct {
		Flavor struct {
			ID    string `json:"id"`
			VCPUs int    `json:"vcpus"`
			RAM   int    `json:"ram"`
		} `json:"flavor"`
	}
	if err := n.NovaAPI(ctx, http.MethodGet, "/flavors/"+fid, nil, &fl); err != nil {
		t.Fatal(err)
	}
	if fl.Flavor.ID != fid || fl.Flavor.VCPUs != 1 || fl.Flavor.RAM != 256 {
		t.Errorf("flavor %s: %+v", fid, fl.Flavor)
	}

	hyps, err := n.Hypervisors(ctx)
	if err != nil || len(hyps) != 0 {
		t.Errorf("hypervisors: %v %v", hyps, err)
	}
	var rps struct {
		ResourceProviders []any `json:"resource_providers"`
	}
	if err := n.PlacementGet(ctx, "/resource_providers", "1.39", &rps); err != nil || len(rps.ResourceProviders) != 0 {
		t.Errorf("placement resource providers: %v %v", rps, err)
	}
	if _, err := n.Server(ctx, "00000000-0000-0000-0000-000000000000"); !IsNotFound(err) {
		t.Errorf("GET unknown server: %v, want 404", err)
	}
	st := time.Now()
	if err := n.DiscoverHosts(ctx); err != nil {
		t.Error(err)
	}
	t.Logf("DiscoverHosts %.1fs", time.Since(st).Seconds())

	conf := n.ComputeConf("cmp1")
	for _, want := range []string{"host = cmp1", "transport_url = " + rabbit.TransportURL(), "compute_driver = libvirt.LibvirtDriver",
		"virt_type = lxc", "endpoint_override = " + glance.URL(), "endpoint = " + n.PlacementURL(), "token = admin:admin",
		"endpoint_override = " + n.NeutronURL(), "service_down_time = 20", "lock_path = "} {
		if !strings.Contains(conf, want+"\n") && !strings.Contains(conf, want) {
			t.Errorf("compute conf lacks %q", want)
		}
	}
	if strings.Contains(conf, "\nconnection =") {
		t.Errorf("compute conf has a database connection:\n%s", conf)
	}
	if _, err := n.WriteComputeConf("cmp1"); err != nil {
		t.Error(err)
	}

	// Stop must end every process it started, with their children.
	pids := n.Pids()
	for _, name := range []string{"nova-api", "nova-conductor", "nova-scheduler", "placement-api", "mariadbd"} {
		if pids[name] == 0 {
			t.Errorf("no pid for %s: %v", name, pids)
		}
	}
	trees := map[string]procTree{}
	total := 0
	for name, pid := range pids {
		trees[name] = descendants(pid)
		total += len(trees[name])
	}
	neutronURL := n.NeutronURL()
	st = time.Now()
	stopped = true
	if err := n.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	t.Logf("Stop %.1fs (%d processes): %v", time.Since(st).Seconds(), total, n.StopTimings)
	for name, tree := range trees {
		if alive := tree.alive(); len(alive) > 0 {
			t.Errorf("%s: processes left after Stop: %v", name, alive)
		}
	}
	if resp, err := http.Get(neutronURL + "/"); err == nil {
		resp.Body.Close()
		t.Errorf("neutron stub still answers after Stop")
	}
	if portOpen(n.APIPort) {
		t.Errorf("nova-api port %d still open after Stop", n.APIPort)
	}
}

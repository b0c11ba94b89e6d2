package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/driver/fake"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// fakes for the manager's collaborators: they record what exists, so a test
// can check that a failed build released everything it made.
type fakeImages struct{ err error }

func (f *fakeImages) Fetch(_ context.Context, id, _ string) (string, bool, error) {
	if f.err != nil {
		return "", false, f.err
	}
	return "/images/" + id, false, nil
}

type fakeRootfs struct {
	mu       sync.Mutex
	prepared map[string]bool
	err      error
}

func (f *fakeRootfs) Prepare(_ context.Context, _, _, dir string) (string, error) {
	if f.err != nil {
		return "", f.err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.prepared[dir] = true
	rootfs := filepath.Join(dir, "rootfs")
	return rootfs, os.MkdirAll(rootfs, 0o755)
}

func (f *fakeRootfs) Release(_ context.Context, dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.prepared, dir)
	return nil
}

type fakeNet struct {
	mu      sync.Mutex
	plugged map[string]PlugSpec
	routes  map[string][]GuestRoute
	err     error
}

func (f *fakeNet) Plug(_ context.Context, v PlugSpec) (string, error) {
	if f.err != nil {
		return "", f.err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.plugged[v.Tap] = v
	return "tin" + v.Tap[3:], nil
}

func (f *fakeNet) EnsureBridge(context.Context, string, int) error { return f.err }

func (f *fakeNet) Wired(_ context.Context, v PlugSpec) (bool, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.plugged[v.Tap]
	return ok, ok, nil
}

func (f *fakeNet) GuestRoutes(_ context.Context, _ int, dev string, routes []GuestRoute) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.routes == nil {
		f.routes = map[string][]GuestRoute{}
	}
	f.routes[dev] = append(f.routes[dev], routes...)
	return nil
}

func (f *fakeNet) Unplug(_ context.Context, v PlugSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.plugged, v.Tap)
	return nil
}

type harness struct {
	m    *Manager
	drv  *fake.Driver
	img  *fakeImages
	fs   *fakeRootfs
	net  *fakeNet
	root string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{drv: fake.New(), img: &fakeImages{}, fs: &fakeRootfs{prepared: map[string]bool{}},
		net: &fakeNet{plugged: map[string]PlugSpec{}}, root: t.TempDir()}
	m, err := New(Config{Host: "h1", InstancesPath: filepath.Join(h.root, "instances"), FaultsDir: filepath.Join(h.root, "faults")},
		Deps{Driver: h.drv, Images: h.img, Rootfs: h.fs, Net: h.net})
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	return h
}

const testUUID = "0995a387-1136-4d1b-8778-c48a15e37ace"

func instancePrimitive(t *testing.T, uuid string, powerState int, nw string) json.RawMessage {
	t.Helper()
	fl := novaobj.New("Flavor", "1.2")
	fl.Set("memory_mb", 512)
	fl.Set("vcpus", 2)
	inst := novaobj.New("Instance", "2.7")
	inst.Set("uuid", uuid)
	inst.Set("display_name", "Web Server #1")
	inst.Set("power_state", powerState)
	inst.Set("flavor", fl)
	if nw != "" {
		ic := novaobj.New("InstanceInfoCache", "1.5")
		ic.Set("network_info", nw)
		inst.Set("info_cache", ic)
	}
	b, err := json.Marshal(inst)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const oneVIF = `[{"id": "3f5c6b2a-9d1e-4c4b-8a7f-1234567890ab", "address": "fa:16:3e:12:34:56", "type": "bridge",
 "devname": "tap3f5c6b2a-9d", "network": {"id": "b1c2d3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e", "bridge": "brqb1c2d3e4-f5",
 "subnets": [{"cidr": "10.0.0.0/24", "gateway": {"address": "10.0.0.1", "type": "gateway", "version": 4},
 "ips": [{"address": "10.0.0.5", "type": "fixed", "version": 4}], "version": 4},
 {"cidr": "fd00::/64", "gateway": {"address": "fd00::1", "type": "gateway", "version": 6},
 "ips": [{"address": "fd00::5", "type": "fixed", "version": 6}], "version": 6}],
 "meta": {"mtu": 1450, "should_create_bridge": true}}}]`

func (h *harness) call(t *testing.T, method string, args map[string]any) (any, error) {
	t.Helper()
	raw := map[string]json.RawMessage{}
	for k, v := range args {
		if r, ok := v.(json.RawMessage); ok {
			raw[k] = r
			continue
		}
		b, _ := json.Marshal(v)
		raw[k] = b
	}
	var h2 rpc.Handler
	for _, ep := range h.m.Endpoints() {
		if meth, ok := ep.Methods[method]; ok {
			h2 = meth.Handler
		}
	}
	if h2 == nil {
		t.Fatalf("no method %s", method)
	}
	return h2(context.Background(), &rpc.Request{Method: method, Args: raw, Context: rpc.NewRequestContext(nil)})
}

func TestBuildFromNetworkInfo(t *testing.T) {
	h := newHarness(t)
	if _, err := h.call(t, "build_and_run_instance", map[string]any{
		"instance": instancePrimitive(t, testUUID, 0, oneVIF), "image": map[string]string{"id": "img1", "disk_format": "raw"}}); err != nil {
		t.Fatal(err)
	}
	spec, err := h.drv.Spec(testUUID)
	if err != nil {
		t.Fatal(err)
	}
	if spec.MemoryMB != 512 || spec.VCPUs != 2 || spec.Hostname != "web-server-1" || len(spec.NICs) != 1 {
		t.Fatalf("spec = %+v", spec)
	}
	nic := spec.NICs[0]
	if nic.HostDev != "tin3f5c6b2a-9d" || nic.Tap != "tap3f5c6b2a-9d" || nic.Bridge != "brqb1c2d3e4-f5" || nic.MTU != 1450 ||
		nic.MAC != "fa:16:3e:12:34:56" || nic.Name != "eth0" || len(nic.Addrs) != 2 || nic.Addrs[0].String() != "10.0.0.5/24" ||
		nic.Addrs[1].String() != "fd00::5/64" || nic.Gateway4.String() != "10.0.0.1" || nic.Gateway6.String() != "fd00::1" {
		t.Errorf("nic = %+v", nic)
	}
	rec, ok := h.m.store.Get(testUUID)
	if !ok || rec.VMState != StateActive || rec.LaunchedAt == nil {
		t.Errorf("record = %+v", rec)
	}
	// A replayed build of an active instance changes nothing.
	h.drv.ResetCalls()
	if _, err := h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 0, oneVIF), "image": map[string]string{"id": "img1"}}); err != nil {
		t.Fatal(err)
	}
	if calls := h.drv.Calls(); len(calls) != 0 {
		t.Errorf("replayed build touched the driver: %v", calls)
	}
	// Terminate removes everything, twice is fine.
	for i := 0; i < 2; i++ {
		if _, err := h.call(t, "terminate_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 1, "")}); err != nil {
			t.Fatal(err)
		}
	}
	if len(h.net.plugged) != 0 || len(h.fs.prepared) != 0 {
		t.Errorf("left plugged %v prepared %v", h.net.plugged, h.fs.prepared)
	}
	if _, err := os.Stat(h.m.store.Dir(testUUID)); !os.IsNotExist(err) {
		t.Errorf("instance dir left: %v", err)
	}
	if _, err := h.drv.Info(context.Background(), testUUID); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("container left: %v", err)
	}
}

func TestLimitsFromFlavor(t *testing.T) {
	h := newHarness(t)
	h.m.cfg.PidsLimit = 4096
	raw := strings.Replace(string(instancePrimitive(t, testUUID, 0, "")), `"vcpus":2`,
		`"vcpus":2,"extra_specs":{"quota:cpu_shares":"512","quota:cpu_period":"50000","quota:cpu_quota":"25000","quota:pids":"100","lxc:swap_mb":"64","lxc:io_weight":"300"}`, 1)
	if _, err := h.call(t, "build_and_run_instance", map[string]any{"instance": json.RawMessage(raw), "image": map[string]string{"id": "i"}}); err != nil {
		t.Fatal(err)
	}
	spec, _ := h.drv.Spec(testUUID)
	want := driver.Limits{MemoryMB: 512, VCPUs: 2, CPUShares: 512, CPUPeriodUS: 50000, CPUQuotaUS: 25000, Pids: 100, SwapMB: 64, IOWeight: 300}
	if spec.Limits != want {
		t.Errorf("limits = %+v, want %+v", spec.Limits, want)
	}
	// Without extra specs, the agent's defaults.
	other := "0995a387-1136-4d1b-8778-c48a15e37acf"
	if _, err := h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, other, 0, ""), "image": map[string]string{"id": "i"}}); err != nil {
		t.Fatal(err)
	}
	spec, _ = h.drv.Spec(other)
	if spec.Limits != (driver.Limits{MemoryMB: 512, VCPUs: 2, Pids: 4096}) {
		t.Errorf("default limits = %+v", spec.Limits)
	}
}

func TestBuildFromRequestedNetworks(t *testing.T) {
	h := newHarness(t)
	h.m.cfg.DefaultGateway = "192.168.5.1"
	nr := novaobj.New("NetworkRequest", "1.3")
	nr.Set("network_id", "net-1234567890abcdef")
	nr.Set("address", "192.168.5.9")
	none := novaobj.New("NetworkRequest", "1.3")
	none.Set("network_id", "none")
	nrl := novaobj.New("NetworkRequestList", "1.1")
	nrl.Set("objects", []*novaobj.Object{nr, none})
	if _, err := h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 0, ""),
		"image": map[string]string{"id": "img"}, "requested_networks": nrl}); err != nil {
		t.Fatal(err)
	}
	spec, _ := h.drv.Spec(testUUID)
	if len(spec.NICs) != 1 {
		t.Fatalf("nics = %+v", spec.NICs)
	}
	n := spec.NICs[0]
	if n.Bridge != "brqnet-1234567" || !strings.HasPrefix(n.Tap, "tap") || len(n.Tap) != 14 || n.MTU != 1500 ||
		n.Addrs[0].String() != "192.168.5.9/24" || n.Gateway4.String() != "192.168.5.1" || !strings.HasPrefix(n.MAC, "fa:16:3e:") {
		t.Errorf("nic = %+v", n)
	}
}

// Each phase failing must undo everything the earlier phases made.
func TestFailedBuildUndoes(t *testing.T) {
	boom := errors.New("boom")
	cases := map[string]func(h *harness){
		"image":  func(h *harness) { h.img.err = boom },
		"rootfs": func(h *harness) { h.fs.err = boom },
		"plug":   func(h *harness) { h.net.err = boom },
		"create": func(h *harness) { h.drv.InjectError("Create", boom) },
		"start":  func(h *harness) { h.drv.InjectError("Start", boom) },
	}
	for name, inject := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			inject(h)
			_, err := h.call(t, "build_and_run_instance", map[string]any{
				"instance": instancePrimitive(t, testUUID, 0, oneVIF), "image": map[string]string{"id": "img"}})
			if !errors.Is(err, boom) {
				t.Fatalf("err = %v, want boom", err)
			}
			if len(h.net.plugged) != 0 || len(h.fs.prepared) != 0 {
				t.Errorf("left plugged %v prepared %v", h.net.plugged, h.fs.prepared)
			}
			if _, err := os.Stat(h.m.store.Dir(testUUID)); !os.IsNotExist(err) {
				t.Errorf("instance dir left: %v", err)
			}
			if _, err := h.drv.Info(context.Background(), testUUID); !errors.Is(err, driver.ErrNotFound) {
				t.Errorf("container left: %v", err)
			}
			rec, ok := h.m.store.Get(testUUID)
			if !ok || rec.VMState != StateError || !strings.Contains(rec.Fault, "boom") {
				t.Errorf("fault record = %+v", rec)
			}
			// The record survives a restart (a new store) and terminate forgets it.
			store, err := OpenStore(h.m.cfg.InstancesPath, h.m.cfg.FaultsDir)
			if err != nil {
				t.Fatal(err)
			}
			if r, ok := store.Get(testUUID); !ok || r.VMState != StateError {
				t.Errorf("fault lost over restart: %+v", r)
			}
			if _, err := h.call(t, "terminate_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 0, "")}); err != nil {
				t.Fatal(err)
			}
			if _, ok := h.m.store.Get(testUUID); ok {
				t.Error("terminate kept the fault record")
			}
		})
	}
}

func TestImageErrorsBecomeNovaExceptions(t *testing.T) {
	h := newHarness(t)
	var ex *rpc.Exception
	h.img.err = fmt.Errorf("disk_format vmdk: %w", ErrImageUnacceptable)
	_, err := h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 0, ""),
		"image": map[string]string{"id": "img", "disk_format": "vmdk"}})
	if !errors.As(err, &ex) || ex.Class != "ImageUnacceptable" || ex.Kwargs["image_id"] != "img" {
		t.Errorf("unacceptable image: %v", err)
	}
	h.img.err = fmt.Errorf("glance says 404: %w", ErrImageNotFound)
	_, err = h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, "0995a387-1136-4d1b-8778-c48a15e37acf", 0, ""),
		"image": map[string]string{"id": "gone"}})
	if !errors.As(err, &ex) || ex.Class != "ImageNotFound" || ex.Kwargs["image_id"] != "gone" {
		t.Errorf("missing image: %v", err)
	}
}

func TestRejectsUnsupportedVIFs(t *testing.T) {
	h := newHarness(t)
	vu := strings.Replace(oneVIF, `"type": "bridge"`, `"type": "vhostuser"`, 1)
	_, err := h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 0, vu),
		"image": map[string]string{"id": "img"}})
	var ex *rpc.Exception
	if !errors.As(err, &ex) || ex.Class != "BuildAbortException" {
		t.Errorf("vhostuser vif: %v", err)
	}
}

func TestConsoleOutput(t *testing.T) {
	h := newHarness(t)
	if _, err := h.call(t, "get_console_output", map[string]any{"instance": instancePrimitive(t, testUUID, 0, "")}); err == nil {
		t.Fatal("console of an unknown instance")
	} else if ex := rpc.ToException(err); ex.Class != "InstanceNotFound" {
		t.Fatalf("unknown instance: %s", ex.Class)
	}
	if _, err := h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 0, ""), "image": map[string]string{"id": "i"}}); err != nil {
		t.Fatal(err)
	}
	log := "one\ntwo\nthree caf\xc3\xa9\n"
	if err := os.WriteFile(consolePath(h.m.store.Dir(testUUID)), []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		tail any
		want string
	}{{nil, "one\ntwo\nthree caf\uFFFD\uFFFD\n"}, {2, "three caf\uFFFD\uFFFD\n"}, {0, ""}, {10, "one\ntwo\nthree caf\uFFFD\uFFFD\n"}} {
		out, err := h.call(t, "get_console_output", map[string]any{"instance": instancePrimitive(t, testUUID, 1, ""), "tail_length": c.tail})
		if err != nil {
			t.Fatal(err)
		}
		if out != c.want {
			t.Errorf("tail %v: %q, want %q", c.tail, out, c.want)
		}
	}
}

// nova's _tail_log keeps the last N elements of split('\n'), so a trailing
// newline counts as an (empty) line: same as Python.
func TestConsoleTailMatchesNova(t *testing.T) {
	n := 2
	if got := consoleText([]byte("a\nb\nc\n"), &n); got != "c\n" {
		t.Errorf("got %q", got)
	}
}

func TestDiagnostics(t *testing.T) {
	h := newHarness(t)
	_, err := h.call(t, "get_instance_diagnostics", map[string]any{"instance": instancePrimitive(t, testUUID, 4, "")})
	var ex *rpc.Exception
	if !errors.As(err, &ex) || ex.Class != "InstanceInvalidState" || !strings.Contains(ex.Msg, "power state shutdown") {
		t.Fatalf("stopped: %v", err)
	}
	if _, err := h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 0, oneVIF), "image": map[string]string{"id": "i"}}); err != nil {
		t.Fatal(err)
	}
	res, err := h.call(t, "get_instance_diagnostics", map[string]any{"instance": instancePrimitive(t, testUUID, 1, "")})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(res)
	var d struct {
		Data struct {
			State, Driver, Hypervisor string
			NumCPUs                   int `json:"num_cpus"`
			NumNICs                   int `json:"num_nics"`
			NICs                      []struct {
				Data struct {
					MAC string `json:"mac_address"`
				} `json:"nova_object.data"`
			} `json:"nic_details"`
		} `json:"nova_object.data"`
		Name string `json:"nova_object.name"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.Name != "Diagnostics" || d.Data.State != "running" || d.Data.Driver != "libvirt" || d.Data.Hypervisor != "lxc" ||
		d.Data.NumCPUs != 2 || d.Data.NumNICs != 1 || d.Data.NICs[0].Data.MAC != "fa:16:3e:12:34:56" {
		t.Errorf("diagnostics = %s", b)
	}
}

func TestListAndPowerStates(t *testing.T) {
	h := newHarness(t)
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("0995a387-1136-4d1b-8778-c48a15e37ac%d", i)
		if _, err := h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, id, 0, ""), "image": map[string]string{"id": "i"}}); err != nil {
			t.Fatal(err)
		}
	}
	h.drv.SetState("0995a387-1136-4d1b-8778-c48a15e37ac1", driver.Shutdown)
	got := h.m.PowerStates(context.Background())
	if got["running"] != 2 || got["shutdown"] != 1 {
		t.Errorf("power states = %v", got)
	}
	res, err := h.call(t, "list_instances", nil)
	if err != nil {
		t.Fatal(err)
	}
	if rows := res.([]InstanceSummary); len(rows) != 3 || rows[0].VMState != StateActive {
		t.Errorf("list = %+v", rows)
	}
}

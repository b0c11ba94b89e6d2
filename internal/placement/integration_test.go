package placement_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gophercloud/gophercloud/v2"

	"github.com/lxc-agent/lxc-agent/internal/keystone"
	"github.com/lxc-agent/lxc-agent/internal/placement"
	"github.com/lxc-agent/lxc-agent/internal/testenv"
)

// recorder counts requests by "METHOD path" and can run a hook before the
// next request matching a prefix (to play a concurrent writer).
type recorder struct {
	next http.RoundTripper

	mu    sync.Mutex
	reqs  []string
	hooks map[string]func()
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	key := req.Method + " " + req.URL.Path
	r.mu.Lock()
	r.reqs = append(r.reqs, key)
	var hook func()
	for prefix, h := range r.hooks {
		if strings.HasPrefix(key, prefix) {
			hook = h
			delete(r.hooks, prefix)
			break
		}
	}
	r.mu.Unlock()
	if hook != nil {
		hook()
	}
	return r.next.RoundTrip(req)
}

// take returns the requests since the last call.
func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reqs
	r.reqs = nil
	return out
}

func (r *recorder) before(prefix string, f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hooks[prefix] = f
}

func count(reqs []string, prefix string) int {
	n := 0
	for _, s := range reqs {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}

type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestIntegrationPlacement runs the client against Debian's placement-api
// (noauth2, sqlite), reached the way nova's [placement] section does with
// auth_type = admin_token.
func TestIntegrationPlacement(t *testing.T) {
	if testing.Short() {
		t.Skip("starts placement-api")
	}
	testenv.RequireRoot(t)
	p := testenv.StartPlacementT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	opts := keystone.Options{AuthType: "admin_token", Endpoint: p.URL(), Token: p.Token(), Timeout: 30 * time.Second}
	sc, err := keystone.NewServiceClient(ctx, opts, "placement")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{next: http.DefaultTransport, hooks: map[string]func(){}}
	sc.HTTPClient.Transport = rec
	// A second client, not recorded, plays the other writers.
	raw, err := keystone.NewServiceClient(ctx, opts, "placement")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := placement.New(sc, log)

	rp := uuid.NewString()
	rpPath := "/resource_providers/" + rp
	globalID := "req-" + uuid.NewString()
	ctx = placement.WithGlobalRequestID(ctx, globalID)

	// Provider: created once, found afterwards.
	gen, err := c.EnsureProvider(ctx, rp, "node-it")
	if err != nil {
		t.Fatal(err)
	}
	if gen != 0 {
		t.Errorf("new provider generation %d", gen)
	}
	if got := rec.take(); !slices.Equal(got, []string{"GET /resource_providers", "POST /resource_providers"}) {
		t.Errorf("create requests %q", got)
	}
	if gen, err = c.EnsureProvider(ctx, rp, "node-it"); err != nil || gen != 0 {
		t.Fatalf("existing provider: gen %d err %v", gen, err)
	}
	if got := rec.take(); len(got) != 1 {
		t.Errorf("existing provider requests %q", got)
	}

	// Another uuid with the same name: placement's 409 is told apart from a
	// generation conflict.
	_, err = c.EnsureProvider(ctx, uuid.NewString(), "node-it")
	if !errors.Is(err, placement.ErrNameConflict) || errors.Is(err, placement.ErrConflict) || !strings.Contains(err.Error(), rp) {
		t.Fatalf("name conflict: %v", err)
	}
	t.Logf("name conflict: %v", err)
	rec.take()

	// Inventories as the libvirt driver reports them, plus a custom class.
	inv := placement.LibvirtInventories(placement.HostResources{VCPUs: 8, MemoryMB: 16000, DiskGB: 100},
		placement.Ratios{}, placement.Reserved{MemoryMB: 512, DiskMB: 2048}, nil)
	inv["CUSTOM_LXC_SLOTS"] = placement.Inventory{Total: 64}
	if err := c.SetInventories(ctx, rp, inv); err != nil {
		t.Fatal(err)
	}
	got, gen, err := c.Inventories(ctx, rp)
	if err != nil {
		t.Fatal(err)
	}
	if gen != 1 {
		t.Errorf("generation after the first inventory PUT: %d", gen)
	}
	if got[placement.DiskGB].Reserved != 2 || got[placement.VCPU].AllocationRatio != 16 ||
		got[placement.MemoryMB].AllocationRatio != 1.5 || got["CUSTOM_LXC_SLOTS"].MaxUnit != 64 {
		t.Errorf("inventories in placement: %+v", got)
	}
	if reqs := rec.take(); count(reqs, "PUT "+rpPath+"/inventories") != 1 || count(reqs, "PUT /resource_classes/CUSTOM_LXC_SLOTS") != 1 {
		t.Errorf("first inventory requests %q", reqs)
	}

	// Unchanged: GET only, generation unchanged. Ratios passed as 0 keep
	// placement's values.
	for _, in := range []map[string]placement.Inventory{inv, got, zeroRatios(got)} {
		if err := c.SetInventories(ctx, rp, in); err != nil {
			t.Fatal(err)
		}
		if reqs := rec.take(); !slices.Equal(reqs, []string{"GET " + rpPath + "/inventories"}) {
			t.Errorf("unchanged inventory sent %q", reqs)
		}
	}
	if _, g, _ := c.Inventories(ctx, rp); g != gen {
		t.Errorf("generation moved from %d to %d without a change", gen, g)
	}
	// Why: placement bumps the generation on every inventory PUT, even an
	// identical one.
	var cur struct {
		Generation  int                            `json:"resource_provider_generation"`
		Inventories map[string]placement.Inventory `json:"inventories"`
	}
	cur.Generation, cur.Inventories = gen, got
	if _, err := raw.Put(ctx, raw.ServiceURL("resource_providers", rp, "inventories"), cur, &cur,
		&gophercloud.RequestOpts{MoreHeaders: map[string]string{"OpenStack-API-Version": "placement 1.26"}, OkCodes: []int{200}}); err != nil {
		t.Fatal(err)
	}
	if cur.Generation != gen+1 {
		t.Errorf("identical inventory PUT: generation %d -> %d", gen, cur.Generation)
	}
	rec.take()

	// Traits, including a custom one and the disabled-service trait.
	traits := []string{"COMPUTE_NODE", "COMPUTE_STATUS_DISABLED", "CUSTOM_LXC_AGENT", "COMPUTE_IMAGE_TYPE_RAW"}
	if err := c.SetTraits(ctx, rp, traits); err != nil {
		t.Fatal(err)
	}
	if reqs := rec.take(); count(reqs, "PUT /traits/CUSTOM_LXC_AGENT") != 1 || count(reqs, "PUT "+rpPath+"/traits") != 1 {
		t.Errorf("trait requests %q", reqs)
	}
	have, err := c.Traits(ctx, rp)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Sorted(slices.Values(traits))
	if !slices.Equal(have, want) {
		t.Errorf("traits %q, want %q", have, want)
	}
	rec.take()
	reversed := slices.Clone(traits)
	slices.Reverse(reversed)
	if err := c.SetTraits(ctx, rp, reversed); err != nil {
		t.Fatal(err)
	}
	if reqs := rec.take(); !slices.Equal(reqs, []string{"GET " + rpPath + "/traits"}) {
		t.Errorf("unchanged traits sent %q", reqs)
	}
	if err := c.SetTraits(ctx, rp, []string{"COMPUTE_NODE", "HW_NO_SUCH_TRAIT"}); !errors.Is(err, placement.ErrUnknownTrait) {
		t.Errorf("unknown standard trait: %v", err)
	}
	rec.take()

	// Another writer changes the provider between our GET and PUT: real
	// 409s, refreshed and retried. The other writer toggles CUSTOM_BUMP (a
	// PUT of the same traits would not move the generation).
	hdr := map[string]string{"OpenStack-API-Version": "placement 1.6"}
	if _, err := raw.Put(ctx, raw.ServiceURL("traits", "CUSTOM_BUMP"), nil, nil,
		&gophercloud.RequestOpts{MoreHeaders: hdr, OkCodes: []int{201, 204}}); err != nil {
		t.Fatal(err)
	}
	bump := func() {
		var tr struct {
			Generation int      `json:"resource_provider_generation"`
			Traits     []string `json:"traits"`
		}
		url := raw.ServiceURL("resource_providers", rp, "traits")
		if _, err := raw.Get(ctx, url, &tr, &gophercloud.RequestOpts{MoreHeaders: hdr}); err != nil {
			t.Error(err)
			return
		}
		if i := slices.Index(tr.Traits, "CUSTOM_BUMP"); i >= 0 {
			tr.Traits = slices.Delete(tr.Traits, i, i+1)
		} else {
			tr.Traits = append(tr.Traits, "CUSTOM_BUMP")
		}
		if _, err := raw.Put(ctx, url, tr, nil, &gophercloud.RequestOpts{MoreHeaders: hdr, OkCodes: []int{200}}); err != nil {
			t.Error(err)
		}
	}
	rec.before("PUT "+rpPath+"/inventories", bump)
	vcpu := inv[placement.VCPU]
	vcpu.Total = 12
	vcpu.MaxUnit = 12
	inv[placement.VCPU] = vcpu
	if err := c.SetInventories(ctx, rp, inv); err != nil {
		t.Fatal(err)
	}
	if reqs := rec.take(); count(reqs, "PUT "+rpPath+"/inventories") != 2 {
		t.Errorf("inventory conflict: want 2 PUTs, got %q", reqs)
	}
	rec.before("PUT "+rpPath+"/traits", bump)
	traits = slices.DeleteFunc(traits, func(s string) bool { return s == "COMPUTE_STATUS_DISABLED" })
	if err := c.SetTraits(ctx, rp, traits); err != nil {
		t.Fatal(err)
	}
	if reqs := rec.take(); count(reqs, "PUT "+rpPath+"/traits") != 2 {
		t.Errorf("traits conflict: want 2 PUTs, got %q", reqs)
	}
	if have, _ := c.Traits(ctx, rp); slices.Contains(have, "COMPUTE_STATUS_DISABLED") || len(have) != 3 {
		t.Errorf("traits after enabling: %q", have)
	}

	// An allocation as the scheduler makes it (PUT /allocations, 1.28+).
	consumer := uuid.NewString()
	body := map[string]any{
		"allocations": map[string]any{rp: map[string]any{
			"resources": map[string]int{"VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 10},
		}},
		"consumer_generation": nil,
		"project_id":          uuid.NewString(),
		"user_id":             uuid.NewString(),
	}
	if _, err := raw.Put(ctx, raw.ServiceURL("allocations", consumer), body, nil, &gophercloud.RequestOpts{
		MoreHeaders: map[string]string{"OpenStack-API-Version": "placement 1.28"}, OkCodes: []int{204},
	}); err != nil {
		t.Fatalf("PUT allocations: %v", err)
	}
	usages, err := c.Usages(ctx, rp)
	if err != nil {
		t.Fatal(err)
	}
	if usages["VCPU"] != 2 || usages["MEMORY_MB"] != 1024 || usages["DISK_GB"] != 10 {
		t.Errorf("usages %v", usages)
	}
	allocs, err := c.ProviderAllocations(ctx, rp)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(allocs) != fmt.Sprintf("map[%s:map[DISK_GB:10 MEMORY_MB:1024 VCPU:2]]", consumer) {
		t.Errorf("provider allocations %v", allocs)
	}

	// Dropping VCPU inventory under an allocation: InventoryInUse, no retry.
	noVCPU := zeroRatios(got)
	delete(noVCPU, placement.VCPU)
	rec.take()
	err = c.SetInventories(ctx, rp, noVCPU)
	if !errors.Is(err, placement.ErrInventoryInUse) || errors.Is(err, placement.ErrConflict) {
		t.Errorf("inventory in use: %v", err)
	}
	if n := count(rec.take(), "PUT "+rpPath+"/inventories"); n != 1 {
		t.Errorf("in-use PUT sent %d times", n)
	}
	t.Logf("inventory in use: %v", err)

	// Delete the instance's allocations: usage back to 0; twice is fine.
	if err := c.DeleteAllocations(ctx, consumer); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteAllocations(ctx, consumer); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	usages, err = c.Usages(ctx, rp)
	if err != nil {
		t.Fatal(err)
	}
	for rc, n := range usages {
		if n != 0 {
			t.Errorf("usage of %s after delete: %d", rc, n)
		}
	}
	if allocs, _ := c.ProviderAllocations(ctx, rp); len(allocs) != 0 {
		t.Errorf("allocations left: %v", allocs)
	}

	// Unknown provider.
	if _, _, err := c.Inventories(ctx, uuid.NewString()); !errors.Is(err, placement.ErrNotFound) {
		t.Errorf("unknown provider: %v", err)
	}

	// The global request id reached placement (oslo.log prints it in the
	// context part of each request line).
	logText, err := os.ReadFile(p.LogFile())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logText), globalID) {
		t.Errorf("placement's log does not mention the global request id %s", globalID)
	}
}

func zeroRatios(in map[string]placement.Inventory) map[string]placement.Inventory {
	out := make(map[string]placement.Inventory, len(in))
	for rc, v := range in {
		v.AllocationRatio = 0
		out[rc] = v
	}
	return out
}

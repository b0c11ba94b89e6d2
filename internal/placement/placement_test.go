package placement

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/gophercloud/gophercloud/v2"
)

const (
	rpUUID = "cd5e3ff6-6d7f-4f21-9a49-4ec1b7d36a34"
	other  = "0b2c7a0e-1f51-4b8a-9c6e-2f3d4e5f6a7b"
	inst   = "9a1f0e4c-8b7d-4c3e-a2f1-0d9e8c7b6a50"
)

func eq(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got %q\nwant %q", what, got, want)
	}
}

func TestEnsureProvider(t *testing.T) {
	f := newFakePlacement(t)
	c := f.client(t)
	ctx := WithGlobalRequestID(bg, "req-11111111-2222-3333-4444-555555555555")

	gen, err := c.EnsureProvider(ctx, rpUUID, "node1")
	if err != nil || gen != 0 {
		t.Fatalf("create: gen %d err %v", gen, err)
	}
	reqs := f.lastReqs()
	eq(t, "create", f.requests(), []string{"GET /resource_providers?in_tree=" + rpUUID, "POST /resource_providers"})
	for i, mv := range []string{"1.14", "1.20"} {
		if reqs[i].MV != mv || reqs[i].ReqID != "req-11111111-2222-3333-4444-555555555555" || reqs[i].Token != "admin:admin" {
			t.Errorf("request %d: %+v", i, reqs[i])
		}
	}

	f.providers[rpUUID].gen = 7
	gen, err = c.EnsureProvider(bg, rpUUID, "renamed")
	if err != nil || gen != 7 {
		t.Fatalf("existing: gen %d err %v", gen, err)
	}
	reqs = f.lastReqs()
	eq(t, "existing", f.requests(), []string{"GET /resource_providers?in_tree=" + rpUUID})
	if reqs[0].ReqID != "" {
		t.Errorf("request id sent without one in the context: %q", reqs[0].ReqID)
	}
	if f.providers[rpUUID].name != "node1" {
		t.Errorf("provider renamed to %q", f.providers[rpUUID].name)
	}
}

func TestEnsureProviderNameConflict(t *testing.T) {
	f := newFakePlacement(t)
	c := f.client(t)
	if _, err := c.EnsureProvider(bg, other, "node1"); err != nil {
		t.Fatal(err)
	}
	_, err := c.EnsureProvider(bg, rpUUID, "node1")
	if !errors.Is(err, ErrNameConflict) {
		t.Fatalf("err %v, want ErrNameConflict", err)
	}
	if errors.Is(err, ErrConflict) {
		t.Errorf("a name conflict must not look like a generation conflict: %v", err)
	}
	if !strings.Contains(err.Error(), other) {
		t.Errorf("error does not name the provider holding the name: %v", err)
	}
	var pe *Error
	if !errors.As(err, &pe) || pe.Code != CodeDuplicateName || pe.RequestID != "req-fake" {
		t.Errorf("placement error not in the chain: %#v", pe)
	}
	t.Log(err)
}

func TestEnsureProviderCreatedConcurrently(t *testing.T) {
	f := newFakePlacement(t)
	c := f.client(t)
	if _, err := c.EnsureProvider(bg, rpUUID, "node1"); err != nil {
		t.Fatal(err)
	}
	f.providers[rpUUID].gen = 3
	f.inTreeEmpty = true
	f.requests()
	gen, err := c.EnsureProvider(bg, rpUUID, "node1")
	if err != nil || gen != 3 {
		t.Fatalf("gen %d err %v", gen, err)
	}
	eq(t, "requests", f.requests(), []string{"GET /resource_providers?in_tree=" + rpUUID, "POST /resource_providers", "GET /resource_providers/" + rpUUID})
}

func newRP(t *testing.T) (*fakePlacement, *Client) {
	f := newFakePlacement(t)
	c := f.client(t)
	if _, err := c.EnsureProvider(bg, rpUUID, "node1"); err != nil {
		t.Fatal(err)
	}
	f.requests()
	return f, c
}

var hostInv = map[string]Inventory{
	VCPU:     {Total: 8, AllocationRatio: 16},
	MemoryMB: {Total: 4096, Reserved: 512, MinUnit: 1, MaxUnit: 4096, StepSize: 1, AllocationRatio: 1.5},
	DiskGB:   {Total: 50, Reserved: 1},
}

func TestSetInventories(t *testing.T) {
	f, c := newRP(t)
	invPath := "/resource_providers/" + rpUUID + "/inventories"

	if err := c.SetInventories(bg, rpUUID, hostInv); err != nil {
		t.Fatal(err)
	}
	reqs := f.lastReqs()
	eq(t, "first", f.requests(), []string{"GET " + invPath, "PUT " + invPath})
	if reqs[1].MV != "1.26" {
		t.Errorf("PUT microversion %q", reqs[1].MV)
	}
	got := f.providers[rpUUID].inventories
	want := Inventory{Total: 8, MinUnit: 1, MaxUnit: 8, StepSize: 1, AllocationRatio: 16}
	if got[VCPU] != want {
		t.Errorf("VCPU defaults: %+v, want %+v", got[VCPU], want)
	}
	if f.providers[rpUUID].gen != 1 {
		t.Errorf("generation %d", f.providers[rpUUID].gen)
	}

	// Unchanged: no PUT.
	if err := c.SetInventories(bg, rpUUID, hostInv); err != nil {
		t.Fatal(err)
	}
	eq(t, "unchanged", f.requests(), []string{"GET " + invPath})

	// An operator set the VCPU ratio in placement; a caller passing 0 keeps it.
	inv := f.providers[rpUUID].inventories[VCPU]
	inv.AllocationRatio = 3
	f.providers[rpUUID].inventories[VCPU] = inv
	zero := map[string]Inventory{VCPU: {Total: 8}, MemoryMB: hostInv[MemoryMB], DiskGB: hostInv[DiskGB]}
	if err := c.SetInventories(bg, rpUUID, zero); err != nil {
		t.Fatal(err)
	}
	eq(t, "ratio 0 keeps placement's", f.requests(), []string{"GET " + invPath})

	// Placement on MySQL answers single-precision ratios.
	inv.AllocationRatio = float64(float32(1.1))
	f.providers[rpUUID].inventories[VCPU] = inv
	zero[VCPU] = Inventory{Total: 8, AllocationRatio: 1.1}
	if err := c.SetInventories(bg, rpUUID, zero); err != nil {
		t.Fatal(err)
	}
	eq(t, "float32 ratio", f.requests(), []string{"GET " + invPath})

	// A changed total is written, with the generation read.
	zero[VCPU] = Inventory{Total: 16}
	if err := c.SetInventories(bg, rpUUID, zero); err != nil {
		t.Fatal(err)
	}
	eq(t, "changed", f.requests(), []string{"GET " + invPath, "PUT " + invPath})
	if v := f.providers[rpUUID].inventories[VCPU]; v.Total != 16 || v.MaxUnit != 16 || !ratioEqual(v.AllocationRatio, 1.1) {
		t.Errorf("VCPU after update: %+v", v)
	}

	// A CUSTOM_ class is created first.
	zero["CUSTOM_LXC_SLOTS"] = Inventory{Total: 100}
	if err := c.SetInventories(bg, rpUUID, zero); err != nil {
		t.Fatal(err)
	}
	eq(t, "custom class", f.requests(), []string{"GET " + invPath, "PUT /resource_classes/CUSTOM_LXC_SLOTS", "PUT " + invPath})
	if f.providers[rpUUID].inventories["CUSTOM_LXC_SLOTS"].AllocationRatio != 1 {
		t.Errorf("custom class ratio: %+v", f.providers[rpUUID].inventories["CUSTOM_LXC_SLOTS"])
	}
}

func TestSetInventoriesConflictRetry(t *testing.T) {
	f, c := newRP(t)
	invPath := "/resource_providers/" + rpUUID + "/inventories"

	f.bumpBeforePUT = 2
	if err := c.SetInventories(bg, rpUUID, hostInv); err != nil {
		t.Fatal(err)
	}
	eq(t, "two conflicts", f.requests(), []string{
		"GET " + invPath, "PUT " + invPath, // conflict
		"GET " + invPath, "PUT " + invPath, // conflict
		"GET " + invPath, "PUT " + invPath, // ok
	})
	if len(f.providers[rpUUID].inventories) != 3 {
		t.Errorf("inventory not written: %+v", f.providers[rpUUID].inventories)
	}

	f.bumpBeforePUT = 100
	err := c.SetInventories(bg, rpUUID, map[string]Inventory{VCPU: {Total: 4}})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("err %v, want ErrConflict", err)
	}
	if n := strings.Count(strings.Join(f.requests(), "\n"), "PUT "); n != MaxAttempts {
		t.Errorf("%d PUTs, want %d", n, MaxAttempts)
	}
	t.Log(err)
}

func TestSetInventoriesInUse(t *testing.T) {
	f, c := newRP(t)
	if err := c.SetInventories(bg, rpUUID, hostInv); err != nil {
		t.Fatal(err)
	}
	f.allocs[inst] = map[string]map[string]int{rpUUID: {VCPU: 2, MemoryMB: 512}}
	f.requests()
	err := c.SetInventories(bg, rpUUID, map[string]Inventory{VCPU: hostInv[VCPU]})
	if !errors.Is(err, ErrInventoryInUse) || errors.Is(err, ErrConflict) {
		t.Fatalf("err %v, want ErrInventoryInUse only", err)
	}
	if n := strings.Count(strings.Join(f.requests(), "\n"), "PUT "); n != 1 {
		t.Errorf("in-use was retried: %d PUTs", n)
	}
}

func TestSetInventoriesNotFound(t *testing.T) {
	f := newFakePlacement(t)
	err := f.client(t).SetInventories(bg, rpUUID, hostInv)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err %v, want ErrNotFound", err)
	}
}

func TestSetTraits(t *testing.T) {
	f, c := newRP(t)
	trPath := "/resource_providers/" + rpUUID + "/traits"
	want := []string{"COMPUTE_STATUS_DISABLED", "CUSTOM_LXC", "COMPUTE_NODE", "CUSTOM_LXC"}

	if err := c.SetTraits(bg, rpUUID, want); err != nil {
		t.Fatal(err)
	}
	eq(t, "first", f.requests(), []string{
		"GET " + trPath,
		"GET /traits?name=in%3ACOMPUTE_NODE%2CCOMPUTE_STATUS_DISABLED%2CCUSTOM_LXC",
		"PUT /traits/CUSTOM_LXC",
		"PUT " + trPath,
	})
	got, err := c.Traits(bg, rpUUID)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "traits", got, []string{"COMPUTE_NODE", "COMPUTE_STATUS_DISABLED", "CUSTOM_LXC"})
	f.requests()

	// Same set in another order: no PUT.
	if err := c.SetTraits(bg, rpUUID, []string{"CUSTOM_LXC", "COMPUTE_NODE", "COMPUTE_STATUS_DISABLED"}); err != nil {
		t.Fatal(err)
	}
	eq(t, "unchanged", f.requests(), []string{"GET " + trPath})

	// Enabling the service removes COMPUTE_STATUS_DISABLED; one conflict first.
	f.bumpBeforePUT = 1
	if err := c.SetTraits(bg, rpUUID, []string{"COMPUTE_NODE", "CUSTOM_LXC"}); err != nil {
		t.Fatal(err)
	}
	eq(t, "conflict", f.requests(), []string{
		"GET " + trPath, "GET /traits?name=in%3ACOMPUTE_NODE%2CCUSTOM_LXC", "PUT " + trPath,
		"GET " + trPath, "PUT " + trPath,
	})
	eq(t, "after", f.providers[rpUUID].traits, []string{"COMPUTE_NODE", "CUSTOM_LXC"})

	// Empty set clears.
	if err := c.SetTraits(bg, rpUUID, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Traits(bg, rpUUID); got == nil || len(got) != 0 {
		t.Errorf("traits after clearing: %#v", got)
	}
}

func TestSetTraitsErrors(t *testing.T) {
	f, c := newRP(t)
	err := c.SetTraits(bg, rpUUID, []string{"COMPUTE_NODE", "HW_NOT_A_TRAIT"})
	if !errors.Is(err, ErrUnknownTrait) || !strings.Contains(err.Error(), "HW_NOT_A_TRAIT") {
		t.Fatalf("unknown standard trait: %v", err)
	}
	if slices.ContainsFunc(f.requests(), func(s string) bool { return strings.HasPrefix(s, "PUT") }) {
		t.Error("PUT after an unknown trait")
	}
	if err := c.SetTraits(bg, rpUUID, []string{"CUSTOM_a/b"}); err == nil {
		t.Fatal("invalid trait name accepted")
	}
	f.bumpBeforePUT = 100
	if err := c.SetTraits(bg, rpUUID, []string{"COMPUTE_NODE"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("endless conflicts: %v", err)
	}
}

func TestUsagesAllocations(t *testing.T) {
	f, c := newRP(t)
	f.allocs[inst] = map[string]map[string]int{rpUUID: {VCPU: 2, MemoryMB: 512}, other: {DiskGB: 1}}
	f.allocs[other] = map[string]map[string]int{rpUUID: {VCPU: 1}}

	u, err := c.Usages(bg, rpUUID)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(u) != "map[MEMORY_MB:512 VCPU:3]" {
		t.Errorf("usages %v", u)
	}
	a, err := c.ProviderAllocations(bg, rpUUID)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(a) != fmt.Sprintf("map[%s:map[VCPU:1] %s:map[MEMORY_MB:512 VCPU:2]]", other, inst) {
		t.Errorf("allocations %v", a)
	}

	if err := c.DeleteAllocations(bg, inst); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteAllocations(bg, inst); err != nil {
		t.Fatalf("second delete (404) must succeed: %v", err)
	}
	if u, _ := c.Usages(bg, rpUUID); u[VCPU] != 1 || u[MemoryMB] != 0 {
		t.Errorf("usages after delete %v", u)
	}
	if _, err := c.Usages(bg, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("usages of unknown provider: %v", err)
	}
}

func TestDeleteAllocationsServerError(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	}))
	defer srv.Close()
	c := New(&gophercloud.ServiceClient{ProviderClient: &gophercloud.ProviderClient{}, Endpoint: srv.URL + "/"}, nil)
	err := c.DeleteAllocations(bg, inst)
	var pe *Error
	if !errors.As(err, &pe) || pe.StatusCode != 500 || errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) {
		t.Fatalf("err %v", err)
	}
	if !gophercloud.ResponseCodeIs(err, 500) {
		t.Errorf("gophercloud error not in the chain")
	}
	if !strings.Contains(err.Error(), "boom") {
		t.Errorf("message %q", err)
	}
}

func TestErrorIs(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want []error
	}{
		{Error{StatusCode: 404}, []error{ErrNotFound}},
		{Error{StatusCode: 409, Code: CodeConcurrentUpdate}, []error{ErrConflict}},
		{Error{StatusCode: 409, Code: CodeUndefined}, []error{ErrConflict}},
		{Error{StatusCode: 409}, []error{ErrConflict}},
		{Error{StatusCode: 409, Code: CodeInventoryInUse}, []error{ErrInventoryInUse}},
		{Error{StatusCode: 409, Code: CodeDuplicateName}, nil},
		{Error{StatusCode: 400, Code: CodeConcurrentUpdate}, nil},
	} {
		for _, target := range []error{ErrNotFound, ErrConflict, ErrInventoryInUse, ErrNameConflict, ErrUnknownTrait} {
			e := tc.e
			if got := errors.Is(fmt.Errorf("x: %w", &e), target); got != slices.Contains(tc.want, target) {
				t.Errorf("%d %s: Is(%v) = %v", e.StatusCode, e.Code, target, got)
			}
		}
	}
}

func TestGlobalRequestID(t *testing.T) {
	if GlobalRequestID(bg) != "" {
		t.Error("id in the background context")
	}
	if got := GlobalRequestID(WithGlobalRequestID(bg, "req-x")); got != "req-x" {
		t.Errorf("got %q", got)
	}
}

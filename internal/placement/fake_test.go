package placement

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gophercloud/gophercloud/v2"
)

// fakePlacement is a stateful placement double: providers with
// generations, inventories, traits and allocations, the trait and resource
// class registries, and hooks to simulate a concurrent writer.
type fakePlacement struct {
	t   *testing.T
	srv *httptest.Server

	mu        sync.Mutex
	providers map[string]*fakeRP
	traits    map[string]bool
	classes   map[string]bool
	allocs    map[string]map[string]map[string]int // consumer → rp → rc → n
	log       []fakeReq

	// bumpBeforePUT, when > 0, makes the next PUT of inventories/traits
	// find the generation changed by "someone else" (and decrements).
	bumpBeforePUT int
	// inTreeEmpty makes GET ?in_tree= answer [] even for known providers
	// (a concurrent creator got in between GET and POST).
	inTreeEmpty bool
}

type fakeRP struct {
	uuid, name  string
	gen         int
	inventories map[string]Inventory
	traits      []string
}

type fakeReq struct {
	Method, Path, Query, MV, ReqID, Token string
}

func (r fakeReq) String() string {
	s := r.Method + " " + r.Path
	if r.Query != "" {
		s += "?" + r.Query
	}
	return s
}

func newFakePlacement(t *testing.T) *fakePlacement {
	f := &fakePlacement{
		t:         t,
		providers: map[string]*fakeRP{},
		traits:    map[string]bool{"COMPUTE_NODE": true, "COMPUTE_STATUS_DISABLED": true, "HW_CPU_X86_AVX2": true},
		classes:   map[string]bool{VCPU: true, MemoryMB: true, DiskGB: true},
		allocs:    map[string]map[string]map[string]int{},
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakePlacement) client(t *testing.T) *Client {
	pc := &gophercloud.ProviderClient{}
	pc.SetToken("admin:admin")
	sc := &gophercloud.ServiceClient{ProviderClient: pc, Endpoint: f.srv.URL + "/", Type: "placement"}
	return New(sc, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// requests returns "METHOD path" of the requests so far and forgets them.
func (f *fakePlacement) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.log {
		out = append(out, r.String())
	}
	f.log = nil
	return out
}

func (f *fakePlacement) lastReqs() []fakeReq {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.log)
}

// placementError answers like placement: webob's boilerplate before the
// detail, and a "code" only when there is one (placement sends codes from
// microversion 1.23 on; pass "" where it would not).
func placementError(w http.ResponseWriter, status int, code, detail string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Openstack-Request-Id", "req-fake")
	w.WriteHeader(status)
	e := map[string]any{
		"status": status, "title": http.StatusText(status), "request_id": "req-fake",
		"detail": "There was a problem with your request.\n\n " + detail + "  ",
	}
	if code != "" {
		e["code"] = code
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]any{e}})
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakePlacement) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, fakeReq{
		Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery,
		MV:    strings.TrimPrefix(r.Header.Get("OpenStack-API-Version"), "placement "),
		ReqID: r.Header.Get("X-Openstack-Request-Id"), Token: r.Header.Get("X-Auth-Token"),
	})
	if r.Header.Get("X-Auth-Token") != "admin:admin" {
		placementError(w, 401, "placement.undefined_code", "no token")
		return
	}
	body, _ := io.ReadAll(r.Body)
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	q := r.URL.Query()
	switch {
	case r.Method == "GET" && r.URL.Path == "/resource_providers":
		list := []map[string]any{}
		for _, p := range f.providers {
			if (q.Get("in_tree") != "" && p.uuid == q.Get("in_tree") && !f.inTreeEmpty) ||
				(q.Get("name") != "" && p.name == q.Get("name")) {
				list = append(list, p.json())
			}
		}
		reply(w, 200, map[string]any{"resource_providers": list})
	case r.Method == "POST" && r.URL.Path == "/resource_providers":
		var in struct{ UUID, Name string }
		_ = json.Unmarshal(body, &in)
		if _, ok := f.providers[in.UUID]; ok {
			placementError(w, 409, "", "Conflicting resource provider uuid: "+in.UUID+" already exists.")
			return
		}
		for _, p := range f.providers {
			if p.name == in.Name {
				placementError(w, 409, "", "Conflicting resource provider name: "+in.Name+" already exists.")
				return
			}
		}
		p := &fakeRP{uuid: in.UUID, name: in.Name, inventories: map[string]Inventory{}}
		f.providers[in.UUID] = p
		reply(w, 200, p.json())
	case len(parts) >= 2 && parts[0] == "resource_providers":
		p := f.providers[parts[1]]
		if p == nil {
			placementError(w, 404, "placement.resource_provider.not_found", "No resource provider with uuid "+parts[1])
			return
		}
		sub := ""
		if len(parts) > 2 {
			sub = parts[2]
		}
		f.provider(w, r, p, sub, body)
	case r.Method == "GET" && r.URL.Path == "/traits":
		names := strings.Split(strings.TrimPrefix(q.Get("name"), "in:"), ",")
		out := []string{}
		for _, n := range names {
			if f.traits[n] {
				out = append(out, n)
			}
		}
		reply(w, 200, map[string]any{"traits": out})
	case r.Method == "PUT" && len(parts) == 2 && parts[0] == "traits":
		if !strings.HasPrefix(parts[1], "CUSTOM_") {
			placementError(w, 400, "placement.undefined_code", "The trait is invalid. A valid trait must include prefix 'CUSTOM_'.")
			return
		}
		if f.traits[parts[1]] {
			w.WriteHeader(204)
			return
		}
		f.traits[parts[1]] = true
		w.WriteHeader(201)
	case r.Method == "PUT" && len(parts) == 2 && parts[0] == "resource_classes":
		if f.classes[parts[1]] {
			w.WriteHeader(204)
			return
		}
		f.classes[parts[1]] = true
		w.WriteHeader(201)
	case r.Method == "DELETE" && len(parts) == 2 && parts[0] == "allocations":
		if _, ok := f.allocs[parts[1]]; !ok {
			placementError(w, 404, "", "No allocations for consumer '"+parts[1]+"'")
			return
		}
		delete(f.allocs, parts[1])
		w.WriteHeader(204)
	default:
		placementError(w, 405, "placement.undefined_code", "fake: "+r.Method+" "+r.URL.Path)
	}
}

func (p *fakeRP) json() map[string]any {
	return map[string]any{"uuid": p.uuid, "name": p.name, "generation": p.gen,
		"root_provider_uuid": p.uuid, "parent_provider_uuid": nil}
}

func (f *fakePlacement) usage(rp string) map[string]int {
	u := map[string]int{}
	for _, byRP := range f.allocs {
		for rc, n := range byRP[rp] {
			u[rc] += n
		}
	}
	return u
}

func (f *fakePlacement) provider(w http.ResponseWriter, r *http.Request, p *fakeRP, sub string, body []byte) {
	if r.Method == "PUT" && f.bumpBeforePUT > 0 {
		f.bumpBeforePUT--
		p.gen++
	}
	switch {
	case r.Method == "GET" && sub == "":
		reply(w, 200, p.json())
	case r.Method == "GET" && sub == "inventories":
		reply(w, 200, map[string]any{"resource_provider_generation": p.gen, "inventories": p.inventories})
	case r.Method == "PUT" && sub == "inventories":
		var in inventoriesBody
		if err := json.Unmarshal(body, &in); err != nil || in.Inventories == nil {
			placementError(w, 400, "placement.undefined_code", fmt.Sprintf("JSON does not validate: %v %s", err, body))
			return
		}
		if in.Generation != p.gen {
			placementError(w, 409, CodeConcurrentUpdate, "resource provider generation conflict")
			return
		}
		used := f.usage(p.uuid)
		for rc, n := range used {
			if inv, ok := in.Inventories[rc]; n > 0 && (!ok || inv.Total < n) {
				placementError(w, 409, CodeInventoryInUse, fmt.Sprintf("update conflict: Inventory for '%s' on resource provider '%s' in use.", rc, p.uuid))
				return
			}
		}
		for rc := range in.Inventories {
			if !f.classes[rc] {
				placementError(w, 400, "placement.undefined_code", "No such resource class "+rc)
				return
			}
		}
		p.inventories = in.Inventories
		p.gen++
		reply(w, 200, map[string]any{"resource_provider_generation": p.gen, "inventories": p.inventories})
	case r.Method == "GET" && sub == "traits":
		reply(w, 200, map[string]any{"resource_provider_generation": p.gen, "traits": p.traits})
	case r.Method == "PUT" && sub == "traits":
		var in traitsBody
		if err := json.Unmarshal(body, &in); err != nil || in.Traits == nil {
			placementError(w, 400, "placement.undefined_code", fmt.Sprintf("JSON does not validate: %v %s", err, body))
			return
		}
		if in.Generation != p.gen {
			// 1.6: no code.
			placementError(w, 409, "", "Resource provider's generation already changed. Please update the generation and try again.")
			return
		}
		for _, t := range in.Traits {
			if !f.traits[t] {
				placementError(w, 400, "placement.undefined_code", "No such trait(s): "+t)
				return
			}
		}
		p.traits = in.Traits
		p.gen++
		reply(w, 200, map[string]any{"resource_provider_generation": p.gen, "traits": p.traits})
	case r.Method == "GET" && sub == "usages":
		reply(w, 200, map[string]any{"resource_provider_generation": p.gen, "usages": f.usage(p.uuid)})
	case r.Method == "GET" && sub == "allocations":
		out := map[string]any{}
		for c, byRP := range f.allocs {
			if res, ok := byRP[p.uuid]; ok {
				out[c] = map[string]any{"resources": res}
			}
		}
		reply(w, 200, map[string]any{"resource_provider_generation": p.gen, "allocations": out})
	default:
		placementError(w, 405, "placement.undefined_code", "fake: "+r.Method+" "+r.URL.Path)
	}
}

var bg = context.Background()

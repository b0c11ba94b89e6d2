package testenv

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

// neutronCollections are the /v2.0 collections the stub answers with an
// empty list when it keeps no state for them (the ones nova asks for when an
// instance has no ports, plus a few neighbours). networks, subnets, ports,
// security-groups, security-group-rules and extensions are stateful (see
// NeutronStub); they too start empty, except extensions.
var neutronCollections = map[string]bool{
	"ports": true, "networks": true, "subnets": true, "extensions": true,
	"security-groups": true, "security-group-rules": true, "floatingips": true,
	"routers": true, "qos": true, "trunks": true, "segments": true,
	"network-ip-availabilities": true, "address-scopes": true,
}

// NeutronRequest is one request the stub received.
type NeutronRequest struct {
	Time   time.Time
	Method string
	Path   string // URL path, e.g. /v2.0/ports
	Query  string // raw query, e.g. device_id=...
	Status int    // status the stub answered with
}

func (r NeutronRequest) String() string {
	u := r.Path
	if r.Query != "" {
		u += "?" + r.Query
	}
	return fmt.Sprintf("%s %s %s -> %d", r.Time.Format("15:04:05.000"), r.Method, u, r.Status)
}

// NeutronStub is a small in-memory Neutron (API v2.0, JSON, no auth) on
// 127.0.0.1, enough for nova-api and a compute agent to boot servers on a
// network, shaped like ML2 with the linuxbridge mechanism driver:
//
//   - networks and subnets are made by the test (AddNetwork, AddSubnet) and
//     listed / shown over HTTP;
//   - ports are created (POST, IPs allocated from the network's subnets, a
//     fa:16:3e MAC), listed, shown, updated (PUT: device_id, device_owner,
//     binding:host_id, binding:profile, dns_name, security_groups, fixed_ips,
//     ...) and deleted (DELETE). A port bound to a host (binding:host_id) has
//     binding:vif_type "bridge"; its status stays DOWN (no L2 agent reports
//     it up; see SetPortStatus);
//   - a project's "default" security group (stable id, see
//     DefaultSecurityGroupID) comes into being the way neutron makes it: when
//     the project gets a network or a port, or lists security groups with a
//     token (X-Auth-Token "user:project" or X-Project-Id);
//   - GET /v2.0/extensions lists what ML2 + linuxbridge offers that nova
//     looks at ("binding", "multi-provider", "ip-substring-filtering", ...;
//     not "binding-extended", "dns-integration" nor
//     "port-resource-request-groups");
//   - quotas are unlimited (GET /v2.0/quotas/{project}[/details]).
//
// List filters are neutron's: any attribute, repeated for several values
// (id=a&id=b), booleans as True/False, fixed_ips=ip_address=...,
// fixed_ips=ip_address_substr=..., fixed_ips=subnet_id=..., and fields=...
// to pick attributes. Every other collection GET under /v2.0 (floatingips,
// routers, ...) answers an empty list, GET / and GET /v2.0 version documents,
// and errors come as neutron's {"NeutronError": {"type", "message",
// "detail"}} with its status codes (404 for unknown ids, 400 for bad input,
// 409 for address conflicts), so neutronclient raises the same exceptions.
// The stub records every request (Requests) and, if a log file was given,
// appends one line per request to it.
type NeutronStub struct {
	srv     *http.Server
	ln      net.Listener
	logPath string
	done    chan struct{}

	mu   sync.Mutex
	reqs []NeutronRequest
	logf *os.File

	smu sync.Mutex // guards st
	st  neutronState
}

// StartNeutronStub starts the stub on a free port of 127.0.0.1. logPath ""
// means no log file.
func StartNeutronStub(logPath string) (*NeutronStub, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("neutron stub: %w", err)
	}
	s := &NeutronStub{ln: ln, logPath: logPath, done: make(chan struct{})}
	if logPath != "" {
		if s.logf, err = os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			ln.Close()
			return nil, fmt.Errorf("neutron stub: %w", err)
		}
	}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// URL returns the stub's endpoint, http://127.0.0.1:PORT.
func (s *NeutronStub) URL() string { return "http://" + s.ln.Addr().String() }

// Requests returns a copy of the requests received so far, oldest first.
func (s *NeutronStub) Requests() []NeutronRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]NeutronRequest(nil), s.reqs...)
}

// Stop closes the listener and every connection and waits for the server
// goroutine to end.
func (s *NeutronStub) Stop() error {
	if s == nil || s.srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	<-s.done
	s.mu.Lock()
	if s.logf != nil {
		if e := s.logf.Close(); err == nil {
			err = e
		}
		s.logf = nil
	}
	s.mu.Unlock()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// neutronProject is the project the stub creates networks in (the project
// of the test deployment's token, "admin:admin").
const neutronProject = "admin"

// Network is a network of the stub (AddNetwork).
type Network struct {
	ID        string
	Name      string
	ProjectID string
	MTU       int
	// NetworkType is provider:network_type ("flat", on PhysicalNetwork).
	NetworkType     string
	PhysicalNetwork string
	Subnets         []string // subnet ids, oldest first
}

// Subnet is a subnet of the stub (AddSubnet).
type Subnet struct {
	ID        string
	NetworkID string
	ProjectID string
	IPVersion int
	CIDR      string // canonical: 192.0.2.0/24
	Gateway   string // "" for none
	DNS       []string
	// HostRoutes are {destination CIDR, nexthop}.
	HostRoutes [][2]string
	// AllocationPools are {first, last} addresses ports get IPs from.
	AllocationPools [][2]string
}

// AddNetwork adds a network of project "admin": status ACTIVE, not shared,
// not external, port security enabled, provider:network_type "flat" on
// physical network "physnet1", the given MTU (0 means 1500). It also makes
// the project's default security group, as neutron does.
func (s *NeutronStub) AddNetwork(name string, mtu int) Network {
	if mtu <= 0 {
		mtu = 1500
	}
	s.smu.Lock()
	defer s.smu.Unlock()
	st := s.state()
	now := neutronNow()
	n := map[string]any{
		"id": uuid.NewString(), "name": name, "description": "",
		"status": "ACTIVE", "admin_state_up": true, "shared": false,
		"tenant_id": neutronProject, "project_id": neutronProject,
		"mtu": mtu, "router:external": false, "port_security_enabled": true,
		"subnets": []any{}, "l2_adjacency": true,
		"provider:network_type": "flat", "provider:physical_network": "physnet1", "provider:segmentation_id": nil,
		"availability_zone_hints": []any{}, "availability_zones": []any{"nova"},
		"ipv4_address_scope": nil, "ipv6_address_scope": nil,
		"tags": []any{}, "created_at": now, "updated_at": now, "revision_number": 1,
	}
	st.networks.put(n)
	st.ensureDefaultSG(neutronProject)
	return networkOf(n)
}

// AddSubnet adds a subnet to network networkID: ip_version from cidr,
// enable_dhcp false, the given DNS servers and host routes ({destination,
// nexthop}). gateway "" means the first address of cidr, "none" no gateway.
// The allocation pool is cidr less the network address, the IPv4 broadcast
// address and the gateway. It panics on an unknown network or a malformed
// cidr, gateway or route (a mistake in the calling test).
func (s *NeutronStub) AddSubnet(networkID, cidr, gateway string, dns []string, hostRoutes [][2]string) Subnet {
	pfx, err := netip.ParsePrefix(cidr)
	if err != nil {
		panic(fmt.Sprintf("neutron stub: AddSubnet: %v", err))
	}
	pfx = pfx.Masked()
	ipam := &stubIPAM{prefix: pfx, used: map[netip.Addr]string{}}
	first, last := hostRange(pfx)
	switch gateway {
	case "none":
	case "":
		ipam.gateway = first
	default:
		if ipam.gateway, err = netip.ParseAddr(gateway); err != nil || !pfx.Contains(ipam.gateway) {
			panic(fmt.Sprintf("neutron stub: AddSubnet: gateway %q not in %s", gateway, pfx))
		}
	}
	ipam.pools = [][2]netip.Addr{{first, last}}
	if g := ipam.gateway; g.IsValid() && g.Compare(first) >= 0 && g.Compare(last) <= 0 {
		ipam.pools = nil
		if g != first {
			ipam.pools = append(ipam.pools, [2]netip.Addr{first, g.Prev()})
		}
		if g != last {
			ipam.pools = append(ipam.pools, [2]netip.Addr{g.Next(), last})
		}
	}
	pools := []any{}
	for _, p := range ipam.pools {
		pools = append(pools, map[string]any{"start": p[0].String(), "end": p[1].String()})
	}
	dnsList := []any{}
	for _, d := range dns {
		if _, err := netip.ParseAddr(d); err != nil {
			panic(fmt.Sprintf("neutron stub: AddSubnet: dns server: %v", err))
		}
		dnsList = append(dnsList, d)
	}
	routes := []any{}
	for _, r := range hostRoutes {
		if _, err := netip.ParsePrefix(r[0]); err != nil {
			panic(fmt.Sprintf("neutron stub: AddSubnet: route destination: %v", err))
		}
		if _, err := netip.ParseAddr(r[1]); err != nil {
			panic(fmt.Sprintf("neutron stub: AddSubnet: route nexthop: %v", err))
		}
		routes = append(routes, map[string]any{"destination": r[0], "nexthop": r[1]})
	}
	var gw any
	if ipam.gateway.IsValid() {
		gw = ipam.gateway.String()
	}
	version := 4
	if pfx.Addr().Is6() {
		version = 6
	}

	s.smu.Lock()
	defer s.smu.Unlock()
	st := s.state()
	n := st.networks.get(networkID)
	if n == nil {
		panic(fmt.Sprintf("neutron stub: AddSubnet: no network %s", networkID))
	}
	now := neutronNow()
	sn := map[string]any{
		"id": uuid.NewString(), "name": "", "description": "",
		"network_id": networkID, "tenant_id": n["tenant_id"], "project_id": n["project_id"],
		"ip_version": version, "cidr": pfx.String(), "gateway_ip": gw,
		"allocation_pools": pools, "dns_nameservers": dnsList, "host_routes": routes,
		"enable_dhcp": false, "ipv6_ra_mode": nil, "ipv6_address_mode": nil,
		"subnetpool_id": nil, "segment_id": nil, "service_types": []any{},
		"tags": []any{}, "created_at": now, "updated_at": now, "revision_number": 0,
	}
	st.subnets.put(sn)
	st.ipam[sn["id"].(string)] = ipam
	n["subnets"] = append(n["subnets"].([]any), sn["id"])
	n["revision_number"] = n["revision_number"].(int) + 1
	return subnetOf(sn)
}

// DefaultSecurityGroupID returns the id of project's "default" security
// group, making it first if need be. The id is the same for a project in
// every stub.
func (s *NeutronStub) DefaultSecurityGroupID(project string) string {
	s.smu.Lock()
	defer s.smu.Unlock()
	return s.state().ensureDefaultSG(project)
}

// Ports returns a snapshot of the ports, oldest first, as neutron shows them
// (decoded-JSON types: []any, map[string]any).
func (s *NeutronStub) Ports() []map[string]any {
	s.smu.Lock()
	defer s.smu.Unlock()
	var out []map[string]any
	for _, p := range s.state().ports.list() {
		out = append(out, cloneJSON(p).(map[string]any))
	}
	return out
}

// Port returns a snapshot of port id.
func (s *NeutronStub) Port(id string) (map[string]any, bool) {
	s.smu.Lock()
	defer s.smu.Unlock()
	p := s.state().ports.get(id)
	if p == nil {
		return nil, false
	}
	return cloneJSON(p).(map[string]any), true
}

// SetPortStatus sets the status of port id ("ACTIVE", "DOWN", ...), as an L2
// agent would when it wires the port up; false if there is no such port.
func (s *NeutronStub) SetPortStatus(id, status string) bool {
	s.smu.Lock()
	defer s.smu.Unlock()
	p := s.state().ports.get(id)
	if p == nil {
		return false
	}
	p["status"] = status
	touch(p)
	return true
}

// ServeHTTP answers one request and records it.
func (s *NeutronStub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	_, _ = io.Copy(io.Discard, r.Body)
	q, err := url.ParseQuery(r.URL.RawQuery)
	var status int
	var out any
	if err != nil {
		status, out = neutronError(http.StatusBadRequest, "HTTPBadRequest", "Malformed query: "+err.Error())
	} else {
		status, out = s.answer(&neutronCall{
			method: r.Method, path: r.URL.Path, query: q, body: body,
			project: requestProject(r.Header), base: "http://" + r.Host,
		})
	}
	rec := NeutronRequest{Time: time.Now(), Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Status: status}
	s.mu.Lock()
	s.reqs = append(s.reqs, rec)
	if s.logf != nil {
		fmt.Fprintln(s.logf, rec.String())
	}
	s.mu.Unlock()
	if status == http.StatusNoContent {
		w.WriteHeader(status)
		return
	}
	b, _ := json.Marshal(out)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// requestProject is the project of the request's context: X-Project-Id, or
// the project of a noauth-style "user:project" token; "" without either.
func requestProject(h http.Header) string {
	if p := h.Get("X-Project-Id"); p != "" {
		return p
	}
	if _, p, ok := strings.Cut(h.Get("X-Auth-Token"), ":"); ok {
		return p
	}
	return ""
}

// neutronCall is one request as the handlers see it.
type neutronCall struct {
	method  string
	path    string
	query   url.Values
	body    []byte
	project string
	base    string
}

func neutronError(status int, typ, msg string) (int, any) {
	return status, map[string]any{"NeutronError": map[string]any{"type": typ, "message": msg, "detail": ""}}
}

func (c *neutronCall) notFound() (int, any) {
	return neutronError(http.StatusNotFound, "HTTPNotFound", "stub: "+c.method+" "+c.path)
}

func (c *neutronCall) notAllowed() (int, any) {
	return neutronError(http.StatusMethodNotAllowed, "HTTPMethodNotAllowed", "stub: "+c.method+" "+c.path+" is not supported")
}

func (s *NeutronStub) answer(c *neutronCall) (int, any) {
	path := strings.TrimRight(c.path, "/")
	switch path {
	case "":
		if c.method != http.MethodGet {
			return c.notFound()
		}
		return http.StatusOK, map[string]any{"versions": []any{map[string]any{
			"id": "v2.0", "status": "CURRENT",
			"links": []any{map[string]string{"rel": "self", "href": c.base + "/v2.0/"}},
		}}}
	case "/v2.0":
		if c.method != http.MethodGet {
			return c.notFound()
		}
		return http.StatusOK, map[string]any{"resources": []any{}}
	}
	rest, ok := strings.CutPrefix(path, "/v2.0/")
	if !ok {
		return c.notFound()
	}
	parts := strings.Split(strings.TrimSuffix(rest, ".json"), "/")
	coll, args := parts[0], parts[1:]
	s.smu.Lock()
	defer s.smu.Unlock()
	st := s.state()
	switch coll {
	case "networks":
		return st.readOnly(c, args, st.networks, "network", "NetworkNotFound", "Network %s could not be found.")
	case "subnets":
		return st.readOnly(c, args, st.subnets, "subnet", "SubnetNotFound", "Subnet %s could not be found.")
	case "security-groups":
		if len(args) == 0 && c.method == http.MethodGet && c.project != "" {
			// neutron makes the default group of the project listed (or
			// of the caller) when it is first asked for the list.
			p := c.query.Get("project_id")
			if p == "" {
				p = c.query.Get("tenant_id")
			}
			if p == "" {
				p = c.project
			}
			st.ensureDefaultSG(p)
		}
		return st.readOnly(c, args, st.sgs, "security_group", "SecurityGroupNotFound", "Security group %s does not exist")
	case "security-group-rules":
		return st.readOnly(c, args, st.rules, "security_group_rule", "SecurityGroupRuleNotFound", "Security group rule %s does not exist")
	case "extensions":
		return extensionsAnswer(c, args)
	case "quotas":
		return st.quotas(c, args)
	case "ports":
		return st.portsAPI(c, args)
	}
	if neutronCollections[coll] && len(args) == 0 {
		if c.method != http.MethodGet {
			return c.notFound()
		}
		return http.StatusOK, map[string]any{strings.ReplaceAll(coll, "-", "_"): []any{}}
	}
	return c.notFound()
}

// neutronState is the stub's data; every method needs NeutronStub.smu held.
type neutronState struct {
	networks, subnets, ports, sgs, rules *neutronTable
	ipam                                 map[string]*stubIPAM // by subnet id
	macs                                 map[string]string    // network id + "/" + mac -> port id
}

// state returns s.st, initialised. smu must be held.
func (s *NeutronStub) state() *neutronState {
	st := &s.st
	if st.networks == nil {
		st.networks, st.subnets, st.ports = newTable(), newTable(), newTable()
		st.sgs, st.rules = newTable(), newTable()
		st.ipam = map[string]*stubIPAM{}
		st.macs = map[string]string{}
	}
	return st
}

// neutronTable holds objects by id, in creation order.
type neutronTable struct {
	order []string
	m     map[string]map[string]any
}

func newTable() *neutronTable { return &neutronTable{m: map[string]map[string]any{}} }

func (t *neutronTable) put(o map[string]any) {
	id := o["id"].(string)
	if _, ok := t.m[id]; !ok {
		t.order = append(t.order, id)
	}
	t.m[id] = o
}

func (t *neutronTable) get(id string) map[string]any { return t.m[id] }

func (t *neutronTable) del(id string) {
	delete(t.m, id)
	for i, x := range t.order {
		if x == id {
			t.order = append(t.order[:i:i], t.order[i+1:]...)
			break
		}
	}
}

func (t *neutronTable) list() []map[string]any {
	out := make([]map[string]any, 0, len(t.order))
	for _, id := range t.order {
		out = append(out, t.m[id])
	}
	return out
}

// readOnly answers GET list and GET one of a table.
func (st *neutronState) readOnly(c *neutronCall, args []string, t *neutronTable, member, notFoundType, notFoundMsg string) (int, any) {
	switch {
	case len(args) > 1:
		return c.notFound()
	case c.method != http.MethodGet:
		return c.notAllowed()
	case len(args) == 0:
		return listAnswer(member+"s", t.list(), c.query)
	}
	o := t.get(args[0])
	if o == nil {
		return neutronError(http.StatusNotFound, notFoundType, fmt.Sprintf(notFoundMsg, args[0]))
	}
	return http.StatusOK, map[string]any{member: pickFields(o, c.query["fields"])}
}

// listAnswer filters objs with the query and picks the fields asked for.
func listAnswer(key string, objs []map[string]any, q url.Values) (int, any) {
	out := []any{}
	for _, o := range objs {
		if matchFilters(o, q) {
			out = append(out, pickFields(o, q["fields"]))
		}
	}
	return http.StatusOK, map[string]any{key: out}
}

// neutronNonFilters are query parameters that are not attribute filters.
var neutronNonFilters = map[string]bool{
	"fields": true, "limit": true, "marker": true, "sort_key": true,
	"sort_dir": true, "page_reverse": true,
}

// matchFilters reports whether o passes every attribute filter of q (an
// attribute o lacks never matches).
func matchFilters(o map[string]any, q url.Values) bool {
	for k, vals := range q {
		if neutronNonFilters[k] {
			continue
		}
		if k == "fixed_ips" {
			if !matchFixedIPs(o["fixed_ips"], vals) {
				return false
			}
			continue
		}
		v, ok := o[k]
		if !ok || !matchValue(v, vals) {
			return false
		}
	}
	return true
}

func matchValue(v any, vals []string) bool {
	for _, want := range vals {
		switch v := v.(type) {
		case nil:
			if want == "" {
				return true
			}
		case string:
			if v == want {
				return true
			}
		case bool:
			if b, err := strconv.ParseBool(want); err == nil && b == v {
				return true
			}
		case int:
			if strconv.Itoa(v) == want {
				return true
			}
		case float64:
			if f, err := strconv.ParseFloat(want, 64); err == nil && f == v {
				return true
			}
		case []any:
			for _, e := range v {
				if s, ok := e.(string); ok && s == want {
					return true
				}
			}
		}
	}
	return false
}

// matchFixedIPs applies fixed_ips=ip_address=A, fixed_ips=subnet_id=S and
// fixed_ips=ip_address_substr=P: one of the port's fixed IPs must pass them
// all (each key with any of its values).
func matchFixedIPs(fixed any, vals []string) bool {
	want := map[string][]string{}
	for _, v := range vals {
		k, x, _ := strings.Cut(v, "=")
		want[k] = append(want[k], x)
	}
	list, _ := fixed.([]any)
	for _, e := range list {
		ip, _ := e.(map[string]any)
		ok := true
		for k, xs := range want {
			hit := false
			for _, x := range xs {
				switch k {
				case "ip_address", "subnet_id":
					hit = hit || ip[k] == x
				case "ip_address_substr":
					a, _ := ip["ip_address"].(string)
					hit = hit || strings.Contains(a, x)
				}
			}
			ok = ok && hit
		}
		if ok {
			return true
		}
	}
	return false
}

// pickFields returns a copy of o with only fields (all without fields).
func pickFields(o map[string]any, fields []string) map[string]any {
	if len(fields) == 0 {
		return cloneJSON(o).(map[string]any)
	}
	out := map[string]any{}
	for _, f := range fields {
		for _, f := range strings.Split(f, ",") {
			if v, ok := o[f]; ok {
				out[f] = cloneJSON(v)
			}
		}
	}
	return out
}

// cloneJSON deep-copies a value made of maps, slices and scalars.
func cloneJSON(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[k] = cloneJSON(x)
		}
		return m
	case []any:
		l := make([]any, len(v))
		for i, x := range v {
			l[i] = cloneJSON(x)
		}
		return l
	}
	return v
}

func neutronNow() string { return time.Now().UTC().Format("2006-01-02T15:04:05Z") }

// touch bumps an object's revision and update time.
func touch(o map[string]any) {
	if n, ok := o["revision_number"].(int); ok {
		o["revision_number"] = n + 1
	}
	o["updated_at"] = neutronNow()
}

func networkOf(n map[string]any) Network {
	out := Network{
		ID: n["id"].(string), Name: n["name"].(string), ProjectID: n["project_id"].(string),
		MTU: n["mtu"].(int), NetworkType: n["provider:network_type"].(string),
	}
	out.PhysicalNetwork, _ = n["provider:physical_network"].(string)
	for _, id := range n["subnets"].([]any) {
		out.Subnets = append(out.Subnets, id.(string))
	}
	return out
}

func subnetOf(sn map[string]any) Subnet {
	out := Subnet{
		ID: sn["id"].(string), NetworkID: sn["network_id"].(string), ProjectID: sn["project_id"].(string),
		IPVersion: sn["ip_version"].(int), CIDR: sn["cidr"].(string),
	}
	out.Gateway, _ = sn["gateway_ip"].(string)
	for _, d := range sn["dns_nameservers"].([]any) {
		out.DNS = append(out.DNS, d.(string))
	}
	for _, r := range sn["host_routes"].([]any) {
		r := r.(map[string]any)
		out.HostRoutes = append(out.HostRoutes, [2]string{r["destination"].(string), r["nexthop"].(string)})
	}
	for _, p := range sn["allocation_pools"].([]any) {
		p := p.(map[string]any)
		out.AllocationPools = append(out.AllocationPools, [2]string{p["start"].(string), p["end"].(string)})
	}
	return out
}

// ---- security groups ----

// stableUUID is a name-based (SHA-1) UUID of name.
func stableUUID(name string) string {
	return uuid.NewSHA1(uuid.NameSpaceURL, []byte("lxc-agent-neutron-stub:"+name)).String()
}

// ensureDefaultSG makes project's default security group (with neutron's
// four rules: all egress, ingress from the group itself, IPv4 and IPv6) if
// it does not exist yet and returns its id.
func (st *neutronState) ensureDefaultSG(project string) string {
	id := stableUUID("security-group/default/" + project)
	if st.sgs.get(id) != nil {
		return id
	}
	now := neutronNow()
	var rules []any
	for _, dir := range []string{"egress", "ingress"} {
		for _, eth := range []string{"IPv4", "IPv6"} {
			var remote any
			if dir == "ingress" {
				remote = id
			}
			r := map[string]any{
				"id": stableUUID("security-group-rule/default/" + project + "/" + dir + "/" + eth), "security_group_id": id,
				"tenant_id": project, "project_id": project, "direction": dir, "ethertype": eth,
				"protocol": nil, "port_range_min": nil, "port_range_max": nil,
				"remote_ip_prefix": nil, "remote_group_id": remote, "remote_address_group_id": nil,
				"normalized_cidr": nil, "description": "", "belongs_to_default_sg": true,
				"created_at": now, "updated_at": now, "revision_number": 0,
			}
			st.rules.put(r)
			rules = append(rules, r)
		}
	}
	st.sgs.put(map[string]any{
		"id": id, "name": "default", "description": "Default security group",
		"tenant_id": project, "project_id": project, "stateful": true, "shared": false,
		"security_group_rules": cloneJSON(rules), "tags": []any{},
		"created_at": now, "updated_at": now, "revision_number": 1,
	})
	return id
}

// ---- extensions and quotas ----

// neutronExtensions are the API extensions of ML2 with linuxbridge (and no
// L3, QoS, DNS or segments plugin) that the stub lives up to. Of the ones
// nova checks, "multi-provider" (segments of a network: none here) and
// "ip-substring-filtering" are on; "binding-extended" (multiple port
// bindings), "dns-integration", "fip-port-details", "segment",
// "port-resource-request-groups" and "vnic-index" are off.
var neutronExtensions = [][3]string{
	{"agent", "agent", "The agent management extension."},
	{"allowed-address-pairs", "Allowed Address Pairs", "Provides allowed address pairs"},
	{"binding", "Port Binding", "Expose port bindings of a virtual port to external application"},
	{"external-net", "Neutron external network", "Adds external network attribute to network resource."},
	{"extra_dhcp_opt", "Neutron Extra DHCP options", "Extra options configuration for DHCP. For example PXE boot options to DHCP clients can be specified (e.g. tftp-server, server-ip-address, bootfile-name)"},
	{"ip-substring-filtering", "IP address substring filtering", "Provides IP address substring filtering when listing ports"},
	{"multi-provider", "Multi Provider Network", "Expose mapping of virtual networks to multiple physical networks"},
	{"net-mtu", "Network MTU", "Provides MTU attribute for a network resource."},
	{"network_availability_zone", "Network Availability Zone", "Availability zone support for network."},
	{"port-security", "Port Security", "Provides port security"},
	{"project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."},
	{"provider", "Provider Network", "Expose mapping of virtual networks to physical networks"},
	{"quotas", "Quota management support", "Expose functions for quotas management per project"},
	{"quota_details", "Quota details management support", "Expose functions for quotas usage statistics per project"},
	{"security-group", "security-group", "The security groups extension."},
	{"standard-attr-description", "standard-attr-description", "Extension to add descriptions to standard attributes"},
	{"standard-attr-revisions", "Resource revision numbers", "This extension will display the revision number of neutron resources."},
	{"standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes."},
}

func extensionJSON(e [3]string) map[string]any {
	return map[string]any{"alias": e[0], "name": e[1], "description": e[2],
		"updated": "2013-01-01T10:00:00-00:00", "links": []any{}}
}

func extensionsAnswer(c *neutronCall, args []string) (int, any) {
	switch {
	case len(args) > 1:
		return c.notFound()
	case c.method != http.MethodGet:
		return c.notAllowed()
	case len(args) == 0:
		var l []map[string]any
		for _, e := range neutronExtensions {
			l = append(l, extensionJSON(e))
		}
		return listAnswer("extensions", l, c.query)
	}
	for _, e := range neutronExtensions {
		if e[0] == args[0] {
			return http.StatusOK, map[string]any{"extension": pickFields(extensionJSON(e), c.query["fields"])}
		}
	}
	return neutronError(http.StatusNotFound, "HTTPNotFound", "Extension with alias "+args[0]+" does not exist")
}

// quotas answers GET /v2.0/quotas (no project has non-default quotas),
// /quotas/{project}, /quotas/{project}/default and /quotas/{project}/details:
// all unlimited.
func (st *neutronState) quotas(c *neutronCall, args []string) (int, any) {
	if c.method != http.MethodGet {
		return c.notAllowed()
	}
	if len(args) == 0 {
		return http.StatusOK, map[string]any{"quotas": []any{}}
	}
	project := args[0]
	counts := map[string]int{
		"network": st.countProject(st.networks, project), "subnet": st.countProject(st.subnets, project),
		"port": st.countProject(st.ports, project), "security_group": st.countProject(st.sgs, project),
		"security_group_rule": st.countProject(st.rules, project), "subnetpool": 0, "rbac_policy": 0,
	}
	q := map[string]any{}
	switch {
	case len(args) == 1 || len(args) == 2 && args[1] == "default":
		for k := range counts {
			q[k] = -1
		}
	case len(args) == 2 && args[1] == "details":
		for k, n := range counts {
			q[k] = map[string]any{"limit": -1, "used": n, "reserved": 0}
		}
	default:
		return c.notFound()
	}
	return http.StatusOK, map[string]any{"quota": q}
}

func (st *neutronState) countProject(t *neutronTable, project string) int {
	n := 0
	for _, o := range t.list() {
		if o["project_id"] == project {
			n++
		}
	}
	return n
}

// ---- ports ----

// portAttr describes a port attribute a request may set.
type portAttr struct {
	kind   string // "string", "string-or-null", "bool", "dict-or-null", "list", "list-or-null"
	create bool   // allowed in POST
	update bool   // allowed in PUT
}

var portAttrs = map[string]portAttr{
	"name":                  {"string", true, true},
	"description":           {"string", true, true},
	"network_id":            {"string", true, false},
	"tenant_id":             {"string", true, false},
	"project_id":            {"string", true, false},
	"admin_state_up":        {"bool", true, true},
	"mac_address":           {"string", true, true},
	"fixed_ips":             {"list", true, true},
	"device_id":             {"string", true, true},
	"device_owner":          {"string", true, true},
	"security_groups":       {"list-or-null", true, true},
	"port_security_enabled": {"bool", true, true},
	"binding:host_id":       {"string-or-null", true, true},
	"binding:profile":       {"dict-or-null", true, true},
	"binding:vnic_type":     {"string", true, true},
	"dns_name":              {"string", true, true},
	"allowed_address_pairs": {"list-or-null", true, true},
	"extra_dhcp_opts":       {"list-or-null", true, true},
}

// portReadOnly are attributes neutron shows but nobody sets.
var portReadOnly = map[string]bool{
	"id": true, "status": true, "binding:vif_type": true, "binding:vif_details": true,
	"created_at": true, "updated_at": true, "revision_number": true, "tags": true,
}

var vnicTypes = map[string]bool{
	"normal": true, "direct": true, "macvtap": true, "baremetal": true, "direct-physical": true,
	"virtio-forwarder": true, "smart-nic": true, "vdpa": true, "accelerator-direct": true,
	"accelerator-direct-physical": true, "remote-managed": true,
}

func badRequest(format string, a ...any) (int, any) {
	return neutronError(http.StatusBadRequest, "HTTPBadRequest", fmt.Sprintf(format, a...))
}

// decodePortBody returns the member object of a {"port": {...}} body, checked
// against portAttrs for a POST (create) or a PUT.
func decodePortBody(body []byte, create bool) (map[string]any, int, any) {
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		st, e := badRequest("Failed to parse request. Resource body required: %v", err)
		return nil, st, e
	}
	if _, bulk := doc["ports"]; bulk {
		st, e := badRequest("stub: bulk port requests are not supported")
		return nil, st, e
	}
	in, ok := doc["port"].(map[string]any)
	if !ok {
		st, e := badRequest("Failed to parse request. Resource body required: no port object")
		return nil, st, e
	}
	keys := make([]string, 0, len(in))
	for k := range in {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := in[k]
		a, known := portAttrs[k]
		switch {
		case !known && portReadOnly[k] && create:
			st, e := badRequest("Attribute '%s' not allowed in POST", k)
			return nil, st, e
		case !known && portReadOnly[k]:
			st, e := badRequest("Cannot update read-only attribute %s", k)
			return nil, st, e
		case !known:
			st, e := badRequest("Unrecognized attribute(s) '%s'", k)
			return nil, st, e
		case create && !a.create:
			st, e := badRequest("Attribute '%s' not allowed in POST", k)
			return nil, st, e
		case !create && !a.update:
			st, e := badRequest("Cannot update read-only attribute %s", k)
			return nil, st, e
		}
		ok := true
		switch a.kind {
		case "string":
			_, ok = v.(string)
		case "string-or-null":
			_, ok = v.(string)
			ok = ok || v == nil
		case "bool":
			_, ok = v.(bool)
		case "dict-or-null":
			_, ok = v.(map[string]any)
			ok = ok || v == nil
		case "list":
			_, ok = v.([]any)
		case "list-or-null":
			_, ok = v.([]any)
			ok = ok || v == nil
		}
		if !ok {
			st, e := badRequest("Invalid input for %s. Reason: '%v' is not a valid %s.", k, v, a.kind)
			return nil, st, e
		}
	}
	if vt, ok := in["binding:vnic_type"].(string); ok && !vnicTypes[vt] {
		st, e := badRequest("Invalid input for binding:vnic_type. Reason: '%s' is not in the valid values.", vt)
		return nil, st, e
	}
	if create {
		if _, ok := in["network_id"]; !ok {
			st, e := badRequest("Failed to parse request. Required attribute 'network_id' not specified")
			return nil, st, e
		}
	}
	return in, 0, nil
}

func (st *neutronState) portsAPI(c *neutronCall, args []string) (int, any) {
	switch {
	case len(args) == 0 && c.method == http.MethodGet:
		return listAnswer("ports", st.ports.list(), c.query)
	case len(args) == 0 && c.method == http.MethodPost:
		return st.createPort(c)
	case len(args) == 0:
		return c.notAllowed()
	case len(args) > 1:
		return c.notFound()
	}
	id := args[0]
	p := st.ports.get(id)
	if p == nil {
		if c.method != http.MethodGet && c.method != http.MethodPut && c.method != http.MethodDelete {
			return c.notAllowed()
		}
		return neutronError(http.StatusNotFound, "PortNotFound", fmt.Sprintf("Port %s could not be found.", id))
	}
	switch c.method {
	case http.MethodGet:
		return http.StatusOK, map[string]any{"port": pickFields(p, c.query["fields"])}
	case http.MethodPut:
		return st.updatePort(c, p)
	case http.MethodDelete:
		st.releasePort(p)
		st.ports.del(id)
		return http.StatusNoContent, nil
	}
	return c.notAllowed()
}

func (st *neutronState) createPort(c *neutronCall) (int, any) {
	in, status, e := decodePortBody(c.body, true)
	if in == nil {
		return status, e
	}
	netID := in["network_id"].(string)
	n := st.networks.get(netID)
	if n == nil {
		return neutronError(http.StatusNotFound, "NetworkNotFound", fmt.Sprintf("Network %s could not be found.", netID))
	}
	tenant, _ := in["tenant_id"].(string)
	project, _ := in["project_id"].(string)
	switch {
	case tenant != "" && project != "" && tenant != project:
		return badRequest("'project_id' and 'tenant_id' do not match")
	case project == "":
		project = tenant
	}
	if project == "" {
		project = c.project
	}
	if project == "" {
		project = n["project_id"].(string)
	}
	id := uuid.NewString()
	now := neutronNow()
	p := map[string]any{
		"id": id, "name": "", "description": "", "network_id": netID,
		"tenant_id": project, "project_id": project, "admin_state_up": true, "status": "DOWN",
		"device_id": "", "device_owner": "", "fixed_ips": []any{},
		"port_security_enabled": n["port_security_enabled"], "security_groups": []any{},
		"binding:host_id": "", "binding:profile": map[string]any{}, "binding:vnic_type": "normal",
		"dns_name": "", "allowed_address_pairs": []any{}, "extra_dhcp_opts": []any{},
		"tags": []any{}, "created_at": now, "updated_at": now, "revision_number": 1,
	}
	sgDefault := st.ensureDefaultSG(project)
	if status, e := st.applyPortAttrs(p, in, true); status != 0 {
		return status, e
	}
	if _, ok := in["security_groups"]; !ok && p["port_security_enabled"] == true &&
		!strings.HasPrefix(p["device_owner"].(string), "network:") {
		p["security_groups"] = []any{sgDefault}
	}
	if _, ok := in["mac_address"]; !ok {
		p["mac_address"] = st.newMAC(netID)
	}
	st.macs[netID+"/"+p["mac_address"].(string)] = id
	st.ports.put(p)
	return http.StatusCreated, map[string]any{"port": cloneJSON(p)}
}

func (st *neutronState) updatePort(c *neutronCall, p map[string]any) (int, any) {
	in, status, e := decodePortBody(c.body, false)
	if in == nil {
		return status, e
	}
	np := cloneJSON(p).(map[string]any)
	if status, e := st.applyPortAttrs(np, in, false); status != 0 {
		return status, e
	}
	for k := range np {
		p[k] = np[k]
	}
	touch(p)
	return http.StatusOK, map[string]any{"port": cloneJSON(p)}
}

// applyPortAttrs sets the (checked) attributes in on port p, whose id and
// network_id are set, allocating fixed IPs and the MAC. On an error nothing
// of the stub's state has changed (p may have).
func (st *neutronState) applyPortAttrs(p, in map[string]any, create bool) (int, any) {
	id, netID := p["id"].(string), p["network_id"].(string)
	var newMAC string
	for k, v := range in {
		switch k {
		case "network_id", "tenant_id", "project_id", "fixed_ips":
		case "mac_address":
			hw, err := net.ParseMAC(v.(string))
			if err != nil || len(hw) != 6 {
				return badRequest("Invalid input for mac_address. Reason: '%v' is not a valid MAC address.", v)
			}
			mac := hw.String()
			if owner, used := st.macs[netID+"/"+mac]; used && owner != id {
				return neutronError(http.StatusConflict, "MacAddressInUse",
					fmt.Sprintf("Unable to complete operation for network %s. The mac address %s is in use.", netID, mac))
			}
			newMAC = mac
		case "security_groups":
			l := []any{}
			if v != nil {
				for _, g := range v.([]any) {
					gid, _ := g.(string)
					if st.sgs.get(gid) == nil {
						return neutronError(http.StatusNotFound, "SecurityGroupNotFound", fmt.Sprintf("Security group %v does not exist", g))
					}
					l = append(l, gid)
				}
			}
			p[k] = l
		case "binding:host_id":
			if v == nil {
				v = ""
			}
			p[k] = v
		case "binding:profile":
			if v == nil {
				v = map[string]any{}
			}
			p[k] = cloneJSON(v)
		case "allowed_address_pairs", "extra_dhcp_opts":
			if v == nil {
				v = []any{}
			}
			p[k] = cloneJSON(v)
		default:
			p[k] = cloneJSON(v)
		}
	}
	if p["port_security_enabled"] == false && len(p["security_groups"].([]any)) > 0 {
		if _, set := in["security_groups"]; set || create {
			return neutronError(http.StatusBadRequest, "PortSecurityAndIPRequiredForSecurityGroups",
				"Port security must be enabled and port must have an IP address in order to use security groups.")
		}
		return neutronError(http.StatusConflict, "PortSecurityPortHasSecurityGroup",
			"Port has security group associated. Cannot disable port security or IP address until security group is removed.")
	}
	var ips []stubFixedIP
	var status int
	var e any
	if v, ok := in["fixed_ips"]; ok {
		ips, status, e = st.resolveIPs(netID, id, v.([]any))
	} else if create {
		ips, status, e = st.defaultIPs(netID)
	} else {
		ips = fixedIPsOf(p)
	}
	if status != 0 {
		return status, e
	}
	// Commit: nothing fails from here on.
	if newMAC != "" {
		if old, ok := p["mac_address"].(string); ok && !create {
			delete(st.macs, netID+"/"+old)
			st.macs[netID+"/"+newMAC] = id
		}
		p["mac_address"] = newMAC
	}
	if !create {
		st.releaseIPs(id, fixedIPsOf(p))
	}
	list := []any{}
	for _, ip := range ips {
		st.ipam[ip.subnet].used[ip.addr] = id
		list = append(list, map[string]any{"subnet_id": ip.subnet, "ip_address": ip.addr.String()})
	}
	p["fixed_ips"] = list
	bindPort(p)
	return 0, nil
}

// bindPort sets the binding:vif_* attributes as ML2 linuxbridge would.
func bindPort(p map[string]any) {
	host, _ := p["binding:host_id"].(string)
	switch {
	case host == "":
		p["binding:vif_type"], p["binding:vif_details"] = "unbound", map[string]any{}
	case p["binding:vnic_type"] != "normal":
		p["binding:vif_type"], p["binding:vif_details"] = "binding_failed", map[string]any{}
	default:
		p["binding:vif_type"] = "bridge"
		p["binding:vif_details"] = map[string]any{"port_filter": true, "connectivity": "l2"}
	}
}

// releasePort frees the port's addresses and MAC.
func (st *neutronState) releasePort(p map[string]any) {
	id := p["id"].(string)
	st.releaseIPs(id, fixedIPsOf(p))
	if mac, ok := p["mac_address"].(string); ok {
		delete(st.macs, p["network_id"].(string)+"/"+mac)
	}
}

func (st *neutronState) releaseIPs(portID string, ips []stubFixedIP) {
	for _, ip := range ips {
		if ipam := st.ipam[ip.subnet]; ipam != nil && ipam.used[ip.addr] == portID {
			delete(ipam.used, ip.addr)
		}
	}
}

// newMAC returns a free fa:16:3e:xx:xx:xx address on the network.
func (st *neutronState) newMAC(netID string) string {
	for {
		var b [3]byte
		_, _ = rand.Read(b[:])
		mac := fmt.Sprintf("fa:16:3e:%02x:%02x:%02x", b[0], b[1], b[2])
		if _, used := st.macs[netID+"/"+mac]; !used {
			return mac
		}
	}
}

// ---- IP addresses ----

type stubIPAM struct {
	prefix  netip.Prefix
	gateway netip.Addr // invalid: none
	pools   [][2]netip.Addr
	used    map[netip.Addr]string // address -> port id
}

type stubFixedIP struct {
	subnet string
	addr   netip.Addr
}

func fixedIPsOf(p map[string]any) []stubFixedIP {
	var out []stubFixedIP
	l, _ := p["fixed_ips"].([]any)
	for _, e := range l {
		m := e.(map[string]any)
		a, err := netip.ParseAddr(m["ip_address"].(string))
		if err == nil {
			out = append(out, stubFixedIP{m["subnet_id"].(string), a})
		}
	}
	return out
}

// hostRange is the first and last address of p a port may get: without
// the network address, and the broadcast address for IPv4.
func hostRange(p netip.Prefix) (netip.Addr, netip.Addr) {
	first := p.Addr()
	b := first.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ := netip.AddrFromSlice(b)
	if first.Is4() && p.Bits() >= 31 {
		return first, last
	}
	first = first.Next()
	if last.Is4() {
		last = last.Prev()
	}
	return first, last
}

// free reports whether port may take a: in the subnet, not the gateway,
// not held by another port, not taken earlier in the same request.
func (ipam *stubIPAM) free(a netip.Addr, port string, taken map[netip.Addr]bool) bool {
	owner, used := ipam.used[a]
	return a != ipam.gateway && (!used || owner == port) && !taken[a]
}

func (ipam *stubIPAM) next(port string, taken map[netip.Addr]bool) (netip.Addr, bool) {
	for _, pool := range ipam.pools {
		for a := pool[0]; a.IsValid() && a.Compare(pool[1]) <= 0; a = a.Next() {
			if ipam.free(a, port, taken) {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

func (st *neutronState) networkSubnets(netID string) []string {
	var out []string
	for _, id := range st.networks.get(netID)["subnets"].([]any) {
		out = append(out, id.(string))
	}
	return out
}

// defaultIPs picks a port's addresses when it asks for none: one from the
// network's first IPv4 subnet and one from its first IPv6 subnet.
func (st *neutronState) defaultIPs(netID string) ([]stubFixedIP, int, any) {
	var out []stubFixedIP
	done := map[bool]bool{}
	for _, sid := range st.networkSubnets(netID) {
		ipam := st.ipam[sid]
		v4 := ipam.prefix.Addr().Is4()
		if done[v4] {
			continue
		}
		done[v4] = true
		a, ok := ipam.next("", nil)
		if !ok {
			status, e := st.exhausted(netID)
			return nil, status, e
		}
		out = append(out, stubFixedIP{sid, a})
	}
	return out, 0, nil
}

func (st *neutronState) exhausted(netID string) (int, any) {
	return neutronError(http.StatusConflict, "IpAddressGenerationFailure",
		fmt.Sprintf("No more IP addresses available on network %s.", netID))
}

// resolveIPs turns a fixed_ips request ([{subnet_id?, ip_address?}]) for
// port on network netID into addresses; the port's own addresses count as
// free. Nothing changes.
func (st *neutronState) resolveIPs(netID, port string, reqs []any) ([]stubFixedIP, int, any) {
	subnets := st.networkSubnets(netID)
	taken := map[string]map[netip.Addr]bool{}
	var out []stubFixedIP
	for _, r := range reqs {
		m, ok := r.(map[string]any)
		if !ok {
			s, e := badRequest("Invalid input for fixed_ips. Reason: '%v' is not a dictionary.", r)
			return nil, s, e
		}
		for k := range m {
			if k != "subnet_id" && k != "ip_address" {
				s, e := badRequest("Invalid input for fixed_ips. Reason: unrecognized key '%s'.", k)
				return nil, s, e
			}
		}
		sid, _ := m["subnet_id"].(string)
		ipStr, hasIP := m["ip_address"].(string)
		if sid == "" && !hasIP {
			s, e := badRequest("Invalid input for fixed_ips. Reason: neither subnet_id nor ip_address given.")
			return nil, s, e
		}
		if sid != "" && !slices.Contains(subnets, sid) {
			s, e := badRequest("Invalid input for operation: Failed to create port on network %s, because fixed_ips included invalid subnet %s.", netID, sid)
			return nil, s, e
		}
		if !hasIP {
			ipam := st.ipam[sid]
			a, ok := ipam.next(port, taken[sid])
			if !ok {
				s, e := st.exhausted(netID)
				return nil, s, e
			}
			out = append(out, stubFixedIP{sid, a})
			if taken[sid] == nil {
				taken[sid] = map[netip.Addr]bool{}
			}
			taken[sid][a] = true
			continue
		}
		a, err := netip.ParseAddr(ipStr)
		if err != nil {
			s, e := badRequest("Invalid input for ip_address. Reason: '%s' is not a valid IP address.", ipStr)
			return nil, s, e
		}
		if sid == "" {
			for _, id := range subnets {
				if st.ipam[id].prefix.Contains(a) {
					sid = id
					break
				}
			}
			if sid == "" {
				s, e := neutronError(http.StatusBadRequest, "InvalidIpForNetwork",
					fmt.Sprintf("IP address %s is not a valid IP for any of the subnets on the specified network.", a))
				return nil, s, e
			}
		}
		ipam := st.ipam[sid]
		if first, last := hostRange(ipam.prefix); !ipam.prefix.Contains(a) || a.Compare(first) < 0 || a.Compare(last) > 0 {
			s, e := neutronError(http.StatusBadRequest, "InvalidIpForSubnet",
				fmt.Sprintf("IP address %s is not a valid IP for the specified subnet.", a))
			return nil, s, e
		}
		if !ipam.free(a, port, taken[sid]) {
			s, e := neutronError(http.StatusConflict, "IpAddressAlreadyAllocated",
				fmt.Sprintf("IP address %s already allocated in subnet %s", a, sid))
			return nil, s, e
		}
		out = append(out, stubFixedIP{sid, a})
		if taken[sid] == nil {
			taken[sid] = map[netip.Addr]bool{}
		}
		taken[sid][a] = true
	}
	return out, 0, nil
}

// NeutronStubT starts a stub for the test and stops it with t.Cleanup.
func NeutronStubT(t testing.TB) *NeutronStub {
	t.Helper()
	s, err := StartNeutronStub("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop neutron stub: %v", err)
		}
	})
	return s
}

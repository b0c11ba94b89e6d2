package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// neutronDo sends method path (with body as JSON if not nil) to the stub,
// with the deployment's token when token is set, and returns the status and
// the decoded answer (nil for an empty body).
func neutronDo(t *testing.T, s *NeutronStub, method, path string, body any, token bool) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.URL()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token {
		req.Header.Set("X-Auth-Token", PlacementToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) == 0 {
		return resp.StatusCode, nil
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: %d %q: %v", method, path, resp.StatusCode, raw, err)
	}
	return resp.StatusCode, out
}

// neutronOK is neutronDo that wants status want.
func neutronOK(t *testing.T, s *NeutronStub, want int, method, path string, body any) map[string]any {
	t.Helper()
	st, out := neutronDo(t, s, method, path, body, true)
	if st != want {
		t.Fatalf("%s %s: %d %v, want %d", method, path, st, out, want)
	}
	return out
}

// neutronErr wants a NeutronError of type typ with status want.
func neutronErr(t *testing.T, s *NeutronStub, want int, typ, method, path string, body any) {
	t.Helper()
	st, out := neutronDo(t, s, method, path, body, true)
	e, _ := out["NeutronError"].(map[string]any)
	if st != want || e == nil || (typ != "" && e["type"] != typ) || e["message"] == "" {
		t.Errorf("%s %s: %d %v, want %d %s", method, path, st, out, want, typ)
	}
}

// ids returns the ids of the members of list key of out.
func ids(out map[string]any, key string) []string {
	l := []string{}
	for _, o := range out[key].([]any) {
		l = append(l, o.(map[string]any)["id"].(string))
	}
	return l
}

func ipsOf(p map[string]any) []string {
	var l []string
	for _, f := range p["fixed_ips"].([]any) {
		l = append(l, f.(map[string]any)["ip_address"].(string))
	}
	return l
}

func TestNeutronStubEmpty(t *testing.T) {
	s := NeutronStubT(t)
	for _, c := range []string{"networks", "subnets", "ports", "security-groups", "security-group-rules", "floatingips", "trunks"} {
		st, out := neutronDo(t, s, "GET", "/v2.0/"+c, nil, false)
		if l, ok := out[strings.ReplaceAll(c, "-", "_")].([]any); st != 200 || !ok || len(l) != 0 {
			t.Errorf("GET %s: %d %v", c, st, out)
		}
	}
	out := neutronOK(t, s, 200, "GET", "/v2.0/extensions", nil)
	aliases := map[string]bool{}
	for _, e := range out["extensions"].([]any) {
		e := e.(map[string]any)
		aliases[e["alias"].(string)] = true
		if e["name"] == "" || e["description"] == "" {
			t.Errorf("extension %v", e)
		}
	}
	for _, a := range []string{"binding", "security-group", "quotas", "port-security", "net-mtu", "extra_dhcp_opt", "multi-provider", "ip-substring-filtering"} {
		if !aliases[a] {
			t.Errorf("extension %s missing", a)
		}
	}
	for _, a := range []string{"binding-extended", "dns-integration", "port-resource-request-groups", "segment"} {
		if aliases[a] {
			t.Errorf("extension %s advertised", a)
		}
	}
	if e := neutronOK(t, s, 200, "GET", "/v2.0/extensions/binding", nil); e["extension"].(map[string]any)["alias"] != "binding" {
		t.Errorf("show extension: %v", e)
	}
	neutronErr(t, s, 404, "", "GET", "/v2.0/extensions/binding-extended", nil)
	q := neutronOK(t, s, 200, "GET", "/v2.0/quotas/admin", nil)["quota"].(map[string]any)
	for _, k := range []string{"port", "network", "subnet", "security_group"} {
		if q[k] != -1.0 {
			t.Errorf("quota %s = %v", k, q[k])
		}
	}
	neutronErr(t, s, 404, "", "GET", "/v2.0/bogus", nil)
	neutronErr(t, s, 404, "", "POST", "/v2.0/floatingips", map[string]any{})
	neutronErr(t, s, 405, "", "POST", "/v2.0/networks", map[string]any{"network": map[string]any{}})
	if n := len(s.Requests()); n != 14 {
		t.Errorf("%d requests recorded, want 14", n)
	}
	if r := s.Requests()[0]; r.Method != "GET" || r.Path != "/v2.0/networks" || r.Status != 200 {
		t.Errorf("first request %v", r)
	}
}

func TestNeutronStubNetworks(t *testing.T) {
	s := NeutronStubT(t)
	net := s.AddNetwork("private", 1450)
	other := s.AddNetwork("other", 0)
	sn := s.AddSubnet(net.ID, "10.10.0.5/24", "", []string{"10.10.0.53", "192.0.2.53"}, [][2]string{{"192.168.0.0/16", "10.10.0.254"}})
	sn6 := s.AddSubnet(net.ID, "fd00:10::/64", "fd00:10::1", nil, nil)
	mid := s.AddSubnet(other.ID, "172.16.0.0/29", "172.16.0.3", nil, nil)
	none := s.AddSubnet(other.ID, "172.16.1.0/30", "none", nil, nil)

	if net.MTU != 1450 || other.MTU != 1500 || net.ProjectID != "admin" || net.NetworkType != "flat" {
		t.Errorf("networks %+v %+v", net, other)
	}
	if sn.CIDR != "10.10.0.0/24" || sn.Gateway != "10.10.0.1" || sn.IPVersion != 4 ||
		fmt.Sprint(sn.AllocationPools) != "[[10.10.0.2 10.10.0.254]]" || len(sn.DNS) != 2 || len(sn.HostRoutes) != 1 {
		t.Errorf("subnet %+v", sn)
	}
	if sn6.IPVersion != 6 || fmt.Sprint(sn6.AllocationPools) != "[[fd00:10::2 fd00:10::ffff:ffff:ffff:ffff]]" {
		t.Errorf("subnet %+v", sn6)
	}
	if fmt.Sprint(mid.AllocationPools) != "[[172.16.0.1 172.16.0.2] [172.16.0.4 172.16.0.6]]" {
		t.Errorf("pools around the gateway: %v", mid.AllocationPools)
	}
	if none.Gateway != "" || fmt.Sprint(none.AllocationPools) != "[[172.16.1.1 172.16.1.2]]" {
		t.Errorf("subnet without gateway: %+v", none)
	}

	out := neutronOK(t, s, 200, "GET", "/v2.0/networks?id="+net.ID+"&id=0b0b0b0b-0000-0000-0000-000000000000", nil)
	if got := ids(out, "networks"); len(got) != 1 || got[0] != net.ID {
		t.Fatalf("by id: %v", got)
	}
	n := out["networks"].([]any)[0].(map[string]any)
	for k, want := range map[string]any{
		"name": "private", "status": "ACTIVE", "admin_state_up": true, "shared": false,
		"tenant_id": "admin", "project_id": "admin", "mtu": 1450.0, "router:external": false,
		"port_security_enabled": true, "provider:network_type": "flat",
	} {
		if n[k] != want {
			t.Errorf("network %s = %v, want %v", k, n[k], want)
		}
	}
	if fmt.Sprint(n["subnets"]) != fmt.Sprint([]string{sn.ID, sn6.ID}) {
		t.Errorf("network subnets %v", n["subnets"])
	}
	for q, want := range map[string]int{
		"tenant_id=admin&shared=False": 2,
		"shared=True":                  0,
		"project_id=other":             0,
		"name=other":                   1,
		"router%3Aexternal=True":       0,
		"tenant_id=admin&shared=False&admin_state_up=True": 2,
		"mtu=1450": 1,
	} {
		if got := len(neutronOK(t, s, 200, "GET", "/v2.0/networks.json?"+q, nil)["networks"].([]any)); got != want {
			t.Errorf("networks?%s: %d, want %d", q, got, want)
		}
	}
	out = neutronOK(t, s, 200, "GET", "/v2.0/networks?name=private&fields=id&fields=mtu", nil)
	if n := out["networks"].([]any)[0].(map[string]any); len(n) != 2 || n["id"] != net.ID || n["mtu"] != 1450.0 {
		t.Errorf("fields: %v", n)
	}
	if n := neutronOK(t, s, 200, "GET", "/v2.0/networks/"+net.ID, nil)["network"].(map[string]any); n["name"] != "private" {
		t.Errorf("show: %v", n)
	}
	// nova with multi-provider: fields=segments on a one-segment network.
	if n := neutronOK(t, s, 200, "GET", "/v2.0/networks/"+net.ID+"?fields=segments", nil)["network"].(map[string]any); len(n) != 0 {
		t.Errorf("segments: %v", n)
	}
	n = neutronOK(t, s, 200, "GET", "/v2.0/networks/"+net.ID+"?fields=provider%3Aphysical_network&fields=provider%3Anetwork_type", nil)["network"].(map[string]any)
	if len(n) != 2 || n["provider:network_type"] != "flat" || n["provider:physical_network"] != "physnet1" {
		t.Errorf("provider fields: %v", n)
	}
	neutronErr(t, s, 404, "NetworkNotFound", "GET", "/v2.0/networks/0b0b0b0b-0000-0000-0000-000000000000", nil)

	out = neutronOK(t, s, 200, "GET", "/v2.0/subnets?id="+sn.ID+"&id="+sn6.ID, nil)
	if got := ids(out, "subnets"); fmt.Sprint(got) != fmt.Sprint([]string{sn.ID, sn6.ID}) {
		t.Errorf("subnets by id: %v", got)
	}
	sub := out["subnets"].([]any)[0].(map[string]any)
	for k, want := range map[string]any{
		"cidr": "10.10.0.0/24", "gateway_ip": "10.10.0.1", "ip_version": 4.0, "enable_dhcp": false,
		"network_id": net.ID, "tenant_id": "admin",
	} {
		if sub[k] != want {
			t.Errorf("subnet %s = %v, want %v", k, sub[k], want)
		}
	}
	if fmt.Sprint(sub["dns_nameservers"], sub["host_routes"], sub["allocation_pools"]) !=
		"[10.10.0.53 192.0.2.53] [map[destination:192.168.0.0/16 nexthop:10.10.0.254]] [map[end:10.10.0.254 start:10.10.0.2]]" {
		t.Errorf("subnet %v", sub)
	}
	if got := ids(neutronOK(t, s, 200, "GET", "/v2.0/subnets?network_id="+other.ID, nil), "subnets"); fmt.Sprint(got) != fmt.Sprint([]string{mid.ID, none.ID}) {
		t.Errorf("subnets by network: %v", got)
	}
	if sub := neutronOK(t, s, 200, "GET", "/v2.0/subnets/"+none.ID, nil)["subnet"].(map[string]any); sub["gateway_ip"] != nil {
		t.Errorf("no gateway: %v", sub)
	}
	neutronErr(t, s, 404, "SubnetNotFound", "GET", "/v2.0/subnets/0b0b0b0b-0000-0000-0000-000000000000", nil)
}

func TestNeutronStubSecurityGroups(t *testing.T) {
	s := NeutronStubT(t)
	// Without a token (no project in the context) nothing is made.
	if st, out := neutronDo(t, s, "GET", "/v2.0/security-groups", nil, false); st != 200 || len(out["security_groups"].([]any)) != 0 {
		t.Fatalf("no token: %d %v", st, out)
	}
	// With one, the caller's default group comes into being, as in neutron.
	out := neutronOK(t, s, 200, "GET", "/v2.0/security-groups?tenant_id=admin&fields=id&fields=name", nil)
	l := out["security_groups"].([]any)
	if len(l) != 1 || len(l[0].(map[string]any)) != 2 || l[0].(map[string]any)["name"] != "default" {
		t.Fatalf("default group: %v", out)
	}
	id := l[0].(map[string]any)["id"].(string)
	if id != s.DefaultSecurityGroupID("admin") || id != NeutronStubT(t).DefaultSecurityGroupID("admin") {
		t.Errorf("default group id %s is not stable", id)
	}
	if other := s.DefaultSecurityGroupID("demo"); other == id {
		t.Errorf("demo's default group has admin's id")
	}
	for q, want := range map[string]int{
		"":                 2,
		"name=default":     2,
		"project_id=admin": 1,
		"id=" + id:         1,
		"name=web":         0,
	} {
		if got := len(neutronOK(t, s, 200, "GET", "/v2.0/security-groups?"+q, nil)["security_groups"].([]any)); got != want {
			t.Errorf("security-groups?%s: %d, want %d", q, got, want)
		}
	}
	sg := neutronOK(t, s, 200, "GET", "/v2.0/security-groups/"+id, nil)["security_group"].(map[string]any)
	if sg["tenant_id"] != "admin" || len(sg["security_group_rules"].([]any)) != 4 {
		t.Errorf("show: %v", sg)
	}
	rules := neutronOK(t, s, 200, "GET", "/v2.0/security-group-rules?security_group_id="+id+"&direction=ingress", nil)
	for _, r := range rules["security_group_rules"].([]any) {
		if r.(map[string]any)["remote_group_id"] != id {
			t.Errorf("ingress rule %v", r)
		}
	}
	if len(rules["security_group_rules"].([]any)) != 2 {
		t.Errorf("ingress rules %v", rules)
	}
	neutronErr(t, s, 404, "SecurityGroupNotFound", "GET", "/v2.0/security-groups/0b0b0b0b-0000-0000-0000-000000000000", nil)
}

func TestNeutronStubPorts(t *testing.T) {
	s := NeutronStubT(t)
	net := s.AddNetwork("private", 1450)
	sn := s.AddSubnet(net.ID, "10.20.0.0/29", "", nil, nil) // pool .2-.6
	sn6 := s.AddSubnet(net.ID, "fd00:20::/64", "", nil, nil)
	sg := s.DefaultSecurityGroupID("admin")
	macRE := regexp.MustCompile(`^fa:16:3e(:[0-9a-f]{2}){3}$`)

	p1 := neutronOK(t, s, 201, "POST", "/v2.0/ports", map[string]any{"port": map[string]any{
		"network_id": net.ID, "device_id": "vm-1", "admin_state_up": true, "tenant_id": "admin",
	}})["port"].(map[string]any)
	for k, want := range map[string]any{
		"network_id": net.ID, "device_id": "vm-1", "device_owner": "", "status": "DOWN",
		"tenant_id": "admin", "project_id": "admin", "admin_state_up": true, "dns_name": "",
		"binding:host_id": "", "binding:vif_type": "unbound", "binding:vnic_type": "normal",
		"port_security_enabled": true,
	} {
		if p1[k] != want {
			t.Errorf("port %s = %v, want %v", k, p1[k], want)
		}
	}
	if !macRE.MatchString(p1["mac_address"].(string)) {
		t.Errorf("mac %v", p1["mac_address"])
	}
	if fmt.Sprint(p1["security_groups"]) != "["+sg+"]" || fmt.Sprint(p1["binding:profile"]) != "map[]" {
		t.Errorf("port %v", p1)
	}
	if got := fmt.Sprint(p1["fixed_ips"]); got != fmt.Sprintf("[map[ip_address:10.20.0.2 subnet_id:%s] map[ip_address:fd00:20::2 subnet_id:%s]]", sn.ID, sn6.ID) {
		t.Errorf("fixed_ips %s", got)
	}
	id1 := p1["id"].(string)

	// Bind it: vif_type bridge (linuxbridge); status stays DOWN.
	p := neutronOK(t, s, 200, "PUT", "/v2.0/ports/"+id1, map[string]any{"port": map[string]any{
		"device_owner": "compute:nova", "binding:host_id": "compute1", "binding:profile": map[string]any{"x": "y"},
	}})["port"].(map[string]any)
	if p["binding:vif_type"] != "bridge" || fmt.Sprint(p["binding:vif_details"]) != "map[connectivity:l2 port_filter:true]" ||
		p["binding:host_id"] != "compute1" || p["device_owner"] != "compute:nova" || p["status"] != "DOWN" ||
		p["mac_address"] != p1["mac_address"] || fmt.Sprint(p["fixed_ips"]) != fmt.Sprint(p1["fixed_ips"]) ||
		p["revision_number"] != 2.0 {
		t.Errorf("bound port %v", p)
	}
	if !s.SetPortStatus(id1, "ACTIVE") || s.SetPortStatus("nope", "ACTIVE") {
		t.Error("SetPortStatus")
	}

	// A second port takes the next addresses, one with a fixed address and
	// a chosen MAC the one it asks for.
	p2 := neutronOK(t, s, 201, "POST", "/v2.0/ports", map[string]any{"port": map[string]any{"network_id": net.ID}})["port"].(map[string]any)
	if fmt.Sprint(ipsOf(p2)) != "[10.20.0.3 fd00:20::3]" || p2["mac_address"] == p1["mac_address"] {
		t.Errorf("second port %v", p2)
	}
	p3 := neutronOK(t, s, 201, "POST", "/v2.0/ports", map[string]any{"port": map[string]any{
		"network_id": net.ID, "fixed_ips": []any{map[string]any{"ip_address": "10.20.0.6"}},
		"mac_address": "FA:16:3E:00:00:01", "port_security_enabled": false,
	}})["port"].(map[string]any)
	if fmt.Sprint(ipsOf(p3)) != "[10.20.0.6]" || p3["mac_address"] != "fa:16:3e:00:00:01" || len(p3["security_groups"].([]any)) != 0 {
		t.Errorf("third port %v", p3)
	}

	// Errors, as neutron answers them.
	post := func(port map[string]any) map[string]any { return map[string]any{"port": port} }
	neutronErr(t, s, 400, "HTTPBadRequest", "POST", "/v2.0/ports", post(map[string]any{"device_id": "x"}))
	neutronErr(t, s, 400, "HTTPBadRequest", "POST", "/v2.0/ports", map[string]any{"network_id": net.ID})
	neutronErr(t, s, 400, "HTTPBadRequest", "POST", "/v2.0/ports", post(map[string]any{"network_id": net.ID, "bogus": 1}))
	neutronErr(t, s, 400, "HTTPBadRequest", "POST", "/v2.0/ports", post(map[string]any{"network_id": net.ID, "status": "ACTIVE"}))
	neutronErr(t, s, 400, "HTTPBadRequest", "POST", "/v2.0/ports", post(map[string]any{"network_id": net.ID, "device_id": 7}))
	neutronErr(t, s, 404, "NetworkNotFound", "POST", "/v2.0/ports", post(map[string]any{"network_id": "0b0b0b0b-0000-0000-0000-000000000000"}))
	neutronErr(t, s, 409, "IpAddressAlreadyAllocated", "POST", "/v2.0/ports", post(map[string]any{
		"network_id": net.ID, "fixed_ips": []any{map[string]any{"ip_address": "10.20.0.2"}}}))
	neutronErr(t, s, 409, "IpAddressAlreadyAllocated", "POST", "/v2.0/ports", post(map[string]any{
		"network_id": net.ID, "fixed_ips": []any{map[string]any{"ip_address": "10.20.0.1"}}})) // the gateway
	neutronErr(t, s, 400, "InvalidIpForNetwork", "POST", "/v2.0/ports", post(map[string]any{
		"network_id": net.ID, "fixed_ips": []any{map[string]any{"ip_address": "192.0.2.9"}}}))
	neutronErr(t, s, 400, "InvalidIpForSubnet", "POST", "/v2.0/ports", post(map[string]any{
		"network_id": net.ID, "fixed_ips": []any{map[string]any{"ip_address": "10.20.0.7"}}})) // broadcast
	neutronErr(t, s, 409, "MacAddressInUse", "POST", "/v2.0/ports", post(map[string]any{"network_id": net.ID, "mac_address": "fa:16:3e:00:00:01"}))
	neutronErr(t, s, 404, "SecurityGroupNotFound", "POST", "/v2.0/ports", post(map[string]any{
		"network_id": net.ID, "security_groups": []any{"0b0b0b0b-0000-0000-0000-000000000000"}}))
	neutronErr(t, s, 400, "HTTPBadRequest", "PUT", "/v2.0/ports/"+id1, post(map[string]any{"network_id": net.ID}))
	neutronErr(t, s, 404, "PortNotFound", "GET", "/v2.0/ports/0b0b0b0b-0000-0000-0000-000000000000", nil)
	neutronErr(t, s, 404, "PortNotFound", "PUT", "/v2.0/ports/0b0b0b0b-0000-0000-0000-000000000000", post(map[string]any{"name": "x"}))
	neutronErr(t, s, 404, "PortNotFound", "DELETE", "/v2.0/ports/0b0b0b0b-0000-0000-0000-000000000000", nil)
	// .4 and .5 are left; a third asks for both, a fourth finds none.
	p4 := neutronOK(t, s, 201, "POST", "/v2.0/ports", post(map[string]any{"network_id": net.ID, "fixed_ips": []any{
		map[string]any{"subnet_id": sn.ID}, map[string]any{"subnet_id": sn.ID}}}))["port"].(map[string]any)
	if fmt.Sprint(ipsOf(p4)) != "[10.20.0.4 10.20.0.5]" {
		t.Errorf("two from one subnet: %v", p4["fixed_ips"])
	}
	neutronErr(t, s, 409, "IpAddressGenerationFailure", "POST", "/v2.0/ports", post(map[string]any{"network_id": net.ID}))
	if len(s.Ports()) != 4 {
		t.Fatalf("%d ports after failed creates", len(s.Ports()))
	}

	// Lists and filters.
	for q, want := range map[string][]string{
		"device_id=vm-1":                            {id1},
		"device_id=vm-1&device_id=" + "vm-2":        {id1},
		"network_id=" + net.ID + "&tenant_id=admin": {id1, p2["id"].(string), p3["id"].(string), p4["id"].(string)},
		"id=" + id1 + "&id=" + p3["id"].(string):    {id1, p3["id"].(string)},
		"binding%3Ahost_id=compute1":                {id1},
		"device_owner=network%3Adhcp":               {},
		"fixed_ips=ip_address%3D10.20.0.3":          {p2["id"].(string)},
		"fixed_ips=ip_address_substr%3D20.0.6":      {p3["id"].(string)},
		"fixed_ips=subnet_id%3D" + sn6.ID:           {id1, p2["id"].(string)},
		"status=ACTIVE":                             {id1},
		"admin_state_up=False":                      {},
	} {
		if got := ids(neutronOK(t, s, 200, "GET", "/v2.0/ports?"+q, nil), "ports"); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("ports?%s: %v, want %v", q, got, want)
		}
	}
	out := neutronOK(t, s, 200, "GET", "/v2.0/ports?device_id=vm-1&fields=id&fields=security_groups", nil)
	if l := out["ports"].([]any); len(l) != 1 || len(l[0].(map[string]any)) != 2 {
		t.Errorf("fields: %v", out)
	}
	if p := neutronOK(t, s, 200, "GET", "/v2.0/ports/"+id1+"?fields=binding%3Aprofile&fields=network_id", nil)["port"].(map[string]any); fmt.Sprint(p) != "map[binding:profile:map[x:y] network_id:"+net.ID+"]" {
		t.Errorf("show fields: %v", p)
	}

	// Unbind as nova does (binding:host_id None), change addresses.
	p = neutronOK(t, s, 200, "PUT", "/v2.0/ports/"+id1, post(map[string]any{
		"device_id": "", "device_owner": "", "binding:host_id": nil, "binding:profile": nil, "dns_name": "vm1",
		"security_groups": []any{}, "fixed_ips": []any{map[string]any{"ip_address": "10.20.0.2"}},
	}))["port"].(map[string]any)
	if p["binding:vif_type"] != "unbound" || p["binding:host_id"] != "" || fmt.Sprint(p["binding:vif_details"]) != "map[]" ||
		fmt.Sprint(p["binding:profile"]) != "map[]" || p["dns_name"] != "vm1" || len(p["security_groups"].([]any)) != 0 ||
		fmt.Sprint(ipsOf(p)) != "[10.20.0.2]" {
		t.Errorf("unbound port %v", p)
	}
	// Its IPv6 address went back to the pool; a vnic_type linuxbridge
	// cannot bind fails the binding.
	p5 := neutronOK(t, s, 201, "POST", "/v2.0/ports", post(map[string]any{"network_id": net.ID,
		"fixed_ips": []any{map[string]any{"subnet_id": sn6.ID}}, "binding:vnic_type": "direct", "binding:host_id": "compute1"}))["port"].(map[string]any)
	if fmt.Sprint(ipsOf(p5)) != "[fd00:20::2]" || p5["binding:vif_type"] != "binding_failed" {
		t.Errorf("port %v", p5)
	}

	// Delete: 204, no body; the address is free again.
	if st, out := neutronDo(t, s, "DELETE", "/v2.0/ports/"+p2["id"].(string), nil, true); st != 204 || out != nil {
		t.Errorf("delete: %d %v", st, out)
	}
	neutronErr(t, s, 404, "PortNotFound", "GET", "/v2.0/ports/"+p2["id"].(string), nil)
	if _, ok := s.Port(p2["id"].(string)); ok {
		t.Error("Port() finds a deleted port")
	}
	p6 := neutronOK(t, s, 201, "POST", "/v2.0/ports", post(map[string]any{"network_id": net.ID}))["port"].(map[string]any)
	if ipsOf(p6)[0] != "10.20.0.3" {
		t.Errorf("freed address not reused: %v", p6["fixed_ips"])
	}

	// Snapshots are copies.
	got, ok := s.Port(id1)
	if !ok || got["dns_name"] != "vm1" {
		t.Fatalf("Port(): %v %v", got, ok)
	}
	got["dns_name"] = "changed"
	got["fixed_ips"].([]any)[0].(map[string]any)["ip_address"] = "1.2.3.4"
	if again, _ := s.Port(id1); again["dns_name"] != "vm1" || ipsOf(again)[0] != "10.20.0.2" {
		t.Errorf("Port() shares state: %v", again)
	}
	var all []string
	for _, p := range s.Ports() {
		all = append(all, p["id"].(string))
	}
	if want := []string{id1, p3["id"].(string), p4["id"].(string), p5["id"].(string), p6["id"].(string)}; fmt.Sprint(all) != fmt.Sprint(want) {
		t.Errorf("Ports(): %v, want %v", all, want)
	}

	q := neutronOK(t, s, 200, "GET", "/v2.0/quotas/admin/details.json", nil)["quota"].(map[string]any)
	if port := q["port"].(map[string]any); port["used"] != 5.0 || port["limit"] != -1.0 {
		t.Errorf("quota details %v", q)
	}
}

// neutronInteropPy drives the stub with python3-neutronclient, then with
// nova's own nova.network.neutron.API (config from argv[1], the way
// nova-api and nova-compute talk to neutron: keystoneauth admin_token)
// through a server's network life: validate_networks,
// create_resource_requests, allocate_for_instance (create a port, bind it
// to the host), the network info model, security group bindings, IP
// filtering, a pre-existing port, deallocate_for_instance. Only what needs
// nova's database is mocked (VirtualInterface, InstanceInfoCache saves).
const neutronInteropPy = `
import json, os, sys, uuid
from unittest import mock

conf_path, url, net_id, v4_id, v6_id, sg_id = sys.argv[1:7]

def check(cond, what):
    if not cond:
        print('FAIL:', what, file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)

def raises(exc, fn, *a, **kw):
    try:
        fn(*a, **kw)
    except exc:
        return
    except Exception as e:
        check(False, '%s raised %r, want %s' % (fn.__name__, e, exc.__name__))
    check(False, '%s did not raise %s' % (fn.__name__, exc.__name__))

try:
    # --- the neutron client nova uses, by itself ---
    from neutronclient.v2_0 import client as nclient
    from neutronclient.common import exceptions as nexc
    c = nclient.Client(endpoint_url=url, token='admin:admin')
    nets = c.list_networks(id=[net_id, str(uuid.uuid4())])['networks']
    check([n['id'] for n in nets] == [net_id], 'list_networks(id=[...]) %r' % nets)
    check(nets[0]['mtu'] == 1450 and nets[0]['subnets'] == [v4_id, v6_id], 'network %r' % nets[0])
    check(c.list_networks(shared=True)['networks'] == [], 'shared networks')
    check(len(c.list_networks(tenant_id='admin', shared=False)['networks']) == 1, 'project networks')
    check(c.show_quota('admin')['quota']['port'] == -1, 'show_quota')
    sgs = c.list_security_groups(tenant_id='admin', fields=['id', 'name'])['security_groups']
    check(sgs == [{'id': sg_id, 'name': 'default'}], 'list_security_groups %r' % sgs)
    exts = {e['alias'] for e in c.list_extensions()['extensions']}
    check('binding' in exts and 'binding-extended' not in exts, 'extensions %r' % exts)

    p = c.create_port({'port': {'network_id': net_id, 'device_id': 'dev-1', 'tenant_id': 'admin'}})['port']
    check(p['status'] == 'DOWN' and p['binding:vif_type'] == 'unbound', 'created port %r' % p)
    check(p['mac_address'].startswith('fa:16:3e:') and p['security_groups'] == [sg_id], 'created port %r' % p)
    check([f['subnet_id'] for f in p['fixed_ips']] == [v4_id, v6_id], 'fixed_ips %r' % p['fixed_ips'])
    p = c.update_port(p['id'], {'port': {'binding:host_id': 'compute1', 'device_owner': 'compute:nova'}})['port']
    check(p['binding:vif_type'] == 'bridge' and p['binding:vif_details']['port_filter'] is True, 'bound port %r' % p)
    check([x['id'] for x in c.list_ports(device_id='dev-1')['ports']] == [p['id']], 'list_ports(device_id)')
    check(c.show_port(p['id'])['port']['binding:host_id'] == 'compute1', 'show_port')
    raises(nexc.PortNotFoundClient, c.show_port, str(uuid.uuid4()))
    raises(nexc.NetworkNotFoundClient, c.create_port, {'port': {'network_id': str(uuid.uuid4())}})
    raises(nexc.BadRequest, c.create_port, {'port': {'device_id': 'x'}})
    raises(nexc.IpAddressAlreadyAllocatedClient, c.create_port,
           {'port': {'network_id': net_id, 'fixed_ips': [{'ip_address': p['fixed_ips'][0]['ip_address']}]}})
    raises(nexc.InvalidIpForNetworkClient, c.create_port,
           {'port': {'network_id': net_id, 'fixed_ips': [{'ip_address': '198.51.100.7'}]}})
    check(c.list_floatingips(port_id=p['id'])['floatingips'] == [], 'floating ips')
    c.delete_port(p['id'])
    raises(nexc.PortNotFoundClient, c.delete_port, p['id'])
    check(c.list_ports(device_id='dev-1')['ports'] == [], 'port left after delete_port')

    # --- nova's neutron API ---
    import nova.conf
    CONF = nova.conf.CONF
    CONF(['--config-file', conf_path], project='nova')
    from nova import context as nova_context, objects
    objects.register_all()
    from nova.network import model as network_model, neutron as neutronapi, security_group_api

    ctx = nova_context.RequestContext('admin', 'admin', is_admin=True, auth_token='admin:admin',
                                      roles=['admin', 'member', 'reader'])
    api = neutronapi.API()

    def instance():
        u = str(uuid.uuid4())
        return objects.Instance(context=ctx, uuid=u, project_id='admin', user_id='admin',
                                availability_zone='nova', hostname='vm-' + u[:8], host='compute1',
                                deleted=False, info_cache=objects.InstanceInfoCache(
                                    instance_uuid=u, network_info=network_model.NetworkInfo([])))

    no_db = [mock.patch.object(objects.VirtualInterface, 'create'),
             mock.patch.object(objects.VirtualInterface, 'delete_by_instance_uuid'),
             mock.patch.object(objects.InstanceInfoCache, 'save'),
             mock.patch.object(objects.InstanceInfoCache, 'refresh')]
    for m in no_db:
        m.start()

    reqs = objects.NetworkRequestList(objects=[objects.NetworkRequest(network_id=net_id)])
    check(api.validate_networks(ctx, reqs, 3) == 3, 'validate_networks')
    meta, groups, _ = api.create_resource_requests(ctx, reqs, objects.InstancePCIRequests(requests=[]))
    check(meta.physnets == {'physnet1'} and not meta.tunneled and groups == [], 'create_resource_requests %r' % meta)

    inst = instance()
    nwinfo = api.allocate_for_instance(ctx, inst, reqs, security_groups=['default'], bind_host_id='compute1')
    check(len(nwinfo) == 1, 'allocate_for_instance: %r' % nwinfo)
    vif = nwinfo[0]
    port = c.show_port(vif['id'])['port']
    check(port['device_id'] == inst.uuid and port['device_owner'] == 'compute:nova', 'port owner %r' % port)
    check(port['binding:host_id'] == 'compute1' and port['security_groups'] == [sg_id], 'port binding %r' % port)
    check(vif['type'] == 'bridge' and vif['vnic_type'] == 'normal' and vif['active'] is False, 'vif %r' % vif)
    check(vif['devname'] == ('tap' + vif['id'])[:14] and vif['address'] == port['mac_address'], 'vif %r' % vif)
    check(vif['details'] == {'port_filter': True, 'connectivity': 'l2'} and vif['profile'] == {}, 'vif details %r' % vif)
    net = vif['network']
    check(net['id'] == net_id and net['bridge'] == ('brq' + net_id)[:14] and net['label'] == 'private', 'network %r' % net)
    check(net['meta']['mtu'] == 1450 and net['meta']['should_create_bridge'] is True, 'network meta %r' % net['meta'])
    check(net['meta']['physical_network'] == 'physnet1' and net['meta']['tunneled'] is False, 'network meta %r' % net['meta'])
    check(inst.info_cache.network_info[0]['id'] == vif['id'], 'info cache not updated')

    # nova-api's server show: security groups of the instance's ports.
    check(security_group_api.get_instance_security_groups(ctx, inst) == [{'name': 'default'}], 'instance security groups')
    # GET /servers?ip=...: ports by address (ip-substring-filtering).
    ip4 = [ip['address'] for ip in vif.fixed_ips() if ip['version'] == 4][0]
    check(api._get_instance_uuids_by_ip(ctx, ip4) == [{'instance_uuid': inst.uuid}], 'instance by ip')
    check(api.has_substr_port_filtering_extension(ctx), 'substring filtering')
    check([p['device_id'] for p in api.list_ports(ctx, fixed_ips='ip_address_substr=' + ip4[:-1])['ports']] == [inst.uuid], 'ip substring')
    # The periodic / event-driven refresh from the info cache.
    again = api.get_instance_nw_info(ctx, inst)
    check(again.json() == nwinfo.json(), 'refreshed nw_info differs:\n%s\n%s' % (again.json(), nwinfo.json()))
    api.setup_networks_on_host(ctx, inst, teardown=True)

    # A port made beforehand, attached at boot and kept at delete.
    pre = c.create_port({'port': {'network_id': net_id, 'fixed_ips': [{'subnet_id': v4_id}]}})['port']
    inst2 = instance()
    reqs2 = objects.NetworkRequestList(objects=[objects.NetworkRequest(port_id=pre['id'])])
    check(api.validate_networks(ctx, reqs2, 1) == 1, 'validate_networks(port)')
    nwinfo2 = api.allocate_for_instance(ctx, inst2, reqs2, security_groups=['default'], bind_host_id='compute1')
    check(len(nwinfo2) == 1 and nwinfo2[0]['preserve_on_delete'] is True, 'preexisting port %r' % nwinfo2)
    check(c.show_port(pre['id'])['port']['binding:vif_type'] == 'bridge', 'preexisting port not bound')
    api.deallocate_for_instance(ctx, inst2)
    kept = c.show_port(pre['id'])['port']
    check(kept['device_id'] == '' and kept['device_owner'] == '' and kept['binding:host_id'] == '' and
          kept['binding:vif_type'] == 'unbound', 'preexisting port not unbound %r' % kept)

    api.deallocate_for_instance(ctx, inst)
    raises(nexc.PortNotFoundClient, c.show_port, vif['id'])

    for m in no_db:
        m.stop()
    print(json.dumps({'vif': json.loads(nwinfo.json()), 'kept': pre['id']}))
    sys.stdout.flush()
except BaseException:
    import traceback
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
os._exit(0)
`

func TestNeutronStubInterop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := CheckNovaPython(ctx); err != nil {
		t.Fatal(err)
	}
	s := NeutronStubT(t)
	net := s.AddNetwork("private", 1450)
	sn := s.AddSubnet(net.ID, "10.30.0.0/24", "", []string{"10.30.0.53"}, [][2]string{{"198.18.0.0/15", "10.30.0.254"}})
	sn6 := s.AddSubnet(net.ID, "fd00:30::/64", "", nil, nil)
	conf := filepath.Join(t.TempDir(), "nova.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`[DEFAULT]
use_stderr = True

[neutron]
auth_type = admin_token
endpoint = %[1]s
endpoint_override = %[1]s
token = %[2]s
`, s.URL(), PlacementToken)), 0o644); err != nil {
		t.Fatal(err)
	}
	out := PythonCode(t, neutronInteropPy, nil, conf, s.URL(), net.ID, sn.ID, sn6.ID, s.DefaultSecurityGroupID("admin"))

	var res struct {
		VIF  json.RawMessage `json:"vif"`
		Kept string          `json:"kept"`
	}
	if err := json.Unmarshal([]byte(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]), &res); err != nil {
		t.Fatalf("python output %q: %v", out, err)
	}
	// The network info nova built from the stub's answers.
	var vifs []struct {
		ID      string `json:"id"`
		Network struct {
			Subnets []struct {
				CIDR    string `json:"cidr"`
				Gateway struct {
					Address string `json:"address"`
				} `json:"gateway"`
				DNS []struct {
					Address string `json:"address"`
				} `json:"dns"`
				Routes []struct {
					CIDR string `json:"cidr"`
				} `json:"routes"`
				IPs []struct {
					Address string `json:"address"`
				} `json:"ips"`
			} `json:"subnets"`
		} `json:"network"`
	}
	if err := json.Unmarshal(res.VIF, &vifs); err != nil || len(vifs) != 1 {
		t.Fatalf("nw_info %s: %v", res.VIF, err)
	}
	got := fmt.Sprintf("%+v", vifs[0].Network.Subnets)
	want := "[{CIDR:10.30.0.0/24 Gateway:{Address:10.30.0.1} DNS:[{Address:10.30.0.53}] Routes:[{CIDR:198.18.0.0/15}] IPs:[{Address:10.30.0.2}]} " +
		"{CIDR:fd00:30::/64 Gateway:{Address:fd00:30::1} DNS:[] Routes:[] IPs:[{Address:fd00:30::2}]}]"
	if got != want {
		t.Errorf("nova's subnets:\n%s\nwant\n%s", got, want)
	}
	// What is left: the pre-existing port, unbound.
	ports := s.Ports()
	if len(ports) != 1 || ports[0]["id"] != res.Kept || ports[0]["binding:vif_type"] != "unbound" {
		t.Errorf("ports left: %v", ports)
	}

	// The calls nova made, for the record.
	seen := map[string]int{}
	idRE := regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
	for _, r := range s.Requests() {
		if r.Status >= 500 {
			t.Errorf("stub answered %v", r)
		}
		q := ""
		if r.Query != "" {
			var keys []string
			for _, kv := range strings.Split(r.Query, "&") {
				k, _, _ := strings.Cut(kv, "=")
				keys = append(keys, k)
			}
			q = "?" + strings.Join(keys, "&")
		}
		seen[fmt.Sprintf("%s %s%s -> %d", r.Method, idRE.ReplaceAllString(r.Path, "{id}"), q, r.Status)]++
	}
	var lines []string
	for k, n := range seen {
		lines = append(lines, fmt.Sprintf("%3d  %s", n, k))
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i][5:] < lines[j][5:] })
	t.Logf("requests:\n%s", strings.Join(lines, "\n"))
}

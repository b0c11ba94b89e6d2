package notify

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/internal/testenv"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// testInstance is an Instance 2.7 primitive shaped like the ones nova's
// conductor sends (captured field set, trimmed).
const testInstance = `{
 "nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.version": "2.7",
 "nova_object.data": {
  "id": 7, "uuid": "9b1c2d3e-1111-4222-8333-444455556666", "user_id": "u1", "project_id": "p1",
  "display_name": "vm1", "display_description": "vm1", "hostname": "vm1", "host": "h1", "node": "h1",
  "reservation_id": "r-1", "os_type": null, "architecture": "x86_64", "availability_zone": "nova",
  "image_ref": "c1a2b3c4-0000-4000-8000-00000000000a", "key_name": "k1", "kernel_id": "", "ramdisk_id": "",
  "created_at": "2026-11-23T18:04:39Z", "launched_at": "2026-11-23T18:05:01Z", "terminated_at": null,
  "deleted_at": null, "updated_at": "2026-11-23T18:06:00Z", "vm_state": "active", "power_state": 1,
  "task_state": "powering-off", "progress": 0, "metadata": {"k": "v"}, "locked": true, "locked_by": "owner",
  "auto_disk_config": true, "instance_type_id": 1, "cell_name": null, "access_ip_v4": "192.0.2.10",
  "access_ip_v6": null, "memory_mb": 512, "vcpus": 1, "root_gb": 1, "ephemeral_gb": 0,
  "system_metadata": {"image_min_disk": "1", "image_disk_format": "qcow2", "locked_reason": "maintenance", "boot_roles": "member"},
  "flavor": {"nova_object.name": "Flavor", "nova_object.namespace": "nova", "nova_object.version": "1.2",
   "nova_object.data": {"id": 1, "flavorid": "42", "name": "m1.tiny", "memory_mb": 512, "vcpus": 1, "root_gb": 1,
    "ephemeral_gb": 0, "swap": 0, "rxtx_factor": 1.0, "vcpu_weight": null, "disabled": false, "is_public": true,
    "extra_specs": {"hw:cpu_policy": "shared"}, "description": null}},
  "info_cache": {"nova_object.name": "InstanceInfoCache", "nova_object.namespace": "nova", "nova_object.version": "1.5",
   "nova_object.data": {"instance_uuid": "9b1c2d3e-1111-4222-8333-444455556666",
    "network_info": "[{\"id\": \"a3c7e1c2-0000-4000-8000-000000000001\", \"address\": \"FA:16:3E:00:00:01\", \"network\": {\"id\": \"n1\", \"bridge\": null, \"label\": \"private\", \"subnets\": [{\"cidr\": \"10.0.0.0/24\", \"dns\": [], \"gateway\": {\"address\": \"10.0.0.1\", \"type\": \"gateway\", \"version\": 4, \"meta\": {}}, \"ips\": [{\"address\": \"10.0.0.5\", \"type\": \"fixed\", \"version\": 4, \"meta\": {}, \"floating_ips\": [{\"address\": \"198.51.100.7\", \"type\": \"floating\", \"version\": 4, \"meta\": {}}]}], \"routes\": [], \"version\": 4, \"meta\": {}}, {\"cidr\": \"2001:db8::/64\", \"dns\": [], \"gateway\": null, \"ips\": [{\"address\": \"2001:0db8::5\", \"type\": \"fixed\", \"version\": 6, \"meta\": {}, \"floating_ips\": []}], \"routes\": [], \"version\": 6, \"meta\": {}}], \"meta\": {\"injected\": false, \"tenant_id\": \"p1\", \"mtu\": 1450}}, \"type\": \"ovs\", \"details\": {}, \"devname\": \"tapa3c7e1c2-00\", \"ovs_interfaceid\": null, \"qbh_params\": null, \"qbg_params\": null, \"active\": true, \"vnic_type\": \"normal\", \"profile\": {}, \"preserve_on_delete\": false, \"delegate_create\": false, \"meta\": {\"mtu\": 1450}}]"}},
  "keypairs": {"nova_object.name": "KeyPairList", "nova_object.namespace": "nova", "nova_object.version": "1.3",
   "nova_object.data": {"objects": [{"nova_object.name": "KeyPair", "nova_object.namespace": "nova", "nova_object.version": "1.4",
    "nova_object.data": {"name": "k1", "user_id": "u1", "fingerprint": "fp", "public_key": "ssh-rsa AAA", "type": "ssh"}}]}},
  "tags": {"nova_object.name": "TagList", "nova_object.namespace": "nova", "nova_object.version": "1.1",
   "nova_object.data": {"objects": [{"nova_object.name": "Tag", "nova_object.namespace": "nova", "nova_object.version": "1.1",
    "nova_object.data": {"resource_id": "9b1c2d3e-1111-4222-8333-444455556666", "tag": "web"}}]}},
  "trusted_certs": {"nova_object.name": "TrustedCerts", "nova_object.namespace": "nova", "nova_object.version": "1.0",
   "nova_object.data": {"ids": ["c1", "c2"]}}
 }}`

// testContext is a nova RequestContext.to_dict() as it arrives in _context_*.
const testContext = `{"user": "u1", "user_id": "u1", "project": "p1", "project_id": "p1", "domain": null,
 "user_domain": "default", "project_domain": "default", "system_scope": null, "is_admin": false,
 "read_only": false, "show_deleted": false, "auth_token": "secret-token", "request_id": "req-11111111-2222-4333-8444-555555555555",
 "global_request_id": "req-g", "resource_uuid": null, "roles": ["member", "reader"],
 "user_identity": "u1 p1 - default default", "is_admin_project": true, "read_deleted": "no",
 "remote_address": "10.0.0.1", "timestamp": "2026-11-23T18:04:39.221430", "quota_class": null,
 "user_name": "demo", "service_catalog": [{"type": "image"}], "project_name": "demo"}`

// Field sets of nova 26.2.2's payloads (InstancePayload.fields and
// subclasses, info_from_instance), captured from nova's own output.
var (
	instancePayloadFields = []string{"uuid", "user_id", "tenant_id", "reservation_id", "display_name",
		"display_description", "host_name", "host", "node", "os_type", "architecture", "availability_zone",
		"flavor", "image_uuid", "key_name", "kernel_id", "ramdisk_id", "created_at", "launched_at",
		"terminated_at", "deleted_at", "updated_at", "state", "power_state", "task_state", "progress",
		"ip_addresses", "block_devices", "metadata", "locked", "auto_disk_config", "request_id",
		"action_initiator_user", "action_initiator_project", "locked_reason", "fault"}
	legacyFields = []string{"access_ip_v4", "access_ip_v6", "architecture", "availability_zone", "cell_name",
		"created_at", "deleted_at", "disk_gb", "display_name", "ephemeral_gb", "host", "hostname", "image_meta",
		"image_ref_url", "instance_flavor_id", "instance_id", "instance_type", "instance_type_id", "kernel_id",
		"launched_at", "memory_mb", "metadata", "node", "os_type", "progress", "ramdisk_id", "reservation_id",
		"root_gb", "state", "state_description", "tenant_id", "terminated_at", "user_id", "vcpus"}
	contextKeys = []string{"auth_token", "domain", "global_request_id", "is_admin", "is_admin_project", "project",
		"project_domain", "project_id", "project_name", "quota_class", "read_deleted", "read_only",
		"remote_address", "request_id", "resource_uuid", "roles", "service_catalog", "show_deleted",
		"system_scope", "timestamp", "user", "user_domain", "user_id", "user_identity", "user_name"}
	flavorPayloadFields = []string{"description", "disabled", "ephemeral_gb", "extra_specs", "flavorid",
		"is_public", "memory_mb", "name", "projects", "root_gb", "rxtx_factor", "swap", "vcpu_weight", "vcpus"}
)

var (
	uuid4RE      = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	hex32RE      = regexp.MustCompile(`^[0-9a-f]{32}$`)
	pyUtcnowRE   = regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?$`)
	strtimeRE    = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$`)
	requestIDRE  = regexp.MustCompile(`^req-[0-9a-f-]{36}$`)
	testLogLevel = os.Getenv("NOTIFY_TEST_DEBUG") != ""
)

func testInst(t *testing.T) *novaobj.Instance {
	t.Helper()
	inst, err := novaobj.DecodeInstance(json.RawMessage(testInstance))
	if err != nil {
		t.Fatal(err)
	}
	return inst
}

func testRctx(t *testing.T) *rpc.RequestContext {
	t.Helper()
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(testContext), &raw); err != nil {
		t.Fatal(err)
	}
	return rpc.NewRequestContext(raw)
}

// configured returns a notifier whose publisher is not running: the test
// reads what it queues.
func configured(t *testing.T, cfg Config) *Notifier {
	t.Helper()
	if cfg.Host == "" {
		cfg.Host = "h1"
	}
	n, err := configure(context.Background(), cfg, rpc.TransportConfig{URL: "rabbit://u:p@127.0.0.1:1/"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// queued drains the notifier's queue.
func queued(n *Notifier) []outMsg {
	var out []outMsg
	for {
		select {
		case m := <-n.queue:
			out = append(out, m)
		default:
			return out
		}
	}
}

// inner decodes a body (2.0 envelope or 1.0 dict) into a generic map.
func inner(t *testing.T, body []byte) map[string]any {
	t.Helper()
	raw, err := rpc.Unwrap(body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]any{}
	for k, v := range raw {
		var x any
		if err := json.Unmarshal(v, &x); err != nil {
			t.Fatal(err)
		}
		out[k] = x
	}
	return out
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sorted(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}

func objData(t *testing.T, v any, name, version string) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s: not an object primitive: %v", name, v)
	}
	if m["nova_object.name"] != name || m["nova_object.version"] != version || m["nova_object.namespace"] != "nova" {
		t.Fatalf("object %v/%v/%v, want %s %s nova", m["nova_object.name"], m["nova_object.version"], m["nova_object.namespace"], name, version)
	}
	if _, ok := m["nova_object.changes"]; ok {
		t.Errorf("%s carries nova_object.changes (nova resets them before emitting)", name)
	}
	d, _ := m["nova_object.data"].(map[string]any)
	return d
}

func TestDisabled(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no driver (nova's default)", Config{}},
		{"noop", Config{Driver: []string{"noop"}, Format: FormatBoth}},
		{"unsupported driver only", Config{Driver: []string{"routing"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := New(context.Background(), tc.cfg, rpc.TransportConfig{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if n.Enabled() {
				t.Fatal("enabled")
			}
			n.InstanceAction(context.Background(), nil, testInst(t), "power_off", PhaseStart, nil)
			if s := n.Stats(); s != (Stats{}) {
				t.Fatalf("stats %+v", s)
			}
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
	var nilN *Notifier
	nilN.InstanceAction(context.Background(), nil, testInst(t), "pause", PhaseStart, nil)
	if nilN.Enabled() || nilN.Close() != nil || nilN.Stats() != (Stats{}) {
		t.Fatal("nil notifier is not a no-op")
	}
	if _, err := New(context.Background(), Config{Driver: []string{"messagingv2"}, Format: "json"}, rpc.TransportConfig{}, nil); err == nil {
		t.Fatal("bad notification_format accepted")
	}
	if _, err := New(context.Background(), Config{Driver: []string{"messagingv2"}}, rpc.TransportConfig{}, nil); err == nil {
		t.Fatal("no transport_url accepted")
	}
}

func TestVersionedPowerOff(t *testing.T) {
	n := configured(t, Config{Driver: []string{"messagingv2"}, Format: FormatVersioned})
	if !n.Enabled() {
		t.Fatal("not enabled")
	}
	n.InstanceAction(context.Background(), testRctx(t), testInst(t), "power_off", PhaseStart, nil)
	msgs := queued(n)
	if len(msgs) != 1 {
		t.Fatalf("%d messages, want 1 (versioned only)", len(msgs))
	}
	if msgs[0].key != "versioned_notifications.info" {
		t.Errorf("routing key %q", msgs[0].key)
	}
	var outer map[string]any
	if err := json.Unmarshal(msgs[0].body, &outer); err != nil {
		t.Fatal(err)
	}
	if outer["oslo.version"] != "2.0" || len(outer) != 2 {
		t.Errorf("envelope %v", keys(outer))
	}
	m := inner(t, msgs[0].body)
	var want []string
	for _, k := range contextKeys {
		want = append(want, "_context_"+k)
	}
	want = append(want, "_unique_id", "event_type", "message_id", "payload", "priority", "publisher_id", "timestamp")
	if got := keys(m); !reflect.DeepEqual(got, sorted(want)) {
		t.Errorf("message keys\n got %v\nwant %v", got, sorted(want))
	}
	for k, want := range map[string]any{
		"event_type": "instance.power_off.start", "publisher_id": "nova-compute:h1", "priority": "INFO",
		"_context_auth_token": nil, "_context_request_id": "req-11111111-2222-4333-8444-555555555555",
		"_context_user_identity": "u1 p1 - default default", "_context_remote_address": nil,
		"_context_user_name": "demo", "_context_global_request_id": "req-g", "_context_is_admin": false,
	} {
		if !reflect.DeepEqual(m[k], want) {
			t.Errorf("%s = %#v, want %#v", k, m[k], want)
		}
	}
	if sc, _ := m["_context_service_catalog"].([]any); sc == nil || len(sc) != 0 {
		t.Errorf("service catalog %v, want []", m["_context_service_catalog"])
	}
	if s, _ := m["message_id"].(string); !uuid4RE.MatchString(s) {
		t.Errorf("message_id %q", s)
	}
	if s, _ := m["_unique_id"].(string); !hex32RE.MatchString(s) {
		t.Errorf("_unique_id %q", s)
	}
	if s, _ := m["timestamp"].(string); !pyUtcnowRE.MatchString(s) {
		t.Errorf("timestamp %q", s)
	}
	if s, _ := m["_context_timestamp"].(string); !strtimeRE.MatchString(s) || s == "2026-11-23T18:04:39.221430" {
		t.Errorf("_context_timestamp %q: want the notification's time", s)
	}
	p := objData(t, m["payload"], "InstanceActionPayload", "1.8")
	if got := keys(p); !reflect.DeepEqual(got, sorted(instancePayloadFields)) {
		t.Errorf("payload fields\n got %v\nwant %v", got, sorted(instancePayloadFields))
	}
	for k, want := range map[string]any{
		"uuid": "9b1c2d3e-1111-4222-8333-444455556666", "tenant_id": "p1", "user_id": "u1",
		"host_name": "vm1", "state": "active", "power_state": "running", "task_state": "powering-off",
		"image_uuid": "c1a2b3c4-0000-4000-8000-00000000000a", "created_at": "2026-11-23T18:04:39Z",
		"terminated_at": nil, "progress": 0.0, "locked": true, "locked_reason": "maintenance",
		"auto_disk_config": "AUTO", "request_id": "req-11111111-2222-4333-8444-555555555555",
		"action_initiator_user": "u1", "action_initiator_project": "p1", "fault": nil, "block_devices": nil,
		"metadata": map[string]any{"k": "v"}, "key_name": "k1", "os_type": nil,
	} {
		if !reflect.DeepEqual(p[k], want) {
			t.Errorf("payload %s = %#v, want %#v", k, p[k], want)
		}
	}
	fl := objData(t, p["flavor"], "FlavorPayload", "1.4")
	if got := keys(fl); !reflect.DeepEqual(got, flavorPayloadFields) {
		t.Errorf("flavor fields %v", got)
	}
	if fl["name"] != "m1.tiny" || fl["flavorid"] != "42" || fl["projects"] != nil || fl["rxtx_factor"] != 1.0 {
		t.Errorf("flavor %v", fl)
	}
	ips, _ := p["ip_addresses"].([]any)
	if len(ips) != 2 {
		t.Fatalf("ip_addresses %v", p["ip_addresses"])
	}
	ip0 := objData(t, ips[0], "IpPayload", "1.0")
	wantIP := map[string]any{"label": "private", "mac": "fa:16:3e:00:00:01", "meta": map[string]any{"mtu": "1450"},
		"port_uuid": "a3c7e1c2-0000-4000-8000-000000000001", "version": 4.0, "address": "10.0.0.5", "device_name": "tapa3c7e1c2-00"}
	if !reflect.DeepEqual(ip0, wantIP) {
		t.Errorf("ip %v\nwant %v", ip0, wantIP)
	}
	if ip1 := objData(t, ips[1], "IpPayload", "1.0"); ip1["address"] != "2001:db8::5" || ip1["version"] != 6.0 {
		t.Errorf("ipv6 %v", ip1)
	}
}

func TestLegacyPowerOff(t *testing.T) {
	n := configured(t, Config{Driver: []string{"messagingv2"}, ImageURLBase: "http://glance.example:9292"})
	n.InstanceAction(context.Background(), testRctx(t), testInst(t), "power_off", PhaseEnd, nil)
	msgs := queued(n)
	if len(msgs) != 1 || msgs[0].key != "notifications.info" {
		t.Fatalf("messages %v, want one on notifications.info (unversioned is the default)", msgs)
	}
	m := inner(t, msgs[0].body)
	if m["event_type"] != "compute.instance.power_off.end" || m["publisher_id"] != "compute.h1" || m["priority"] != "INFO" {
		t.Errorf("event %v %v %v", m["event_type"], m["publisher_id"], m["priority"])
	}
	p, _ := m["payload"].(map[string]any)
	if got := keys(p); !reflect.DeepEqual(got, legacyFields) {
		t.Errorf("legacy fields\n got %v\nwant %v", got, legacyFields)
	}
	for k, want := range map[string]any{
		"instance_id": "9b1c2d3e-1111-4222-8333-444455556666", "tenant_id": "p1",
		"created_at": "2026-11-23 18:04:39+00:00", "launched_at": "2026-11-23T18:05:01.000000",
		"terminated_at": "", "deleted_at": "", "progress": "", "cell_name": "", "state_description": "powering-off",
		"instance_type": "m1.tiny", "instance_flavor_id": "42", "disk_gb": 1.0, "memory_mb": 512.0,
		"image_ref_url": "http://glance.example:9292/images/c1a2b3c4-0000-4000-8000-00000000000a",
		"image_meta":    map[string]any{"min_disk": "1", "disk_format": "qcow2"}, "access_ip_v4": "192.0.2.10",
	} {
		if !reflect.DeepEqual(p[k], want) {
			t.Errorf("legacy %s = %#v, want %#v", k, p[k], want)
		}
	}
}

func TestCreateError(t *testing.T) {
	n := configured(t, Config{Driver: []string{"messagingv2"}, Format: FormatBoth})
	inst := testInst(t)
	fault := rpc.NovaException("BuildAbortException", 500, "Build of instance "+inst.UUID+" aborted: boom",
		map[string]any{"instance_uuid": inst.UUID, "reason": "boom"})
	n.InstanceAction(context.Background(), testRctx(t), inst, "create", PhaseError, fmt.Errorf("spawn: %w", fault))
	msgs := queued(n)
	if len(msgs) != 2 || msgs[0].key != "notifications.error" || msgs[1].key != "versioned_notifications.error" {
		t.Fatalf("messages %v", msgs)
	}
	legacy := inner(t, msgs[0].body)
	lp, _ := legacy["payload"].(map[string]any)
	wantRepr := "{'kwargs': {'instance_uuid': '" + inst.UUID + "', 'reason': 'boom', 'code': 500}, 'message': 'Build of instance " +
		inst.UUID + " aborted: boom', 'class': 'BuildAbortException'}"
	if legacy["priority"] != "ERROR" || lp["exception"] != wantRepr || lp["code"] != 500.0 ||
		lp["message"] != "Build of instance "+inst.UUID+" aborted: boom" {
		t.Errorf("legacy error %v: exception %v code %v message %v", legacy["priority"], lp["exception"], lp["code"], lp["message"])
	}
	v := inner(t, msgs[1].body)
	if v["priority"] != "ERROR" || v["event_type"] != "instance.create.error" {
		t.Errorf("versioned %v %v", v["priority"], v["event_type"])
	}
	p := objData(t, v["payload"], "InstanceCreatePayload", "1.12")
	want := append(append([]string(nil), instancePayloadFields...), "keypairs", "tags", "trusted_image_certificates", "instance_name")
	if got := keys(p); !reflect.DeepEqual(got, sorted(want)) {
		t.Errorf("create payload fields\n got %v\nwant %v", got, sorted(want))
	}
	if p["instance_name"] != "instance-00000007" || !reflect.DeepEqual(p["tags"], []any{"web"}) ||
		!reflect.DeepEqual(p["trusted_image_certificates"], []any{"c1", "c2"}) || !reflect.DeepEqual(p["block_devices"], []any{}) {
		t.Errorf("create extras: %v %v %v %v", p["instance_name"], p["tags"], p["trusted_image_certificates"], p["block_devices"])
	}
	kps, _ := p["keypairs"].([]any)
	if len(kps) != 1 || objData(t, kps[0], "KeypairPayload", "1.0")["public_key"] != "ssh-rsa AAA" {
		t.Errorf("keypairs %v", p["keypairs"])
	}
	f := objData(t, p["fault"], "ExceptionPayload", "1.1")
	if f["exception"] != "BuildAbortException" || f["exception_message"] != "Build of instance "+inst.UUID+" aborted: boom" ||
		f["function_name"] != "_build_and_run_instance" || !strings.Contains(f["traceback"].(string), "nova.exception.BuildAbortException: Build") {
		t.Errorf("fault %v", f)
	}
}

func TestSnapshotRebuildAndDrivers(t *testing.T) {
	n := configured(t, Config{Driver: []string{"messaging", "messagingv2"}, Format: FormatVersioned,
		VersionedTopics: []string{"a", "b"}})
	n.InstanceAction(context.Background(), nil, testInst(t), "snapshot", PhaseStart, nil, WithSnapshotImage("d2b1c2d3-0000-4000-8000-00000000000b"))
	msgs := queued(n)
	if len(msgs) != 4 {
		t.Fatalf("%d messages, want 2 drivers x 2 topics", len(msgs))
	}
	var ids, uniq []string
	for i, m := range msgs {
		var outer map[string]any
		if err := json.Unmarshal(m.body, &outer); err != nil {
			t.Fatal(err)
		}
		_, enveloped := outer["oslo.version"]
		if enveloped != (i >= 2) {
			t.Errorf("message %d: enveloped %v (messaging is 1.0, messagingv2 is 2.0)", i, enveloped)
		}
		in := inner(t, m.body)
		ids = append(ids, in["message_id"].(string))
		uniq = append(uniq, in["_unique_id"].(string))
		p := objData(t, in["payload"], "InstanceActionSnapshotPayload", "1.9")
		if p["snapshot_image_id"] != "d2b1c2d3-0000-4000-8000-00000000000b" {
			t.Errorf("snapshot_image_id %v", p["snapshot_image_id"])
		}
		// An admin context (periodic task): no request_id in the payload, a
		// fresh one in the context.
		if p["request_id"] != nil || p["action_initiator_user"] != nil {
			t.Errorf("admin context payload: request_id %v initiator %v", p["request_id"], p["action_initiator_user"])
		}
		if s, _ := in["_context_request_id"].(string); !requestIDRE.MatchString(s) || in["_context_is_admin"] != true {
			t.Errorf("admin context %v %v", in["_context_request_id"], in["_context_is_admin"])
		}
	}
	if got := []string{msgs[0].key, msgs[1].key}; !reflect.DeepEqual(got, []string{"a.info", "b.info"}) {
		t.Errorf("keys %v", got)
	}
	if ids[0] != ids[3] || uniq[0] == uniq[1] || uniq[1] == uniq[2] {
		t.Errorf("message_id must be shared and _unique_id fresh: %v %v", ids, uniq)
	}

	n.InstanceAction(context.Background(), testRctx(t), testInst(t), "rebuild", PhaseEnd, nil)
	msgs = queued(n)
	p := objData(t, inner(t, msgs[0].body)["payload"], "InstanceActionRebuildPayload", "1.9")
	if !reflect.DeepEqual(p["trusted_image_certificates"], []any{"c1", "c2"}) {
		t.Errorf("rebuild trusted certs %v", p["trusted_image_certificates"])
	}
}

func TestLegacyCreateEnd(t *testing.T) {
	n := configured(t, Config{Driver: []string{"messagingv2"}})
	inst := testInst(t)
	n.InstanceAction(context.Background(), testRctx(t), inst, "create", PhaseStart, nil, WithImageName("cirros"))
	n.InstanceAction(context.Background(), testRctx(t), inst, "create", PhaseEnd, nil)
	msgs := queued(n)
	if len(msgs) != 2 {
		t.Fatalf("%d messages", len(msgs))
	}
	start, _ := inner(t, msgs[0].body)["payload"].(map[string]any)
	if start["image_name"] != "cirros" {
		t.Errorf("create.start image_name %v", start["image_name"])
	}
	end, _ := inner(t, msgs[1].body)["payload"].(map[string]any)
	if end["message"] != "Success" {
		t.Errorf("create.end message %v", end["message"])
	}
	fips, _ := end["fixed_ips"].([]any)
	if len(fips) != 2 {
		t.Fatalf("fixed_ips %v", end["fixed_ips"])
	}
	want := map[string]any{"address": "10.0.0.5", "type": "fixed", "version": 4.0, "meta": map[string]any{},
		"label": "private", "vif_mac": "FA:16:3E:00:00:01",
		"floating_ips": []any{map[string]any{"address": "198.51.100.7", "type": "floating", "version": 4.0, "meta": map[string]any{}}}}
	if !reflect.DeepEqual(fips[0], want) {
		t.Errorf("fixed ip %v\nwant %v", fips[0], want)
	}
}

// TestNeverBlocks: with the broker unreachable, InstanceAction returns at
// once, the queue bounds memory, drops are counted and Close is bounded.
func TestNeverBlocks(t *testing.T) {
	n, err := New(context.Background(), Config{Driver: []string{"messagingv2"}, Format: FormatBoth, Host: "h1",
		QueueSize: 4, FlushTimeout: 300 * time.Millisecond}, rpc.TransportConfig{URL: "rabbit://u:p@127.0.0.1:1/"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	inst, rctx := testInst(t), testRctx(t)
	start := time.Now()
	const calls = 50
	for i := 0; i < calls; i++ {
		n.InstanceAction(context.Background(), rctx, inst, "pause", PhaseStart, nil)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("%d calls took %v", calls, d)
	}
	start = time.Now()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Close took %v", d)
	}
	s := n.Stats()
	if s.Sent != 0 || s.Dropped+s.Failed != 2*calls || s.Dropped < 2*calls-5 {
		t.Fatalf("stats %+v, want every one of %d messages dropped or failed", s, 2*calls)
	}
	n.InstanceAction(context.Background(), rctx, inst, "pause", PhaseEnd, nil)
	if n.Stats().Dropped != s.Dropped+1 {
		t.Fatal("InstanceAction after Close not counted as dropped")
	}
}

func TestPythonFormatting(t *testing.T) {
	for in, want := range map[string]string{
		"plain": `'plain'`, "it's": `"it's"`, `say "hi"`: `'say "hi"'`, `both ' and "`: `'both \' and "'`,
		"a\nb\\": `'a\nb\\'`, "é€": `'é€'`, "\x01": `'\x01'`,
	} {
		if got := pyStrRepr(in); got != want {
			t.Errorf("repr(%q) = %s, want %s", in, got, want)
		}
	}
	for in, want := range map[float64]string{1: "1.0", 0.5: "0.5", 1e16: "1e+16", 1e-5: "1e-05", 123.25: "123.25"} {
		if got := pyFloat(in); got != want {
			t.Errorf("pyFloat(%v) = %s, want %s", in, got, want)
		}
	}
	if got := pyDatetimeStr(time.Date(2026, 11, 23, 18, 4, 39, 0, time.UTC)); got != "2026-11-23 18:04:39" {
		t.Errorf("str(datetime) %s", got)
	}
	if got := pyDatetimeStr(time.Date(2026, 11, 23, 18, 4, 39, 221430999, time.UTC)); got != "2026-11-23 18:04:39.221430" {
		t.Errorf("str(datetime) %s", got)
	}
	if got := safeTruncate(strings.Repeat("a", 254)+"é", 255); got != strings.Repeat("a", 254) {
		t.Errorf("safe_truncate split a character: %q", got[250:])
	}
	if got := GlanceEndpointBase("http://g:9292/v2"); got != "http://g:9292/" {
		t.Errorf("GlanceEndpointBase %s", got)
	}
	if got := legacyFault(fmt.Errorf("x: %w", rpc.ToException(fmt.Errorf("disk full")))); got["message"] != "disk full" {
		t.Errorf("legacy fault of a plain error %v", got)
	}
}

// --- interop with nova's own code over a real RabbitMQ ---

// interopEvents are sent by both nova (reference) and lxc-agent.
var interopEvents = []struct{ action, phase string }{
	{"power_off", "start"}, {"power_off", "end"}, {"create", "start"}, {"create", "end"},
	{"create", "error"}, {"snapshot", "start"}, {"rebuild", "end"}, {"delete", "start"},
}

// refScript builds an Instance and a RequestContext with nova's objects,
// round-trips them through their RPC forms (as nova-compute receives
// them), has nova's own compute_utils emit the interop events through
// oslo.messaging's rabbit driver to the ref_* topics, and prints the
// instance primitive and context dict for the Go side.
const refScript = `
import datetime, json, os, sys, uuid
conf_file, = sys.argv[1:]
import nova.conf
from nova import objects, rpc, context as nctx, exception
from nova.compute import utils as cu
from nova.network import model as nm
objects.register_all()
CONF = nova.conf.CONF
CONF([], project='nova', default_config_files=[conf_file])
rpc.init(CONF)
UUID = str(uuid.uuid4())
ctx0 = nctx.RequestContext(user_id='u1', project_id='p1', roles=['member', 'reader'], user_name='demo',
    project_name='demo', auth_token='secret-token', remote_address='10.0.0.1', user_domain_id='default',
    project_domain_id='default', global_request_id='req-' + str(uuid.uuid4()),
    service_catalog=[{'type': 'image', 'endpoints': []}])
ctx_dict = ctx0.to_dict()
ctx = nctx.RequestContext.from_dict(ctx_dict)
utc = datetime.timezone.utc
flavor = objects.Flavor(id=1, flavorid='42', name='m1.tiny', memory_mb=512, vcpus=1, root_gb=1, ephemeral_gb=0,
    swap=0, rxtx_factor=1.0, vcpu_weight=None, disabled=False, is_public=True,
    extra_specs={'hw:cpu_policy': 'shared'}, description=None)
vif = nm.VIF(id=str(uuid.uuid4()), address='fa:16:3e:00:00:01', devname='tap0000000-00', type='ovs',
    network=nm.Network(id=str(uuid.uuid4()), label='private', meta={'mtu': 1450}, subnets=[
        nm.Subnet(cidr='10.0.0.0/24', version=4, gateway=nm.IP(address='10.0.0.1', type='gateway'),
                  ips=[nm.FixedIP(address='10.0.0.5', version=4,
                                  floating_ips=[nm.IP(address='198.51.100.7', type='floating')])]),
        nm.Subnet(cidr='2001:db8::/64', version=6, ips=[nm.FixedIP(address='2001:db8::5')])]),
    meta={'mtu': 1450})
inst = objects.Instance(id=7, uuid=UUID, user_id='u1', project_id='p1', display_name='vm1',
    display_description='a vm', hostname='vm1', host='h1', node='h1', reservation_id='r-1', os_type=None,
    architecture='x86_64', availability_zone='nova', image_ref=str(uuid.uuid4()), key_name='k1',
    kernel_id='', ramdisk_id='', created_at=datetime.datetime(2026, 11, 23, 18, 4, 39, tzinfo=utc),
    launched_at=datetime.datetime(2026, 11, 23, 18, 5, 1, tzinfo=utc), terminated_at=None, deleted_at=None,
    updated_at=datetime.datetime(2026, 11, 23, 18, 6, 0, tzinfo=utc), vm_state='active', power_state=1,
    task_state='powering-off', progress=0, metadata={'k': 'v'},
    system_metadata={'image_min_disk': '1', 'image_disk_format': 'qcow2', 'locked_reason': 'maintenance'},
    locked=True, locked_by='owner', auto_disk_config=True, flavor=flavor, instance_type_id=1, cell_name=None,
    access_ip_v4='192.0.2.10', access_ip_v6=None, memory_mb=512, vcpus=1, root_gb=1, ephemeral_gb=0,
    keypairs=objects.KeyPairList(objects=[objects.KeyPair(name='k1', user_id='u1', fingerprint='fp',
                                                          public_key='ssh-rsa AAA', type='ssh')]),
    tags=objects.TagList(objects=[objects.Tag(resource_id=UUID, tag='web')]),
    trusted_certs=objects.TrustedCerts(ids=['c1', 'c2']),
    info_cache=objects.InstanceInfoCache(instance_uuid=UUID, network_info=nm.NetworkInfo([vif])))
prim = inst.obj_to_primitive()
inst = objects.Instance.obj_from_primitive(json.loads(json.dumps(prim)))
legacy = rpc.get_notifier('compute', 'h1')
bdms = objects.BlockDeviceMappingList(objects=[])
snap = str(uuid.uuid4())
try:
    raise exception.BuildAbortException(instance_uuid=UUID, reason='boom')
except exception.BuildAbortException as e:
    err = e
def legacy_usage(suffix, **kw):
    cu.notify_about_instance_usage(legacy, ctx, inst, suffix, **kw)
legacy_usage('power_off.start'); cu.notify_about_instance_action(ctx, inst, 'h1', action='power_off', phase='start')
legacy_usage('power_off.end'); cu.notify_about_instance_action(ctx, inst, 'h1', action='power_off', phase='end')
legacy_usage('create.start', extra_usage_info={'image_name': 'cirros'})
cu.notify_about_instance_create(ctx, inst, 'h1', phase='start', bdms=bdms)
legacy_usage('create.end', extra_usage_info={'message': 'Success'}, network_info=inst.get_network_info())
cu.notify_about_instance_create(ctx, inst, 'h1', phase='end', bdms=bdms)
legacy_usage('create.error', fault=err)
cu.notify_about_instance_create(ctx, inst, 'h1', phase='error', exception=err, bdms=bdms)
legacy_usage('snapshot.start'); cu.notify_about_instance_snapshot(ctx, inst, 'h1', phase='start', snapshot_image_id=snap)
legacy_usage('rebuild.end', network_info=inst.get_network_info(), extra_usage_info={'image_name': 'cirros'})
cu.notify_about_instance_rebuild(ctx, inst, 'h1', phase='end', bdms=bdms)
legacy_usage('delete.start'); cu.notify_about_instance_action(ctx, inst, 'h1', action='delete', phase='start', bdms=bdms)
print(json.dumps({'instance': prim, 'context': ctx_dict, 'snapshot_image_id': snap}))
sys.stdout.flush()
os._exit(0)
`

// listenerScript consumes lxc-agent's notifications with oslo.messaging's
// notification listener and nova's serializer, hydrates every versioned
// payload with nova's notification objects and prints what it got.
const listenerScript = `
import json, os, sys, threading
conf_file, want = sys.argv[1], int(sys.argv[2])
import nova.conf
import oslo_messaging
from nova import objects, rpc
from nova.objects import base as nova_base
from nova.notifications.objects import instance as ino
objects.register_all()
# Notification payload classes are registered only for tests and docs.
nova_base.NovaObjectRegistry.register_notification_objects()
# They are emit-only: oslo's _obj_from_primitive calls cls(), which their
# constructors (context, instance, fault, ...) refuse, for nova's own
# payloads too. Allow a no-argument construction; hydration then coerces
# every field with nova's field types as usual.
def _allow_hydration(cls):
    orig = cls.__dict__.get('__init__')
    if orig is None:
        return
    def __init__(self, *a, **kw):
        if a or kw:
            return orig(self, *a, **kw)
        nova_base.NovaObject.__init__(self)
    cls.__init__ = __init__
for _cls in nova_base.NovaObjectRegistry.notification_classes:
    _allow_hydration(_cls)
CONF = nova.conf.CONF
CONF([], project='nova', default_config_files=[conf_file])
got, done = [], threading.Event()
lock = threading.Lock()
class Endpoint(object):
    def _record(self, priority, ctxt, publisher_id, event_type, payload, metadata):
        rec = {'priority': priority, 'publisher_id': publisher_id, 'event_type': event_type,
               'request_id': ctxt.request_id, 'user_id': ctxt.user_id, 'auth_token': ctxt.auth_token,
               'message_id': metadata['message_id'], 'timestamp': metadata['timestamp']}
        try:
            if event_type.startswith('instance.'):
                if event_type.startswith('instance.power_off.'):
                    obj = ino.InstanceActionPayload.obj_from_primitive(payload)
                else:
                    obj = nova_base.NovaObject.obj_from_primitive(payload)
                rec.update(cls=obj.obj_name(), version=obj.VERSION, uuid=obj.uuid, power_state=obj.power_state,
                           state=obj.state, task_state=obj.task_state, flavor=obj.flavor.name,
                           ips=[str(ip.address) for ip in obj.ip_addresses], request=obj.request_id,
                           fault=obj.fault.exception if obj.fault else None,
                           roundtrip=obj.obj_to_primitive() == payload)
                if obj.obj_name() == 'InstanceActionSnapshotPayload':
                    rec['snapshot_image_id'] = obj.snapshot_image_id
            else:
                rec.update(instance_id=payload['instance_id'], state=payload['state'])
        except Exception as e:
            rec['error'] = '%s: %s' % (type(e).__name__, e)
        with lock:
            got.append(rec)
            if len(got) >= want:
                done.set()
    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record('info', ctxt, publisher_id, event_type, payload, metadata)
    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record('error', ctxt, publisher_id, event_type, payload, metadata)
transport = oslo_messaging.get_notification_transport(CONF)
targets = [oslo_messaging.Target(topic='versioned_notifications'), oslo_messaging.Target(topic='notifications')]
listener = oslo_messaging.get_notification_listener(transport, targets, [Endpoint()], executor='threading',
    serializer=rpc.RequestContextSerializer(rpc.JsonPayloadSerializer()))
listener.start()
done.wait(90)
with lock:
    print(json.dumps(got))
sys.stdout.flush()
os._exit(0)
`

func writeNovaConf(t *testing.T, dir, transportURL, topics, versionedTopics string) string {
	t.Helper()
	conf := fmt.Sprintf(`[DEFAULT]
transport_url = %s
control_exchange = nova
host = h1
[oslo_messaging_notifications]
driver = messagingv2
topics = %s
[notifications]
notification_format = both
versioned_notifications_topics = %s
[glance]
api_servers = http://glance.example:9292
`, transportURL, topics, versionedTopics)
	p := filepath.Join(dir, "nova-"+topics+".conf")
	if err := os.WriteFile(p, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// drainQueue reads the messages of a queue (basic.get) until it stays empty.
func drainQueue(t *testing.T, ch *amqp.Channel, queue string) []amqp.Delivery {
	t.Helper()
	var out []amqp.Delivery
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatalf("get %s: %v", queue, err)
		}
		if !ok {
			if len(out) > 0 {
				return out
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		out = append(out, d)
	}
	return out
}

// volatile are the keys whose values legitimately differ between two
// emissions of the same notification.
var volatile = map[string]bool{"message_id": true, "_unique_id": true, "timestamp": true, "_context_timestamp": true}

// faultVolatile are ExceptionPayload fields that depend on where the
// exception was raised (a Python frame in nova, Go code here).
var faultVolatile = map[string]bool{"module_name": true, "function_name": true, "traceback": true}

func diff(path string, a, b any, out *[]string) {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok {
			*out = append(*out, fmt.Sprintf("%s: %v vs %v", path, a, b))
			return
		}
		for _, k := range unionKeys(x, y) {
			if strings.HasSuffix(path, ".fault.nova_object.data") && faultVolatile[k] {
				continue
			}
			va, oka := x[k]
			vb, okb := y[k]
			if !oka || !okb {
				*out = append(*out, fmt.Sprintf("%s.%s: present in ours %v, in nova's %v (%v / %v)", path, k, oka, okb, va, vb))
				continue
			}
			diff(path+"."+k, va, vb, out)
		}
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			*out = append(*out, fmt.Sprintf("%s: %v vs %v", path, a, b))
			return
		}
		for i := range x {
			diff(fmt.Sprintf("%s[%d]", path, i), x[i], y[i], out)
		}
	default:
		if !reflect.DeepEqual(a, b) {
			*out = append(*out, fmt.Sprintf("%s: ours %#v, nova's %#v", path, a, b))
		}
	}
}

func unionKeys(a, b map[string]any) []string {
	set := map[string]bool{}
	for k := range a {
		set[k] = true
	}
	for k := range b {
		set[k] = true
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestInteropRabbitMQ(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireNovaPython(t)
	rabbit := testenv.StartRabbitMQT(t)
	dir := t.TempDir()

	// 1. nova emits the reference notifications (ref_* topics) for an
	// instance it built; we get that instance's primitive and context.
	refConf := writeNovaConf(t, dir, rabbit.TransportURL(), "ref_notifications", "ref_versioned_notifications")
	refPy := filepath.Join(dir, "ref.py")
	if err := os.WriteFile(refPy, []byte(refScript), 0o644); err != nil {
		t.Fatal(err)
	}
	var ref struct {
		Instance        json.RawMessage            `json:"instance"`
		Context         map[string]json.RawMessage `json:"context"`
		SnapshotImageID string                     `json:"snapshot_image_id"`
	}
	out := testenv.Python(t, refPy, nil, refConf)
	if err := json.Unmarshal([]byte(lastLine(out)), &ref); err != nil {
		t.Fatalf("reference script output: %v\n%s", err, out)
	}
	inst, err := novaobj.DecodeInstance(ref.Instance)
	if err != nil {
		t.Fatal(err)
	}
	rctx := rpc.NewRequestContext(ref.Context)

	// 2. lxc-agent sends the same events, to the topics the Python listener
	// consumes and to raw_* copies that this test compares with nova's.
	var logs syncBuffer
	log := testLogger(&logs)
	n, err := New(context.Background(), Config{
		Driver: []string{"messagingv2"}, Format: FormatBoth, Host: "h1",
		Topics:          []string{"notifications", "raw_notifications"},
		VersionedTopics: []string{"versioned_notifications", "raw_versioned_notifications"},
		ImageURLBase:    "http://glance.example:9292",
	}, rpc.TransportConfig{URL: rabbit.TransportURL(), Heartbeat: 60 * time.Second}, log)
	if err != nil {
		t.Fatal(err)
	}
	if !n.Enabled() {
		t.Fatal("not enabled")
	}
	fault := rpc.NovaException("BuildAbortException", 500, "Build of instance "+inst.UUID+" aborted: boom",
		map[string]any{"instance_uuid": inst.UUID, "reason": "boom"})
	for _, ev := range interopEvents {
		var opts []Option
		var f error
		switch ev.action + "." + ev.phase {
		case "create.start", "rebuild.end":
			opts = append(opts, WithImageName("cirros"))
		case "create.error":
			f = fault
		case "snapshot.start":
			opts = append(opts, WithSnapshotImage(ref.SnapshotImageID))
		}
		n.InstanceAction(context.Background(), rctx, inst, ev.action, ev.phase, f, opts...)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	want := uint64(len(interopEvents) * 2 * 2) // legacy+versioned, two topics each
	if s := n.Stats(); s.Sent != want || s.Failed != 0 || s.Dropped != 0 {
		t.Fatalf("stats %+v, want %d sent\n%s", s, want, logs.String())
	}

	// 3. Byte-level comparison with nova's own notifications.
	conn, err := amqp.Dial(rabbit.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	collect := func(prefix string) map[string]amqp.Delivery {
		byEvent := map[string]amqp.Delivery{}
		for _, q := range []string{prefix + "notifications.info", prefix + "notifications.error",
			prefix + "versioned_notifications.info", prefix + "versioned_notifications.error"} {
			for _, d := range drainQueue(t, ch, q) {
				ev, _ := inner(t, d.Body)["event_type"].(string)
				byEvent[q[len(prefix):]+" "+ev] = d
			}
		}
		return byEvent
	}
	ours, theirs := collect("raw_"), collect("ref_")
	if len(theirs) != len(interopEvents)*2 || len(ours) != len(theirs) {
		t.Fatalf("ours %d messages %v, nova's %d %v", len(ours), sortedKeys(ours), len(theirs), sortedKeys(theirs))
	}
	for k, nd := range theirs {
		od, ok := ours[k]
		if !ok {
			t.Errorf("%s: nova sent it, we did not", k)
			continue
		}
		if od.ContentType != nd.ContentType || od.ContentEncoding != nd.ContentEncoding || od.DeliveryMode != nd.DeliveryMode ||
			od.Exchange != nd.Exchange || od.Priority != nd.Priority || od.Expiration != nd.Expiration {
			t.Errorf("%s: properties ours %s/%s/%d/%s/%d/%q, nova's %s/%s/%d/%s/%d/%q", k, od.ContentType, od.ContentEncoding,
				od.DeliveryMode, od.Exchange, od.Priority, od.Expiration, nd.ContentType, nd.ContentEncoding, nd.DeliveryMode,
				nd.Exchange, nd.Priority, nd.Expiration)
		}
		var oo, no map[string]any
		_ = json.Unmarshal(od.Body, &oo)
		_ = json.Unmarshal(nd.Body, &no)
		if !reflect.DeepEqual(keys(oo), keys(no)) {
			t.Errorf("%s: envelope keys ours %v, nova's %v", k, keys(oo), keys(no))
		}
		om, nm := inner(t, od.Body), inner(t, nd.Body)
		for _, m := range []map[string]any{om, nm} {
			for v := range volatile {
				if _, ok := m[v]; !ok {
					t.Errorf("%s: no %s", k, v)
				}
				delete(m, v)
			}
		}
		var diffs []string
		diff("", om, nm, &diffs)
		for _, d := range diffs {
			t.Errorf("%s: %s", k, d)
		}
	}

	// 4. nova's notification listener consumes ours (published before it
	// started: the queues our publisher declared kept them) and hydrates
	// the versioned payloads with nova's objects.
	lisConf := writeNovaConf(t, dir, rabbit.TransportURL(), "notifications", "versioned_notifications")
	lisPy := filepath.Join(dir, "listener.py")
	if err := os.WriteFile(lisPy, []byte(listenerScript), 0o644); err != nil {
		t.Fatal(err)
	}
	out = testenv.Python(t, lisPy, nil, lisConf, fmt.Sprint(len(interopEvents)*2))
	var recs []map[string]any
	if err := json.Unmarshal([]byte(lastLine(out)), &recs); err != nil {
		t.Fatalf("listener output: %v\n%s", err, out)
	}
	if len(recs) != len(interopEvents)*2 {
		t.Fatalf("listener got %d notifications, want %d: %v", len(recs), len(interopEvents)*2, recs)
	}
	seen := map[string]map[string]any{}
	for _, r := range recs {
		if e, ok := r["error"]; ok {
			t.Errorf("%v: nova could not read it: %v", r["event_type"], e)
		}
		seen[r["event_type"].(string)] = r
		if r["request_id"] != rctx.RequestID || r["user_id"] != "u1" || r["auth_token"] != nil {
			t.Errorf("%v: context request_id %v user %v token %v", r["event_type"], r["request_id"], r["user_id"], r["auth_token"])
		}
	}
	for _, ev := range interopEvents {
		v := seen["instance."+ev.action+"."+ev.phase]
		l := seen["compute.instance."+ev.action+"."+ev.phase]
		if v == nil || l == nil {
			t.Errorf("%s.%s: versioned %v legacy %v", ev.action, ev.phase, v != nil, l != nil)
			continue
		}
		wantPrio := "info"
		if ev.phase == "error" {
			wantPrio = "error"
		}
		if v["priority"] != wantPrio || l["priority"] != wantPrio {
			t.Errorf("%s.%s: priorities %v %v", ev.action, ev.phase, v["priority"], l["priority"])
		}
		if v["publisher_id"] != "nova-compute:h1" || l["publisher_id"] != "compute.h1" {
			t.Errorf("publishers %v %v", v["publisher_id"], l["publisher_id"])
		}
		if v["uuid"] != inst.UUID || v["power_state"] != "running" || v["state"] != "active" || v["flavor"] != "m1.tiny" ||
			v["roundtrip"] != true || l["instance_id"] != inst.UUID {
			t.Errorf("%s.%s hydrated %v / legacy %v", ev.action, ev.phase, v, l)
		}
	}
	if r := seen["instance.power_off.start"]; r != nil && (r["cls"] != "InstanceActionPayload" || r["version"] != "1.8") {
		t.Errorf("power_off payload %v %v", r["cls"], r["version"])
	}
	if r := seen["instance.create.error"]; r != nil && (r["cls"] != "InstanceCreatePayload" || r["fault"] != "BuildAbortException") {
		t.Errorf("create.error %v fault %v", r["cls"], r["fault"])
	}
	if r := seen["instance.snapshot.start"]; r != nil && r["snapshot_image_id"] != ref.SnapshotImageID {
		t.Errorf("snapshot_image_id %v", r["snapshot_image_id"])
	}
	t.Logf("nova's listener hydrated %d notifications; payloads equal nova's own for %d events", len(recs), len(theirs))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func sortedKeys(m map[string]amqp.Delivery) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger(w *syncBuffer) *slog.Logger {
	level := slog.LevelInfo
	if testLogLevel {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// TestLogDriverAndBareInstance: oslo's "log" driver logs the notification,
// and an Instance decoded without its primitive still yields a payload.
func TestLogDriverAndBareInstance(t *testing.T) {
	var buf syncBuffer
	n, err := New(context.Background(), Config{Driver: []string{"log"}, Format: FormatVersioned, Host: "h1"},
		rpc.TransportConfig{}, testLogger(&buf))
	if err != nil {
		t.Fatal(err)
	}
	if !n.Enabled() {
		t.Fatal("log driver not enabled")
	}
	inst := &novaobj.Instance{UUID: "9b1c2d3e-1111-4222-8333-444455556666", VMState: "active", PowerState: 4,
		Flavor: &novaobj.Flavor{Name: "m1.tiny", FlavorID: "42", MemoryMB: 512, VCPUs: 1, RootGB: 1}}
	n.InstanceAction(context.Background(), nil, inst, "power_off", PhaseEnd, nil)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"event_type=instance.power_off.end", "publisher_id=nova-compute:h1", `\"power_state\":\"shutdown\"`, `\"name\":\"m1.tiny\"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log output lacks %s:\n%s", want, out)
		}
	}
}

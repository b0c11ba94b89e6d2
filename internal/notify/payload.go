package notify

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// Versions of nova 26.2.2's notification payload objects.
const (
	InstanceActionPayloadVersion         = "1.8"
	InstanceCreatePayloadVersion         = "1.12"
	InstanceActionRebuildPayloadVersion  = "1.9"
	InstanceActionSnapshotPayloadVersion = "1.9"
	FlavorPayloadVersion                 = "1.4"
	IpPayloadVersion                     = "1.0"
	ExceptionPayloadVersion              = "1.1"
	BlockDevicePayloadVersion            = "1.0"
	KeypairPayloadVersion                = "1.0"
)

var null = json.RawMessage("null")

// powerStates is nova's InstancePowerState.ALL: the string of each
// power_state integer.
var powerStates = []string{"pending", "running", "_unused", "paused", "shutdown", "_unused", "crashed", "suspended"}

// PowerStateName is the versioned notifications' name of a nova
// power_state integer ("" when out of range).
func PowerStateName(ps int) string {
	if ps < 0 || ps >= len(powerStates) {
		return ""
	}
	return powerStates[ps]
}

// bdmActions are the events for which nova's compute manager passes the
// instance's BDMs to the versioned notification.
var bdmActions = map[string]bool{"create": true, "delete": true, "shutdown": true, "reboot": true, "resume": true, "rebuild": true}

// managerMethods names the nova ComputeManager method that runs each action
// (the default function_name of a fault payload).
var managerMethods = map[string]string{
	"create": "_build_and_run_instance", "delete": "_delete_instance", "shutdown": "_shutdown_instance",
	"power_off": "stop_instance", "power_on": "start_instance", "pause": "pause_instance",
	"unpause": "unpause_instance", "suspend": "suspend_instance", "resume": "resume_instance",
	"reboot": "reboot_instance", "rebuild": "rebuild_instance", "snapshot": "snapshot_instance",
}

// payloadSchema is InstancePayload.SCHEMA: payload field ← Instance field,
// copied as they are (datetimes are handled apart).
var payloadSchema = [][2]string{
	{"uuid", "uuid"}, {"user_id", "user_id"}, {"tenant_id", "project_id"},
	{"reservation_id", "reservation_id"}, {"display_name", "display_name"},
	{"display_description", "display_description"}, {"host_name", "hostname"},
	{"host", "host"}, {"node", "node"}, {"os_type", "os_type"},
	{"architecture", "architecture"}, {"availability_zone", "availability_zone"},
	{"image_uuid", "image_ref"}, {"key_name", "key_name"}, {"kernel_id", "kernel_id"},
	{"ramdisk_id", "ramdisk_id"}, {"state", "vm_state"}, {"task_state", "task_state"},
	{"progress", "progress"},
}

var payloadDates = []string{"created_at", "launched_at", "terminated_at", "deleted_at", "updated_at"}

// flavorSchema is FlavorPayload.SCHEMA (same names on both sides).
var flavorSchema = []string{"flavorid", "memory_mb", "vcpus", "root_gb", "ephemeral_gb", "name", "swap",
	"rxtx_factor", "vcpu_weight", "disabled", "is_public", "extra_specs", "projects", "description"}

// flavorDefaults stand in for non-nullable flavor fields nova would have
// lazy-loaded.
var flavorDefaults = map[string]json.RawMessage{
	"name": json.RawMessage(`""`), "swap": json.RawMessage(`0`),
	"disabled": json.RawMessage(`false`), "is_public": json.RawMessage(`true`),
}

// instanceObj returns the Instance primitive to read: the one nova sent,
// or one made of the decoded fields.
func instanceObj(inst *novaobj.Instance) *novaobj.Object {
	if inst.Obj != nil {
		return inst.Obj
	}
	o := novaobj.New("Instance", "2.7")
	o.Set("uuid", inst.UUID)
	if inst.ID != 0 {
		o.Set("id", inst.ID)
	}
	for k, v := range map[string]string{"display_name": inst.DisplayName, "hostname": inst.Hostname,
		"host": inst.Host, "node": inst.Node, "image_ref": inst.ImageRef, "vm_state": inst.VMState,
		"task_state": inst.TaskState, "launched_at": inst.LaunchedAt} {
		if v != "" {
			o.Set(k, v)
		}
	}
	o.Set("power_state", inst.PowerState)
	o.Set("memory_mb", inst.MemoryMB)
	o.Set("vcpus", inst.VCPUs)
	o.Set("root_gb", inst.RootGB)
	if inst.SystemMetadata != nil {
		o.Set("system_metadata", inst.SystemMetadata)
	}
	if inst.Flavor != nil {
		f := novaobj.New("Flavor", "1.2")
		f.Set("name", inst.Flavor.Name)
		f.Set("flavorid", inst.Flavor.FlavorID)
		f.Set("memory_mb", inst.Flavor.MemoryMB)
		f.Set("vcpus", inst.Flavor.VCPUs)
		f.Set("root_gb", inst.Flavor.RootGB)
		if inst.Flavor.ExtraSpecs != nil {
			f.Set("extra_specs", inst.Flavor.ExtraSpecs)
		}
		o.Set("flavor", f)
	}
	if inst.NetworkInfo != nil {
		b, _ := json.Marshal(inst.NetworkInfo)
		ic := novaobj.New("InstanceInfoCache", "1.5")
		ic.Set("network_info", string(b))
		o.Set("info_cache", ic)
	}
	return o
}

// get returns a field's raw value, nil when unset (null stays "null").
func get(o *novaobj.Object, field string) json.RawMessage {
	if o == nil {
		return nil
	}
	if v, ok := o.Data[field]; ok && len(v) > 0 {
		return v
	}
	return nil
}

// getOr returns a field's raw value, def when unset or null.
func getOr(o *novaobj.Object, field string, def json.RawMessage) json.RawMessage {
	v := get(o, field)
	if v == nil || string(v) == "null" {
		return def
	}
	return v
}

func isNull(v json.RawMessage) bool { return v == nil || string(v) == "null" }

// decode unmarshals raw into a generic value (nil for null/invalid).
func decode(raw json.RawMessage) any {
	if isNull(raw) {
		return nil
	}
	var v any
	d := json.NewDecoder(strings.NewReader(string(raw)))
	d.UseNumber()
	if d.Decode(&v) != nil {
		return nil
	}
	return v
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		return null
	}
	return b
}

// payloadObj is a notification payload: every field set, no changes
// (nova resets them before emitting).
func payloadObj(name, version string) *novaobj.Object {
	return novaobj.New(name, version)
}

func set(p *novaobj.Object, field string, v any) {
	switch x := v.(type) {
	case json.RawMessage:
		if x == nil {
			x = null
		}
		p.Data[field] = x
	case nil:
		p.Data[field] = null
	default:
		p.Data[field] = mustJSON(x)
	}
}

// normDate re-renders a DateTimeField value the way the payload's own
// DateTimeField would (seconds, "Z").
func normDate(raw json.RawMessage) json.RawMessage {
	var s string
	if isNull(raw) || json.Unmarshal(raw, &s) != nil {
		return null
	}
	if t, ok := parseNovaTime(s); ok {
		return mustJSON(isotime(t))
	}
	return raw
}

// versionedPayload builds the payload primitive nova's
// notify_about_instance_action/_create/_rebuild/_snapshot would send.
func (n *Notifier) versionedPayload(c *notifContext, inst *novaobj.Instance, action string, fault error, o *options) (json.RawMessage, error) {
	io := instanceObj(inst)
	name, version := "InstanceActionPayload", InstanceActionPayloadVersion
	switch action {
	case "create":
		name, version = "InstanceCreatePayload", InstanceCreatePayloadVersion
	case "rebuild":
		name, version = "InstanceActionRebuildPayload", InstanceActionRebuildPayloadVersion
	case "snapshot":
		name, version = "InstanceActionSnapshotPayload", InstanceActionSnapshotPayloadVersion
	}
	p := payloadObj(name, version)
	for _, f := range payloadSchema {
		set(p, f[0], get(io, f[1]))
	}
	for _, f := range payloadDates {
		set(p, f, normDate(get(io, f)))
	}
	var ps int
	if v := get(io, "power_state"); !isNull(v) && json.Unmarshal(v, &ps) == nil && PowerStateName(ps) != "" {
		set(p, "power_state", PowerStateName(ps))
	} else {
		set(p, "power_state", nil)
	}
	set(p, "metadata", getOr(io, "metadata", json.RawMessage(`{}`)))
	set(p, "locked", getOr(io, "locked", json.RawMessage(`false`)))
	adc := "MANUAL"
	if truthy(decode(get(io, "auto_disk_config"))) {
		adc = "AUTO"
	}
	set(p, "auto_disk_config", adc)

	fl, err := io.Child("flavor")
	if err != nil {
		return nil, err
	}
	set(p, "flavor", flavorPayload(fl, io))

	ips, err := ipPayloads(io)
	if err != nil {
		return nil, err
	}
	set(p, "ip_addresses", ips)

	switch {
	case o.bdmsSet:
		set(p, "block_devices", bdmPayloads(o.bdms))
	case bdmActions[action]:
		set(p, "block_devices", []any{})
	default:
		set(p, "block_devices", nil)
	}

	// NOTE(nova): no request_id for contexts without a user and project
	// (periodic tasks).
	if truthy(c.userID) && truthy(c.projectID) {
		set(p, "request_id", c.requestID)
	} else {
		set(p, "request_id", nil)
	}
	set(p, "action_initiator_user", c.userID)
	set(p, "action_initiator_project", c.projectID)

	var sysmeta map[string]any
	if v := get(io, "system_metadata"); !isNull(v) {
		_ = json.Unmarshal(v, &sysmeta)
	}
	if r, ok := sysmeta["locked_reason"]; ok {
		set(p, "locked_reason", r)
	} else {
		set(p, "locked_reason", nil)
	}

	if fault != nil {
		set(p, "fault", exceptionPayload(fault, action, o))
	} else {
		set(p, "fault", nil)
	}

	switch action {
	case "create":
		kps, err := keypairPayloads(io)
		if err != nil {
			return nil, err
		}
		set(p, "keypairs", kps)
		tags, err := tagNames(io)
		if err != nil {
			return nil, err
		}
		set(p, "tags", tags)
		tc, err := trustedCerts(io)
		if err != nil {
			return nil, err
		}
		set(p, "trusted_image_certificates", tc)
		set(p, "instance_name", instanceName(n.cfg.InstanceNameTemplate, io))
	case "rebuild":
		tc, err := trustedCerts(io)
		if err != nil {
			return nil, err
		}
		set(p, "trusted_image_certificates", tc)
	case "snapshot":
		if o.snapshotImage != "" {
			set(p, "snapshot_image_id", o.snapshotImage)
		}
	}
	p.Changes = nil
	return json.Marshal(p)
}

// truthy is Python's truth value of a JSON-decoded value.
func truthy(v any) bool {
	switch x := v.(type) {
	case nil:
		return false
	case bool:
		return x
	case string:
		return x != ""
	case json.Number:
		f, err := x.Float64()
		return err == nil && f != 0
	case float64:
		return x != 0
	case []any:
		return len(x) > 0
	case map[string]any:
		return len(x) > 0
	}
	return true
}

// flavorPayload is FlavorPayload(flavor=instance.flavor).
func flavorPayload(fl, inst *novaobj.Object) *novaobj.Object {
	p := payloadObj("FlavorPayload", FlavorPayloadVersion)
	for _, f := range flavorSchema {
		v := get(fl, f)
		if v == nil {
			// nova lazy-loads from the database; we only have the
			// instance's own copies of the sizes.
			switch f {
			case "memory_mb", "vcpus", "root_gb", "ephemeral_gb":
				v = get(inst, f)
			default:
				v = flavorDefaults[f]
			}
		}
		set(p, f, v)
	}
	p.Changes = nil
	return p
}

// vifs decodes info_cache.network_info generically.
func vifs(inst *novaobj.Object) ([]map[string]any, error) {
	ic, err := inst.Child("info_cache")
	if err != nil || ic == nil {
		return nil, err
	}
	raw := get(ic, "network_info")
	if isNull(raw) {
		return nil, nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("network_info: %w", err)
		}
		raw = json.RawMessage(s)
	}
	var out []map[string]any
	d := json.NewDecoder(strings.NewReader(string(raw)))
	d.UseNumber()
	if err := d.Decode(&out); err != nil {
		return nil, fmt.Errorf("network_info: %w", err)
	}
	return out, nil
}

// fixedIPs is VIF.fixed_ips(): the IPs of every subnet of the VIF's network.
func fixedIPs(vif map[string]any) []map[string]any {
	nw, _ := vif["network"].(map[string]any)
	if !truthy(nw) {
		return nil
	}
	subnets, _ := nw["subnets"].([]any)
	var out []map[string]any
	for _, s := range subnets {
		sm, _ := s.(map[string]any)
		ips, _ := sm["ips"].([]any)
		for _, ip := range ips {
			if m, ok := ip.(map[string]any); ok {
				out = append(out, m)
			}
		}
	}
	return out
}

// ipVersion is the IP model's version: as given, else from the address.
func ipVersion(ip map[string]any) any {
	if v := ip["version"]; truthy(v) {
		return v
	}
	if s, ok := ip["address"].(string); ok && s != "" {
		if a, err := netip.ParseAddr(s); err == nil {
			if a.Is4() {
				return 4
			}
			return 6
		}
	}
	return ip["version"]
}

// ipPayloads is IpPayload.from_network_info(instance.get_network_info()).
func ipPayloads(inst *novaobj.Object) ([]*novaobj.Object, error) {
	vs, err := vifs(inst)
	if err != nil {
		return nil, err
	}
	out := []*novaobj.Object{}
	for _, vif := range vs {
		nw, _ := vif["network"].(map[string]any)
		for _, ip := range fixedIPs(vif) {
			p := payloadObj("IpPayload", IpPayloadVersion)
			set(p, "label", nw["label"])
			mac := vif["address"]
			if s, ok := mac.(string); ok {
				mac = strings.ReplaceAll(strings.ToLower(s), "-", ":")
			}
			set(p, "mac", mac)
			set(p, "meta", stringDict(vif["meta"]))
			set(p, "port_uuid", vif["id"])
			set(p, "version", ipVersion(ip))
			addr := ip["address"]
			if s, ok := addr.(string); ok {
				if a, err := netip.ParseAddr(s); err == nil {
					addr = a.String()
				}
			}
			set(p, "address", addr)
			set(p, "device_name", vif["devname"])
			p.Changes = nil
			out = append(out, p)
		}
	}
	return out, nil
}

// stringDict coerces a dict to DictOfStringsField: scalars become their
// Python str(); values nova could not coerce are left out.
func stringDict(v any) map[string]string {
	out := map[string]string{}
	m, _ := v.(map[string]any)
	for k, x := range m {
		switch x.(type) {
		case string, bool, json.Number, float64:
			out[k] = pyStr(x)
		}
	}
	return out
}

// bdmPayloads is BlockDevicePayload.from_bdms: the volume BDMs.
func bdmPayloads(bdms []*novaobj.Object) []*novaobj.Object {
	out := []*novaobj.Object{}
	for _, b := range bdms {
		if b == nil || isNull(get(b, "volume_id")) {
			continue
		}
		p := payloadObj("BlockDevicePayload", BlockDevicePayloadVersion)
		for _, f := range []string{"device_name", "boot_index", "volume_id", "tag"} {
			set(p, f, get(b, f))
		}
		set(p, "delete_on_termination", getOr(b, "delete_on_termination", json.RawMessage(`false`)))
		p.Changes = nil
		out = append(out, p)
	}
	return out
}

// listObjects returns the objects of an ObjectListBase field.
func listObjects(inst *novaobj.Object, field string) ([]*novaobj.Object, error) {
	l, err := inst.Child(field)
	if err != nil {
		return nil, err
	}
	return novaobj.List(l)
}

// keypairPayloads is [KeypairPayload(kp) for kp in instance.keypairs].
func keypairPayloads(inst *novaobj.Object) ([]*novaobj.Object, error) {
	kps, err := listObjects(inst, "keypairs")
	if err != nil {
		return nil, err
	}
	out := []*novaobj.Object{}
	for _, kp := range kps {
		p := payloadObj("KeypairPayload", KeypairPayloadVersion)
		for _, f := range []string{"user_id", "name", "public_key", "fingerprint", "type"} {
			set(p, f, get(kp, f))
		}
		p.Changes = nil
		out = append(out, p)
	}
	return out, nil
}

// tagNames is [t.tag for t in instance.tags].
func tagNames(inst *novaobj.Object) ([]string, error) {
	tags, err := listObjects(inst, "tags")
	if err != nil {
		return nil, err
	}
	out := []string{}
	for _, t := range tags {
		out = append(out, t.String("tag"))
	}
	return out, nil
}

// trustedCerts is instance.trusted_certs.ids, or None.
func trustedCerts(inst *novaobj.Object) (json.RawMessage, error) {
	tc, err := inst.Child("trusted_certs")
	if err != nil {
		return nil, err
	}
	if tc == nil {
		return null, nil
	}
	return getOr(tc, "ids", null), nil
}

var namedFormat = regexp.MustCompile(`%\((\w+)\)s`)

// instanceName is nova's Instance.name: instance_name_template % id (or %
// a dict of the instance's fields), else the uuid.
func instanceName(template string, inst *novaobj.Object) string {
	if namedFormat.MatchString(template) {
		ok := true
		s := namedFormat.ReplaceAllStringFunc(template, func(m string) string {
			f := namedFormat.FindStringSubmatch(m)[1]
			v := get(inst, f)
			if v == nil {
				ok = false
				return m
			}
			return pyStr(decode(v))
		})
		if ok {
			return s
		}
		return inst.String("uuid")
	}
	var id int64
	if v := get(inst, "id"); isNull(v) || json.Unmarshal(v, &id) != nil {
		if inst.String("vm_state") == "building" && inst.String("task_state") == "scheduling" {
			return ""
		}
		return inst.String("uuid")
	}
	return fmt.Sprintf(template, id)
}

// exceptionPayload is ExceptionPayload.from_exception(fault).
func exceptionPayload(fault error, action string, o *options) *novaobj.Object {
	ex := rpc.ToException(fault)
	module, function := o.faultModule, o.faultFunction
	if module == "" {
		module = "lxc_agent.compute"
	}
	if function == "" {
		function = managerMethods[action]
		if function == "" {
			function = action
		}
	}
	qual := ex.Class
	if ex.Module != "" && ex.Module != "builtins" {
		qual = ex.Module + "." + ex.Class
	}
	tb := strings.Join([]string{
		"Traceback (most recent call last):\n",
		"  File \"lxc-agent\", in " + function + "\n    " + strings.ReplaceAll(fault.Error(), "\n", " ") + "\n",
		qual + ": " + ex.Msg + "\n",
	}, ",")
	p := payloadObj("ExceptionPayload", ExceptionPayloadVersion)
	set(p, "module_name", module)
	set(p, "function_name", function)
	set(p, "exception", ex.Class)
	set(p, "exception_message", ex.Msg)
	set(p, "traceback", tb)
	p.Changes = nil
	return p
}

// legacyFault is compute_utils.exception_to_dict(fault) as the legacy
// payload carries it: the exception's repr, the message (a nova
// exception's formatted message, else the class name, at most 255 bytes)
// and the code (500 unless the exception says otherwise).
func legacyFault(fault error) map[string]any {
	ex := rpc.ToException(fault)
	code := any(500)
	if c, ok := ex.Kwargs["code"]; ok {
		code = c
	}
	var message, repr string
	if ex.Module == "nova.exception" {
		message = ex.Msg
		kw := map[string]any{}
		for k, v := range ex.Kwargs {
			kw[k] = v
		}
		if _, ok := kw["code"]; !ok {
			kw["code"] = 500
		}
		repr = pyRepr(orderedDict{{"kwargs", kw}, {"message", ex.Msg}, {"class", ex.Class}})
	} else {
		message = ex.Class
		args := ex.Args
		if args == nil {
			args = []any{ex.Msg}
		}
		parts := make([]string, len(args))
		for i, a := range args {
			parts[i] = pyRepr(a)
		}
		repr = ex.Class + "(" + strings.Join(parts, ", ") + ")"
	}
	return map[string]any{"exception": repr, "message": safeTruncate(message, 255), "code": code}
}

// GlanceEndpointBase turns an image endpoint from the service catalog into
// the Config.ImageURLBase nova would use (it strips a trailing version,
// leaving the slash: "http://g:9292/v2" → "http://g:9292/").
func GlanceEndpointBase(endpoint string) string {
	return glanceVersion.ReplaceAllString(endpoint, "/")
}

var glanceVersion = regexp.MustCompile(`/v\d+(\.\d+)?/?$`)

// atoiOr parses n, def when it is not an integer.
func atoiOr(n json.Number, def int64) int64 {
	if i, err := strconv.ParseInt(n.String(), 10, 64); err == nil {
		return i
	}
	return def
}

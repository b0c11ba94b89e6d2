package notify

import (
	"encoding/json"
	"strings"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
)

// legacyPayload is compute_utils.notify_about_instance_usage's payload:
// notifications.info_from_instance(..., populate_image_ref_url=True,
// **extra_usage_info) plus the fault fields.
func (n *Notifier) legacyPayload(_ *notifContext, inst *novaobj.Instance, action, phase string, fault error, o *options) (json.RawMessage, error) {
	io := instanceObj(inst)
	fl, err := io.Child("flavor")
	if err != nil {
		return nil, err
	}
	flavorStr := func(f string) any {
		if v := get(fl, f); v != nil {
			return v
		}
		return ""
	}
	flavorNum := func(f string) json.RawMessage {
		if v := get(fl, f); v != nil {
			return v
		}
		return getOr(io, f, null)
	}
	num := func(v json.RawMessage) int64 {
		var x json.Number
		if isNull(v) || json.Unmarshal(v, &x) != nil {
			return 0
		}
		return atoiOr(x, 0)
	}
	rootGB, ephGB := flavorNum("root_gb"), flavorNum("ephemeral_gb")

	imageRef := get(io, "image_ref")
	var imageURL any = imageRef
	if n.cfg.ImageURLBase != "" {
		imageURL = n.cfg.ImageURLBase + "/images/" + pyStr(decode(imageRef))
	}

	p := map[string]any{
		"tenant_id":          get(io, "project_id"),
		"user_id":            get(io, "user_id"),
		"instance_id":        get(io, "uuid"),
		"display_name":       get(io, "display_name"),
		"reservation_id":     get(io, "reservation_id"),
		"hostname":           get(io, "hostname"),
		"instance_type":      flavorStr("name"),
		"instance_type_id":   get(io, "instance_type_id"),
		"instance_flavor_id": flavorStr("flavorid"),
		"architecture":       get(io, "architecture"),
		"memory_mb":          flavorNum("memory_mb"),
		"disk_gb":            num(rootGB) + num(ephGB),
		"vcpus":              flavorNum("vcpus"),
		"root_gb":            rootGB,
		"ephemeral_gb":       ephGB,
		"host":               get(io, "host"),
		"node":               get(io, "node"),
		"availability_zone":  get(io, "availability_zone"),
		"cell_name":          nullSafeStr(get(io, "cell_name")),
		"created_at":         pyDateStr(get(io, "created_at")),
		"terminated_at":      nullSafeIsotime(get(io, "terminated_at")),
		"deleted_at":         nullSafeIsotime(get(io, "deleted_at")),
		"launched_at":        nullSafeIsotime(get(io, "launched_at")),
		"image_ref_url":      imageURL,
		"os_type":            get(io, "os_type"),
		"kernel_id":          get(io, "kernel_id"),
		"ramdisk_id":         get(io, "ramdisk_id"),
		"state":              get(io, "vm_state"),
		"state_description":  nullSafeStr(get(io, "task_state")),
		"progress":           legacyProgress(get(io, "progress")),
		"access_ip_v4":       get(io, "access_ip_v4"),
		"access_ip_v6":       get(io, "access_ip_v6"),
		"metadata":           getOr(io, "metadata", json.RawMessage(`{}`)),
	}
	for k, v := range p {
		if r, ok := v.(json.RawMessage); ok && r == nil {
			p[k] = nil
		}
	}

	event := action + "." + phase
	var nw []map[string]any
	switch {
	case o.networkSet:
		b, err := json.Marshal(o.networkInfo)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(b, &nw); err != nil {
			return nil, err
		}
		p["fixed_ips"] = legacyFixedIPs(nw)
	case event == "create.end" || event == "rebuild.end":
		if nw, err = vifs(io); err != nil {
			return nil, err
		}
		p["fixed_ips"] = legacyFixedIPs(nw)
	}

	imageMeta := map[string]any{}
	var sysmeta map[string]any
	if v := get(io, "system_metadata"); !isNull(v) {
		_ = json.Unmarshal(v, &sysmeta)
	}
	for k, v := range sysmeta {
		if rest, ok := strings.CutPrefix(k, "image_"); ok {
			imageMeta[rest] = v
		}
	}
	p["image_meta"] = imageMeta

	// extra_usage_info of the compute manager's calls.
	switch event {
	case "create.start", "rebuild.start", "rebuild.end":
		p["image_name"] = nil
	case "create.end":
		p["message"] = "Success"
	}
	if o.imageName != nil {
		p["image_name"] = *o.imageName
	}
	if fault != nil {
		for k, v := range legacyFault(fault) {
			p[k] = v
		}
	}
	return json.Marshal(p)
}

// legacyFixedIPs is info_from_instance's fixed_ips: every fixed IP model
// dict of every VIF, with the network label and the VIF's MAC added.
func legacyFixedIPs(nw []map[string]any) []map[string]any {
	out := []map[string]any{}
	for _, vif := range nw {
		net, _ := vif["network"].(map[string]any)
		for _, ip := range fixedIPs(vif) {
			m := ipModel(ip, "fixed")
			var floats []any
			if fs, ok := ip["floating_ips"].([]any); ok {
				for _, f := range fs {
					if fm, ok := f.(map[string]any); ok && len(fm) > 0 {
						floats = append(floats, ipModel(fm, ""))
					} else {
						floats = append(floats, nil)
					}
				}
			}
			if floats == nil {
				floats = []any{}
			}
			m["floating_ips"] = floats
			m["label"] = net["label"]
			m["vif_mac"] = vif["address"]
			out = append(out, m)
		}
	}
	return out
}

// ipModel is nova.network.model.IP(**ip) (FixedIP when defType is
// "fixed"): address, type, version (from the address when missing) and
// meta, which also takes any other key.
func ipModel(ip map[string]any, defType string) map[string]any {
	meta := map[string]any{}
	if mv, ok := ip["meta"]; ok {
		if mm, ok := mv.(map[string]any); ok {
			for k, v := range mm {
				meta[k] = v
			}
		}
	}
	for k, v := range ip {
		switch k {
		case "address", "type", "version", "meta", "floating_ips":
		default:
			meta[k] = v
		}
	}
	typ := ip["type"]
	if defType != "" && !truthy(typ) {
		typ = defType
	}
	return map[string]any{"address": ip["address"], "type": typ, "version": ipVersion(ip), "meta": meta}
}

// nullSafeStr is notifications.base.null_safe_str: str(s), or the empty
// string when s is falsy.
func nullSafeStr(raw json.RawMessage) string {
	v := decode(raw)
	if !truthy(v) {
		return ""
	}
	return pyStr(v)
}

// nullSafeIsotime is notifications.base.null_safe_isotime for a datetime
// field: utils.strtime(dt), the empty string when unset.
func nullSafeIsotime(raw json.RawMessage) string {
	var s string
	if isNull(raw) || json.Unmarshal(raw, &s) != nil || s == "" {
		return ""
	}
	if t, ok := parseNovaTime(s); ok {
		return strtime(t)
	}
	return s
}

// pyDateStr is str(instance.created_at): "2026-11-23 18:04:39+00:00", or
// "None".
func pyDateStr(raw json.RawMessage) string {
	var s string
	if isNull(raw) || json.Unmarshal(raw, &s) != nil {
		return "None"
	}
	if t, ok := parseNovaTime(s); ok {
		return pyAwareDatetimeStr(t.UTC())
	}
	return s
}

// legacyProgress is int(progress), or the empty string when progress is
// falsy (0 included).
func legacyProgress(raw json.RawMessage) any {
	v := decode(raw)
	if !truthy(v) {
		return ""
	}
	if n, ok := v.(json.Number); ok {
		return atoiOr(n, 0)
	}
	return v
}

package novaobj

import (
	"encoding/json"
	"errors"
	"testing"
)

// A primitive as python3-nova 26.2.2 serializes it (trimmed), with
// info_cache.network_info as the JSON string nova stores.
const instanceJSON = `{"nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.version": "2.7",
 "nova_object.data": {"uuid": "8f1a1a52-7a4c-4b1c-9d3e-0123456789ab", "id": 7, "display_name": "vm1", "host": "h1",
  "power_state": 1, "vm_state": "active", "task_state": null, "image_ref": "img", "launched_at": "2026-11-23T18:02:56Z",
  "system_metadata": {"image_os_type": "linux"}, "unknown_future_field": {"x": 1},
  "flavor": {"nova_object.name": "Flavor", "nova_object.namespace": "nova", "nova_object.version": "1.2",
   "nova_object.data": {"memory_mb": 256, "vcpus": 2, "root_gb": 1, "name": "m1", "flavorid": "1", "extra_specs": {"quota:cpu_shares": "2048"}}},
  "info_cache": {"nova_object.name": "InstanceInfoCache", "nova_object.namespace": "nova", "nova_object.version": "1.5",
   "nova_object.data": {"network_info": "[{\"id\": \"p1\", \"address\": \"fa:16:3e:00:00:01\", \"type\": \"bridge\", \"devname\": \"tapp1\", \"network\": {\"id\": \"n1\", \"bridge\": \"brqn1\", \"subnets\": [], \"meta\": {\"mtu\": 1450, \"should_create_bridge\": true}}}]"}}},
 "nova_object.changes": ["task_state"]}`

func TestDecodeInstance(t *testing.T) {
	in, err := DecodeInstance(json.RawMessage(instanceJSON))
	if err != nil {
		t.Fatal(err)
	}
	if in.UUID != "8f1a1a52-7a4c-4b1c-9d3e-0123456789ab" || in.ID != 7 || in.PowerState != 1 || in.TaskState != "" ||
		in.MemoryMB != 256 || in.VCPUs != 2 || in.Flavor.ExtraSpecs["quota:cpu_shares"] != "2048" ||
		in.SystemMetadata["image_os_type"] != "linux" {
		t.Errorf("instance = %+v", in)
	}
	if len(in.NetworkInfo) != 1 || in.NetworkInfo[0].Network.MTU() != 1450 || !in.NetworkInfo[0].ShouldCreateBridge() {
		t.Errorf("network_info = %+v", in.NetworkInfo)
	}
	// Round trip keeps the envelope and unknown fields.
	b, err := json.Marshal(in.Obj)
	if err != nil {
		t.Fatal(err)
	}
	again, err := DecodeInstance(b)
	if err != nil || again.UUID != in.UUID {
		t.Errorf("round trip: %v", err)
	}
}

func TestDecodeInstanceRejects(t *testing.T) {
	for name, raw := range map[string]string{
		"not an object": `42`,
		"other class":   `{"nova_object.name": "Flavor", "nova_object.namespace": "nova", "nova_object.data": {}}`,
		"other project": `{"nova_object.name": "Instance", "nova_object.namespace": "cinder", "nova_object.data": {"uuid": "8f1a1a52-7a4c-4b1c-9d3e-0123456789ab"}}`,
		"no uuid":       `{"nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.data": {}}`,
		"bad uuid":      `{"nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.data": {"uuid": "../../etc"}}`,
		"bad flavor":    `{"nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.data": {"uuid": "8f1a1a52-7a4c-4b1c-9d3e-0123456789ab", "flavor": "x"}}`,
		"bad network":   `{"nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.data": {"uuid": "8f1a1a52-7a4c-4b1c-9d3e-0123456789ab", "info_cache": {"nova_object.name": "InstanceInfoCache", "nova_object.namespace": "nova", "nova_object.data": {"network_info": "{oops"}}}}`,
	} {
		if _, err := DecodeInstance(json.RawMessage(raw)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

func TestNetworkRequests(t *testing.T) {
	raw := `{"nova_object.name": "NetworkRequestList", "nova_object.namespace": "nova", "nova_object.version": "1.1",
	 "nova_object.data": {"objects": [
	  {"nova_object.name": "NetworkRequest", "nova_object.namespace": "nova", "nova_object.version": "1.3", "nova_object.data": {"network_id": "n1", "address": "10.0.0.5", "port_id": null}},
	  {"nova_object.name": "NetworkRequest", "nova_object.namespace": "nova", "nova_object.version": "1.3", "nova_object.data": {"network_id": "none"}}]}}`
	reqs, err := DecodeNetworkRequests(json.RawMessage(raw))
	if err != nil || len(reqs) != 1 || reqs[0].NetworkID != "n1" || reqs[0].Address != "10.0.0.5" || reqs[0].PortID != "" {
		t.Errorf("requests = %+v, %v", reqs, err)
	}
	if reqs, err := DecodeNetworkRequests(json.RawMessage("null")); err != nil || reqs != nil {
		t.Errorf("null: %v %v", reqs, err)
	}
	// network_info as a JSON list (attach_interface replies carry it so)
	nw, err := ParseNetworkInfo(json.RawMessage(`[{"id": "p", "network": {"id": "n", "meta": {}}}]`))
	if err != nil || len(nw) != 1 || nw[0].Network.MTU() != 0 {
		t.Errorf("list form: %+v %v", nw, err)
	}
}

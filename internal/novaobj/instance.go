package novaobj

import (
	"encoding/json"
	"fmt"
	"regexp"
)

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)

// ValidUUID reports whether s is a uuid as nova's UUIDField accepts it.
func ValidUUID(s string) bool { return uuidRE.MatchString(s) }

// Instance is the part of an Instance 2.x primitive the agent uses.
type Instance struct {
	Obj *Object

	UUID        string
	ID          int
	DisplayName string
	Hostname    string
	Host        string
	Node        string
	ImageRef    string
	VMState     string
	TaskState   string
	PowerState  int
	MemoryMB    int
	VCPUs       int
	RootGB      int
	Flavor      *Flavor
	// NetworkInfo is info_cache.network_info, nil when absent.
	NetworkInfo    NetworkInfo
	SystemMetadata map[string]string
	LaunchedAt     string
}

// Flavor is the part of a Flavor primitive the agent uses.
type Flavor struct {
	Name       string
	FlavorID   string
	MemoryMB   int
	VCPUs      int
	RootGB     int
	ExtraSpecs map[string]string
}

// DecodeInstance reads an Instance primitive. Every field but uuid is optional.
func DecodeInstance(raw json.RawMessage) (*Instance, error) {
	o, err := Decode(raw, "Instance")
	if err != nil {
		return nil, fmt.Errorf("instance: %w", err)
	}
	in := &Instance{Obj: o}
	in.UUID = o.String("uuid")
	if !ValidUUID(in.UUID) {
		return nil, fmt.Errorf("instance: %w: uuid %q", ErrInvalid, in.UUID)
	}
	in.ID = o.Int("id")
	in.DisplayName = o.String("display_name")
	in.Hostname = o.String("hostname")
	in.Host = o.String("host")
	in.Node = o.String("node")
	in.ImageRef = o.String("image_ref")
	in.VMState = o.String("vm_state")
	in.TaskState = o.String("task_state")
	in.PowerState = o.Int("power_state")
	in.MemoryMB = o.Int("memory_mb")
	in.VCPUs = o.Int("vcpus")
	in.RootGB = o.Int("root_gb")
	in.LaunchedAt = o.String("launched_at")
	if _, err := o.Get("system_metadata", &in.SystemMetadata); err != nil {
		return nil, err
	}
	fl, err := o.Child("flavor")
	if err != nil {
		return nil, err
	}
	if fl != nil {
		f := &Flavor{Name: fl.String("name"), FlavorID: fl.String("flavorid"), MemoryMB: fl.Int("memory_mb"),
			VCPUs: fl.Int("vcpus"), RootGB: fl.Int("root_gb")}
		if _, err := fl.Get("extra_specs", &f.ExtraSpecs); err != nil {
			return nil, err
		}
		in.Flavor = f
		if in.MemoryMB == 0 {
			in.MemoryMB = f.MemoryMB
		}
		if in.VCPUs == 0 {
			in.VCPUs = f.VCPUs
		}
	}
	ic, err := o.Child("info_cache")
	if err != nil {
		return nil, err
	}
	if ic != nil {
		// NetworkModel fields travel as a JSON string; accept a list too.
		if raw, ok := ic.Data["network_info"]; ok && string(raw) != "null" {
			nw, err := ParseNetworkInfo(raw)
			if err != nil {
				return nil, fmt.Errorf("instance %s: %w", in.UUID, err)
			}
			in.NetworkInfo = nw
		}
	}
	return in, nil
}

// Name is the instance's display name, else its uuid.
func (in *Instance) Name() string {
	if in.DisplayName != "" {
		return in.DisplayName
	}
	return in.UUID
}

// NetworkRequest is one NetworkRequest of a NetworkRequestList.
type NetworkRequest struct {
	NetworkID string
	PortID    string
	Address   string
	Tag       string
}

// DecodeNetworkRequests reads a NetworkRequestList primitive. The special
// network ids "none" and "auto" (nova's NETWORK_ID_NONE/AUTO) yield no request.
func DecodeNetworkRequests(raw json.RawMessage) ([]NetworkRequest, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	o, err := Decode(raw, "NetworkRequestList")
	if err != nil {
		return nil, fmt.Errorf("requested_networks: %w", err)
	}
	objs, err := List(o)
	if err != nil {
		return nil, err
	}
	var out []NetworkRequest
	for _, r := range objs {
		nr := NetworkRequest{NetworkID: r.String("network_id"), PortID: r.String("port_id"),
			Address: r.String("address"), Tag: r.String("tag")}
		if nr.NetworkID == "none" || nr.NetworkID == "auto" {
			continue
		}
		out = append(out, nr)
	}
	return out, nil
}

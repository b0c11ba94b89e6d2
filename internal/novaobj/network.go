package novaobj

import (
	"encoding/json"
	"fmt"
)

// NetworkInfo is nova.network.model.NetworkInfo: a list of VIFs.
type NetworkInfo []VIF

// VIF is nova.network.model.VIF.
type VIF struct {
	ID               string         `json:"id"`
	Address          string         `json:"address"`
	Network          Network        `json:"network"`
	Type             string         `json:"type"`
	Details          map[string]any `json:"details"`
	Devname          string         `json:"devname"`
	OVSInterfaceID   *string        `json:"ovs_interfaceid"`
	QBHParams        any            `json:"qbh_params"`
	QBGParams        any            `json:"qbg_params"`
	Active           bool           `json:"active"`
	VNICType         string         `json:"vnic_type"`
	Profile          map[string]any `json:"profile"`
	PreserveOnDelete bool           `json:"preserve_on_delete"`
	DelegateCreate   bool           `json:"delegate_create"`
	Meta             map[string]any `json:"meta"`
}

// Network is nova.network.model.Network.
type Network struct {
	ID      string         `json:"id"`
	Bridge  string         `json:"bridge"`
	Label   string         `json:"label"`
	Subnets []Subnet       `json:"subnets"`
	Meta    map[string]any `json:"meta"`
}

// Subnet is nova.network.model.Subnet.
type Subnet struct {
	CIDR    string         `json:"cidr"`
	DNS     []IP           `json:"dns"`
	Gateway *IP            `json:"gateway"`
	IPs     []FixedIP      `json:"ips"`
	Routes  []Route        `json:"routes"`
	Version int            `json:"version"`
	Meta    map[string]any `json:"meta"`
}

// IP is nova.network.model.IP.
type IP struct {
	Address string         `json:"address"`
	Type    string         `json:"type"`
	Version int            `json:"version"`
	Meta    map[string]any `json:"meta"`
}

// FixedIP is nova.network.model.FixedIP.
type FixedIP struct {
	IP
	FloatingIPs []IP `json:"floating_ips"`
}

// Route is nova.network.model.Route.
type Route struct {
	CIDR      string         `json:"cidr"`
	Gateway   *IP            `json:"gateway"`
	Interface string         `json:"interface"`
	Meta      map[string]any `json:"meta"`
}

// ParseNetworkInfo reads network_info as nova stores it (a JSON string) or as
// a JSON list.
func ParseNetworkInfo(raw json.RawMessage) (NetworkInfo, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("%w: network_info: %v", ErrInvalid, err)
		}
		raw = json.RawMessage(s)
	}
	var nw NetworkInfo
	if err := json.Unmarshal(raw, &nw); err != nil {
		return nil, fmt.Errorf("%w: network_info: %v", ErrInvalid, err)
	}
	return nw, nil
}

// MTU is network.meta.mtu, 0 when absent.
func (n Network) MTU() int {
	if f, ok := n.Meta["mtu"].(float64); ok {
		return int(f)
	}
	return 0
}

// ShouldCreateBridge reads network.meta.should_create_bridge, accepting the
// un-hydrated top-level copy too.
func (v VIF) ShouldCreateBridge() bool {
	b, _ := v.Network.Meta["should_create_bridge"].(bool)
	return b
}

package netplug

import (
	"fmt"
	"net"
	"strings"
)

// Bounds of a VIF's MTU: the IPv4 minimum and the largest a veth takes.
const (
	minMTU = 68
	maxMTU = 65535
)

// validate checks vif for Plug and returns its parsed MAC.
func (vif VIF) validate() (net.HardwareAddr, error) {
	if vif.ID == "" {
		return nil, fmt.Errorf("empty port id: %w", ErrInvalid)
	}
	if err := validDevName(vif.DevName); err != nil {
		return nil, err
	}
	if err := validIfName("bridge", vif.Bridge); err != nil {
		return nil, err
	}
	if vif.Bridge == vif.DevName || vif.Bridge == PeerName(vif.DevName) {
		return nil, fmt.Errorf("bridge name %q clashes with the veth names: %w", vif.Bridge, ErrInvalid)
	}
	if vif.MTU != 0 && (vif.MTU < minMTU || vif.MTU > maxMTU) {
		return nil, fmt.Errorf("mtu %d out of range [%d, %d]: %w", vif.MTU, minMTU, maxMTU, ErrInvalid)
	}
	if vif.OVS != nil {
		if err := vif.validateOVS(); err != nil {
			return nil, err
		}
	}
	mac, err := net.ParseMAC(vif.MAC)
	if err != nil {
		return nil, fmt.Errorf("mac %q: %w: %w", vif.MAC, ErrInvalid, err)
	}
	if len(mac) != 6 {
		return nil, fmt.Errorf("mac %q is not an ethernet address: %w", vif.MAC, ErrInvalid)
	}
	if mac[0]&1 != 0 {
		return nil, fmt.Errorf("mac %q is multicast: %w", vif.MAC, ErrInvalid)
	}
	if string(mac) == "\x00\x00\x00\x00\x00\x00" {
		return nil, fmt.Errorf("mac %q is all zeros: %w", vif.MAC, ErrInvalid)
	}
	return mac, nil
}

// validDevName checks a tap name: an interface name starting with "tap",
// from which PeerName derives a distinct name.
func validDevName(name string) error {
	if err := validIfName("device", name); err != nil {
		return err
	}
	if !strings.HasPrefix(name, tapPrefix) || len(name) == len(tapPrefix) {
		return fmt.Errorf("device name %q does not look like %s<port id>: %w", name, tapPrefix, ErrInvalid)
	}
	return nil
}

// validIfName checks what the kernel's dev_valid_name checks.
func validIfName(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty %s name: %w", what, ErrInvalid)
	case len(name) > maxNameLen:
		return fmt.Errorf("%s name %q longer than %d bytes: %w", what, name, maxNameLen, ErrInvalid)
	case name == "." || name == "..":
		return fmt.Errorf("%s name %q: %w", what, name, ErrInvalid)
	}
	for _, c := range []byte(name) {
		if c == '/' || c == ':' || c <= ' ' || c == 0x7f {
			return fmt.Errorf("%s name %q has a forbidden character: %w", what, name, ErrInvalid)
		}
	}
	return nil
}

// validateOVS checks what an OVS VIF adds: values that go into ovs-vsctl
// arguments unquoted, and the hybrid plug's device names.
func (vif VIF) validateOVS() error {
	o := vif.OVS
	for _, f := range []struct{ what, v string }{
		{"iface-id", o.InterfaceID}, {"vm-uuid", o.InstanceUUID}, {"datapath type", o.DatapathType},
	} {
		if !ovsAtom(f.v) {
			return fmt.Errorf("%s %q: want letters, digits and ._:-: %w", f.what, f.v, ErrInvalid)
		}
	}
	if o.InterfaceID == "" && !ovsAtom(vif.ID) {
		return fmt.Errorf("port id %q as iface-id: want letters, digits and ._:-: %w", vif.ID, ErrInvalid)
	}
	return vif.validOVSNames()
}

// validOVSNames checks the names Unplug derives for an OVS VIF.
func (vif VIF) validOVSNames() error {
	qbr, qvb, qvo := vif.hybridNames()
	for _, n := range []string{qbr, qvb, qvo} {
		if err := validIfName("device", n); err != nil {
			return err
		}
		if n == vif.Bridge {
			return fmt.Errorf("bridge name %q clashes with the hybrid plug's names: %w", vif.Bridge, ErrInvalid)
		}
	}
	return nil
}

// ovsAtom reports whether s can be an ovs-vsctl value without quoting.
func ovsAtom(s string) bool {
	for _, c := range []byte(s) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '-'
		if !ok {
			return false
		}
	}
	return true
}

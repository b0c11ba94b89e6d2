package compute

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/driver/fake"
)

func TestVIFsCarryRoutesAndDNS(t *testing.T) {
	h := newHarness(t)
	nw := `[{"id": "3f5c6b2a-9d1e-4c4b-8a7f-1234567890ab", "address": "fa:16:3e:12:34:56", "type": "bridge",
 "network": {"id": "b1c2d3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e", "bridge": "brqb1c2d3e4-f5",
 "subnets": [{"cidr": "10.0.0.0/24", "gateway": {"address": "10.0.0.1"},
   "dns": [{"address": "10.0.0.2", "type": "dns"}, {"address": "10.0.0.3", "type": "dns"}],
   "routes": [{"cidr": "192.168.50.0/24", "gateway": {"address": "10.0.0.254", "type": "gateway"}}],
   "ips": [{"address": "10.0.0.5", "type": "fixed", "version": 4}], "version": 4}],
 "meta": {"mtu": 1450}}}]`
	parsed, err := novaobj.ParseNetworkInfo([]byte(nw))
	if err != nil {
		t.Fatal(err)
	}
	vifs, err := h.m.vifsFor(&novaobj.Instance{UUID: testUUID, NetworkInfo: parsed}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(vifs) != 1 || strings.Join(vifs[0].Routes, ",") != "192.168.50.0/24 10.0.0.254" || strings.Join(vifs[0].DNS, ",") != "10.0.0.2,10.0.0.3" {
		t.Fatalf("vifs = %+v", vifs)
	}
	rootfs := t.TempDir()
	// An image whose resolv.conf is a symlink out of the rootfs.
	outside := filepath.Join(t.TempDir(), "host-resolv.conf")
	if err := os.WriteFile(outside, []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(rootfs, "etc", "resolv.conf")); err != nil {
		t.Fatal(err)
	}
	if err := writeGuestFiles(rootfs, "web-1", vifs); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(rootfs, "etc", "resolv.conf"))
	if !strings.Contains(string(b), "nameserver 10.0.0.2\nnameserver 10.0.0.3\n") {
		t.Errorf("resolv.conf = %q", b)
	}
	if b, _ := os.ReadFile(outside); string(b) != "host\n" {
		t.Errorf("the write followed the symlink out of the rootfs: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(rootfs, "etc", "hostname")); string(b) != "web-1\n" {
		t.Errorf("hostname = %q", b)
	}
	// Without name servers the image's resolv.conf is left alone.
	rootfs2 := t.TempDir()
	if err := writeGuestFiles(rootfs2, "x", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(rootfs2, "etc", "resolv.conf")); !os.IsNotExist(err) {
		t.Errorf("resolv.conf written without DNS: %v", err)
	}
}

func TestDHCPImageLeavesAddressingToTheGuest(t *testing.T) {
	h := newHarness(t)
	nw := `[{"id": "3f5c6b2a-9d1e-4c4b-8a7f-1234567890ab", "address": "fa:16:3e:12:34:56", "type": "bridge",
 "network": {"id": "b1c2d3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e", "bridge": "brqb1c2d3e4-f5",
 "subnets": [{"cidr": "10.0.0.0/24", "gateway": {"address": "10.0.0.1"}, "meta": {"dhcp_server": "10.0.0.2"},
   "ips": [{"address": "10.0.0.5", "type": "fixed", "version": 4}], "version": 4}], "meta": {"mtu": 1450}}}]`
	for _, c := range []struct {
		prop  string
		addrs int
	}{{"", 1}, {"dhcp", 0}} {
		h.drv = fake.New()
		h.m.drv = h.drv
		id := uuid.NewString()
		props := map[string]any{}
		if c.prop != "" {
			props["lxc_agent_network"] = c.prop
		}
		if _, err := h.call(t, "build_and_run_instance", map[string]any{
			"instance": instancePrimitive(t, id, 0, nw), "image": map[string]any{"id": "img1", "properties": props}}); err != nil {
			t.Fatal(err)
		}
		spec, err := h.drv.Spec(id)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(spec.NICs[0].Addrs); n != c.addrs || spec.NICs[0].MTU != 1450 || spec.NICs[0].MAC != "fa:16:3e:12:34:56" {
			t.Errorf("property %q: nic %+v", c.prop, spec.NICs[0])
		}
	}
}

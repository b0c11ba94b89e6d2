package drivertest

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	osexec "os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/netplug"
)

// hotplugNIC: a NIC attached to a running container appears inside with
// its name, MAC, MTU and address; the container reaches the host over it;
// detached, it is gone inside and its tap is gone on the host.
func (s *suite) hotplugNIC(t *testing.T) {
	s.requireReal(t)
	d := s.h.New(t)
	hp, ok := d.(driver.NICHotplugger)
	if !ok {
		t.Skipf("%s does not implement driver.NICHotplugger", d.Name())
	}
	ctx := s.ctx(t)
	spec := s.spec(t, driver.Limits{})
	s.create(t, d, spec)
	s.start(t, d, spec.ID)

	suffix := fmt.Sprintf("%08x", rand.Uint32())
	bridge, tap := "brqhp"+suffix, "taphp"+suffix
	p := netplug.New(nil)
	t.Cleanup(func() {
		_ = p.Unplug(ctx, netplug.VIF{ID: "hotplug", Bridge: bridge, DevName: tap, MAC: "fa:16:3e:7e:00:01"})
		if err := run("ip", "link", "del", bridge); err != nil {
			t.Logf("delete bridge %s: %v", bridge, err)
		}
	})
	if err := p.EnsureBridge(ctx, bridge, 1400); err != nil {
		t.Fatal(err)
	}
	if err := run("ip", "addr", "add", "10.251.7.1/24", "dev", bridge); err != nil {
		t.Fatal(err)
	}
	nic := driver.NIC{Bridge: bridge, Tap: tap, Name: "eth7", MAC: "fa:16:3e:7e:00:01", MTU: 1400,
		Addrs: []netip.Prefix{netip.MustParsePrefix("10.251.7.5/24")}}
	if np, ok := d.(driver.NICPlugger); !ok || !np.PlugsNICs() {
		peer, err := p.Plug(ctx, netplug.VIF{ID: "hotplug", Bridge: bridge, DevName: tap, MAC: nic.MAC, MTU: nic.MTU})
		if err != nil {
			t.Fatal(err)
		}
		nic.HostDev = peer
	}
	if err := hp.AttachNIC(ctx, spec.ID, nic); err != nil {
		t.Fatalf("AttachNIC: %v", err)
	}
	out, err := s.inContainer(t, d, spec.ID, "/bin/busybox", "ip", "addr", "show", "eth7")
	if err != nil || !strings.Contains(out, "fa:16:3e:7e:00:01") || !strings.Contains(out, "mtu 1400") || !strings.Contains(out, "10.251.7.5/24") {
		t.Fatalf("eth7 inside after attach: %v\n%s", err, out)
	}
	if out, err := s.inContainer(t, d, spec.ID, "/bin/busybox", "ping", "-c", "1", "-W", "5", "10.251.7.1"); err != nil {
		t.Errorf("ping the host over the hot-plugged NIC: %v\n%s", err, out)
	}
	if _, err := os.Stat("/sys/class/net/" + tap + "/master"); err != nil {
		t.Errorf("tap %s not in %s: %v", tap, bridge, err)
	}
	if err := hp.DetachNIC(ctx, spec.ID, nic); err != nil {
		t.Fatalf("DetachNIC: %v", err)
	}
	if out, err := s.inContainer(t, d, spec.ID, "/bin/busybox", "ip", "link", "show", "eth7"); err == nil {
		t.Errorf("eth7 still inside after detach:\n%s", out)
	}
	waitFor(t, "tap gone after detach", 5*time.Second, func() bool {
		_, err := os.Stat("/sys/class/net/" + tap)
		return os.IsNotExist(err)
	})
	// Detaching again is fine.
	if err := hp.DetachNIC(ctx, spec.ID, nic); err != nil {
		t.Errorf("second DetachNIC: %v", err)
	}
}

func run(name string, args ...string) error {
	out, err := osexec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return nil
}

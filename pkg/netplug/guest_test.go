package netplug

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestAddRoutes: routes land in the namespace of a process (as in a
// container's init), through the named device, and adding them again is
// fine.
func TestAddRoutes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	// A process in a fresh network namespace with eth0 (a veth pair inside it) at
	// 10.66.0.5/24.
	cmd := exec.Command("unshare", "--net", "sh", "-c",
		"ip link add eth0 type veth peer name eth0p && ip addr add 10.66.0.5/24 dev eth0 && ip link set eth0p up && ip link set eth0 up && ip link set lo up && echo ready && exec sleep 60")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil || !strings.HasPrefix(string(buf), "ready") {
		t.Fatalf("namespace setup: %q %v", buf, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	routes := []Route{{Dst: netip.MustParsePrefix("192.168.50.0/24"), Via: netip.MustParseAddr("10.66.0.254")}}
	for range 2 {
		if err := AddRoutes(ctx, cmd.Process.Pid, "eth0", routes); err != nil {
			t.Fatal(err)
		}
	}
	got, err := exec.Command("nsenter", "-t", strconv.Itoa(cmd.Process.Pid), "-n", "ip", "route", "show", "192.168.50.0/24").CombinedOutput()
	if err != nil || !strings.Contains(string(got), "192.168.50.0/24 via 10.66.0.254 dev eth0") {
		t.Fatalf("routes in the namespace: %s %v", got, err)
	}
	if err := AddRoutes(ctx, cmd.Process.Pid, "eth9", routes); err == nil {
		t.Error("a route through a missing device succeeded")
	}
}

package neutron

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/lxc-agent/lxc-agent/internal/keystone"
	"github.com/lxc-agent/lxc-agent/internal/testenv"
)

func stubClient(t *testing.T) (*Client, *testenv.NeutronStub) {
	t.Helper()
	stub := testenv.NeutronStubT(t)
	sc, err := keystone.NewServiceClient(context.Background(), keystone.Options{AuthType: "admin_token", Endpoint: stub.URL(), Token: "admin:admin"}, "network")
	if err != nil {
		t.Fatal(err)
	}
	sc.ResourceBase = sc.Endpoint + "v2.0/"
	return New(sc, nil), stub
}

// TestAllocateBuildsNovasModel: a port made on a network, bound to the host,
// gives nova's VIF model (bridge, tap, MTU, subnets with gateway, DNS and
// routes); a given port is bound and preserved; deallocation deletes the
// one and unbinds the other.
func TestAllocateBuildsNovasModel(t *testing.T) {
	c, stub := stubClient(t)
	ctx := context.Background()
	net := stub.AddNetwork("n1", 1450)
	stub.AddSubnet(net.ID, "10.20.0.0/24", "10.20.0.1", []string{"10.20.0.2"}, [][2]string{{"192.168.9.0/24", "10.20.0.254"}})
	inst := Instance{UUID: uuid.NewString(), ProjectID: "admin"}

	// A port the user made beforehand.
	given, _, err := c.Allocate(ctx, Instance{UUID: uuid.NewString(), ProjectID: "admin"}, "other", []Request{{NetworkID: net.ID}})
	if err != nil {
		t.Fatal(err)
	}
	c.unbind(ctx, given[0].ID)

	nw, created, err := c.Allocate(ctx, inst, "host1", []Request{{NetworkID: net.ID}, {PortID: given[0].ID}})
	if err != nil {
		t.Fatal(err)
	}
	if len(nw) != 2 || len(created) != 1 || created[0] != nw[0].ID {
		t.Fatalf("nw %d vifs, created %v", len(nw), created)
	}
	v := nw[0]
	if v.Type != "bridge" || v.Devname != ("tap" + v.ID)[:14] || v.Network.Bridge != ("brq" + net.ID)[:14] ||
		v.Network.MTU() != 1450 || !v.ShouldCreateBridge() || v.PreserveOnDelete {
		t.Errorf("vif = %+v", v)
	}
	if len(v.Network.Subnets) != 1 {
		t.Fatalf("subnets = %+v", v.Network.Subnets)
	}
	sn := v.Network.Subnets[0]
	if sn.CIDR != "10.20.0.0/24" || sn.Gateway == nil || sn.Gateway.Address != "10.20.0.1" || len(sn.IPs) != 1 ||
		len(sn.DNS) != 1 || sn.DNS[0].Address != "10.20.0.2" || len(sn.Routes) != 1 || sn.Routes[0].Gateway.Address != "10.20.0.254" {
		t.Errorf("subnet = %+v", sn)
	}
	if !nw[1].PreserveOnDelete {
		t.Errorf("the given port is not preserved: %+v", nw[1])
	}
	for _, id := range []string{nw[0].ID, nw[1].ID} {
		p, _ := stub.Port(id)
		if p["binding:host_id"] != "host1" || p["device_id"] != inst.UUID || p["device_owner"] != "compute:nova" {
			t.Errorf("port %s = %v", id, p)
		}
	}
	// The model rebuilt from Neutron keeps the order and the flags.
	again, err := c.NetworkInfo(ctx, inst.UUID, []string{nw[0].ID, nw[1].ID}, created)
	if err != nil || len(again) != 2 || again[0].ID != nw[0].ID || !again[1].PreserveOnDelete {
		t.Fatalf("NetworkInfo = %+v, %v", again, err)
	}
	if err := c.Deallocate(ctx, inst.UUID, nw); err != nil {
		t.Fatal(err)
	}
	if _, ok := stub.Port(nw[0].ID); ok {
		t.Error("the port nova made survived Deallocate")
	}
	if p, ok := stub.Port(nw[1].ID); !ok || p["device_id"] != "" || p["binding:host_id"] != "" {
		t.Errorf("the user's port after Deallocate: %v (exists %v)", p, ok)
	}
}

// TestAllocateFailureReleasesPorts: when one request fails, the ports made
// for the others are deleted.
func TestAllocateFailureReleasesPorts(t *testing.T) {
	c, stub := stubClient(t)
	net := stub.AddNetwork("n1", 0)
	stub.AddSubnet(net.ID, "10.21.0.0/24", "", nil, nil)
	_, _, err := c.Allocate(context.Background(), Instance{UUID: uuid.NewString(), ProjectID: "admin"}, "h",
		[]Request{{NetworkID: net.ID}, {NetworkID: uuid.NewString()}})
	if err == nil {
		t.Fatal("allocation on a missing network succeeded")
	}
	if ps := stub.Ports(); len(ps) != 0 {
		t.Errorf("ports left after a failed allocation: %v", ps)
	}
}

package main

import (
	"context"

	"github.com/lxc-agent/lxc-agent/internal/compute"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/netplug"
	"github.com/lxc-agent/lxc-agent/pkg/rootfs"
)

// imageStore adapts the rootfs cache to the compute manager.
type imageStore struct{ c *rootfs.Cache }

func (s imageStore) Fetch(ctx context.Context, id, token string) (string, bool, error) {
	path, _, hit, err := s.c.Fetch(ctx, id, token)
	return path, hit, err
}

// plugger adapts netplug to the compute manager.
type plugger struct{ p *netplug.Plugger }

func (p plugger) Plug(ctx context.Context, v compute.PlugSpec) (string, error) {
	return p.p.Plug(ctx, netplug.VIF{ID: v.PortID, MAC: v.MAC, Bridge: v.Bridge, DevName: v.Tap, MTU: v.MTU})
}

func (p plugger) Unplug(ctx context.Context, v compute.PlugSpec) error {
	return p.p.Unplug(ctx, netplug.VIF{ID: v.PortID, MAC: v.MAC, Bridge: v.Bridge, DevName: v.Tap, MTU: v.MTU})
}

func nicStats(p *netplug.Plugger) compute.NICCounters {
	return func(ctx context.Context, tap string) (driver.NICStats, error) {
		rxB, rxP, rxE, rxD, txB, txP, txE, txD, err := p.Stats(ctx, tap)
		return driver.NICStats{RxOctets: rxB, RxPackets: rxP, RxErrors: rxE, RxDrop: rxD,
			TxOctets: txB, TxPackets: txP, TxErrors: txE, TxDrop: txD}, err
	}
}

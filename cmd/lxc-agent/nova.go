package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/lxc-agent/lxc-agent/internal/compute"
	"github.com/lxc-agent/lxc-agent/internal/conductor"
	"github.com/lxc-agent/lxc-agent/internal/config"
	"github.com/lxc-agent/lxc-agent/internal/hostservice"
	"github.com/lxc-agent/lxc-agent/internal/keystone"
	"github.com/lxc-agent/lxc-agent/internal/neutron"
	"github.com/lxc-agent/lxc-agent/internal/placement"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// novaLink is the agent's connection to nova's control plane: conductor
// over RabbitMQ and placement over HTTP.
type novaLink struct {
	rpc   *conductor.Redialer
	api   *conductor.API
	place *placement.Client
	net   *neutron.Client // nil without [neutron]
}

func keystoneOptions(a config.Auth) keystone.Options {
	return keystone.Options{
		AuthType: a.AuthType, AuthURL: a.AuthURL, Username: a.Username, UserID: a.UserID, Password: a.Password,
		ProjectName: a.ProjectName, ProjectID: a.ProjectID, UserDomainName: a.UserDomainName,
		UserDomainID: a.UserDomainID, ProjectDomainName: a.ProjectDomainName, ProjectDomainID: a.ProjectDomainID,
		RegionName: a.RegionName, ValidInterfaces: a.ValidInterfaces, EndpointOverride: a.EndpointOverride,
		Endpoint: a.Endpoint, Token: a.Token, Insecure: a.Insecure, CAFile: a.CAFile, Timeout: a.Timeout,
	}
}

func joinNova(ctx context.Context, cfg *config.Config, tc rpc.TransportConfig, log *slog.Logger) (*novaLink, error) {
	red := conductor.NewRedialer(func(ctx context.Context) (*rpc.Client, error) {
		return rpc.Dial(ctx, tc, cfg.ControlExchange, log)
	})
	sc, err := keystone.NewServiceClient(ctx, keystoneOptions(cfg.Placement), "placement")
	if err != nil {
		return nil, fmt.Errorf("[placement]: %w", err)
	}
	link := &novaLink{rpc: red, api: conductor.New(red, cfg.RPCTimeout, log), place: placement.New(sc, log)}
	if cfg.Neutron.Configured() {
		nc, err := keystone.NewServiceClient(ctx, keystoneOptions(cfg.Neutron), "network")
		if err != nil {
			return nil, fmt.Errorf("[neutron]: %w", err)
		}
		// gophercloud's networking calls add "v2.0/" themselves.
		nc.ResourceBase = strings.TrimSuffix(nc.Endpoint, "/") + "/v2.0/"
		link.net = neutron.New(nc, log)
		log.Info("ports through neutron", "endpoint", nc.Endpoint)
	}
	log.Info("joining nova", "placement", sc.Endpoint)
	return link, nil
}

func (n *novaLink) networks() compute.Networks {
	if n == nil || n.net == nil {
		return nil
	}
	return n.net
}

func (n *novaLink) conductor() compute.Nova {
	if n == nil {
		return nil
	}
	return n.api
}

func (n *novaLink) allocations() compute.Allocations {
	if n == nil {
		return nil
	}
	return n.place
}

func (n *novaLink) Close() error { return n.rpc.Close() }

// register waits for conductor and registers the host as nova-compute does.
func (n *novaLink) register(ctx context.Context, cfg *config.Config, mgr *compute.Manager, drv driver.Driver, log *slog.Logger) (*hostservice.Service, error) {
	hvVersion := 0
	if v, ok := drv.(interface {
		HypervisorVersion(context.Context) (int, error)
	}); ok {
		if hv, err := v.HypervisorVersion(ctx); err == nil {
			hvVersion = hv
		}
	}
	usage := func(ctx context.Context) (hostservice.Usage, error) {
		u, err := hostservice.HostTotals(cfg.InstancesPath)
		if err != nil {
			return u, err
		}
		u.VCPUsUsed, u.MemoryMBUsed, u.DiskGBUsed, u.RunningVMs = mgr.Usage()
		return u, nil
	}
	hs := hostservice.New(hostservice.Config{
		Host: cfg.Host, Node: cfg.LXCAgent.Node, HostIP: cfg.MyIP,
		ReportInterval: cfg.ReportInterval, ResourceInterval: cfg.ResourceInterval, SyncPowerInterval: cfg.SyncPowerInterval,
		Ratios: placement.Ratios{CPU: cfg.CPUAllocationRatio, RAM: cfg.RAMAllocationRatio, Disk: cfg.DiskAllocationRatio,
			InitialCPU: cfg.InitialCPUAllocationRatio, InitialRAM: cfg.InitialRAMAllocationRatio, InitialDisk: cfg.InitialDiskAllocationRatio},
		Reserved:          placement.Reserved{CPUs: cfg.ReservedHostCPUs, MemoryMB: cfg.ReservedHostMemMB, DiskMB: cfg.ReservedHostDiskMB},
		HypervisorVersion: hvVersion,
	}, n.api, n.place, usage, mgr.NovaPowerState, log)
	if err := hs.Register(ctx); err != nil {
		return nil, fmt.Errorf("register with nova: %w", err)
	}
	return hs, nil
}

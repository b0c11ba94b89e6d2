package compute

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/lxc-agent/lxc-agent/internal/conductor"
	"github.com/lxc-agent/lxc-agent/internal/metrics"
	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

func consolePath(dir string) string { return filepath.Join(dir, "console.log") }

// imageRef is the part of the Glance image dict build_and_run_instance carries.
type imageRef struct {
	ID              string         `json:"id"`
	Name            string         `json:"name"`
	DiskFormat      string         `json:"disk_format"`
	ContainerFormat string         `json:"container_format"`
	Properties      map[string]any `json:"properties"`
}

func imageUnacceptable(id, reason string) *rpc.Exception {
	return rpc.NovaException("ImageUnacceptable", 400,
		fmt.Sprintf("Image %s is unacceptable: %s", id, reason), map[string]any{"image_id": id, "reason": reason})
}

func buildAbortedException(uuid, reason string, cause error) *rpc.Exception {
	e := rpc.NovaException("BuildAbortException", 400,
		fmt.Sprintf("Build of instance %s aborted: %s", uuid, reason), map[string]any{"instance_uuid": uuid, "reason": reason})
	e.Err = cause
	return e
}

func (m *Manager) buildAndRunInstance(ctx context.Context, req *rpc.Request) (any, error) {
	inst, err := instanceArgCtx(ctx, req)
	if err != nil {
		return nil, err
	}
	log := m.logFor(req, inst.UUID)
	var img imageRef
	if _, err := req.Arg("image", &img); err != nil {
		return nil, err
	}
	if img.ID == "" {
		img.ID = inst.ImageRef
	}
	if img.ID == "" {
		return nil, imageUnacceptable("", "no image given")
	}
	reqNets, err := novaobj.DecodeNetworkRequests(req.Args["requested_networks"])
	if err != nil {
		return nil, fmt.Errorf("%w: %w", rpc.ErrMalformed, err)
	}
	if rec, ok := m.store.Get(inst.UUID); ok {
		if rec.VMState == StateActive {
			log.Info("instance already built; nothing to do")
			return nil, nil
		}
		// A build interrupted by a crash, or a retried failed one: start clean.
		log.Info("cleaning up an earlier build attempt", "vm_state", rec.VMState)
		if err := m.teardown(ctx, inst.UUID, rec.VIFs); err != nil {
			return nil, err
		}
	}
	if ok, err := m.buildStarted(ctx, req, inst, reqNets); err != nil || !ok {
		if err != nil {
			if serr := m.buildFailed(ctx, req, inst); serr != nil {
				log.Error("cannot record the failed build in nova", "error", serr)
			}
		}
		return nil, err
	}
	if m.networks != nil {
		reqNets = nil // the ports are in network_info now
	}
	start := time.Now()
	err = m.build(ctx, req, inst, img, reqNets)
	m.metrics.Build(err == nil)
	if err != nil {
		log.Error("build failed", "error", err)
		if m.reschedule(ctx, req, inst, err) {
			return nil, nil
		}
		if serr := m.buildFailed(ctx, req, inst); serr != nil {
			log.Error("cannot record the failed build in nova", "error", serr)
		}
		return nil, err
	}
	log.Info("instance built and running", "seconds", time.Since(start).Seconds())
	rec, _ := m.store.Get(inst.UUID)
	launched := time.Now()
	if rec.LaunchedAt != nil {
		launched = *rec.LaunchedAt
	}
	if err := m.buildFinished(ctx, req, inst, launched); err != nil {
		if conductor.RemoteClass(err, "InstanceNotFound", "UnexpectedDeletingTaskStateError") {
			// Deleted while building: nova-compute cleans up; terminate follows.
			log.Info("instance deleted during build; tearing down", "error", err)
			return nil, m.teardown(ctx, inst.UUID, rec.VIFs)
		}
		return nil, err
	}
	return nil, nil
}

func (m *Manager) build(ctx context.Context, req *rpc.Request, inst *novaobj.Instance, img imageRef, reqNets []novaobj.NetworkRequest) (err error) {
	dir := m.store.Dir(inst.UUID)
	var u undo
	rec := Record{
		UUID: inst.UUID, Name: inst.Name(), Hostname: hostnameFor(inst), ImageID: img.ID,
		Backend: m.drv.Name(), VMState: StateBuilding, MemoryMB: inst.MemoryMB, VCPUs: inst.VCPUs, RootGB: inst.RootGB,
		ProjectID: req.Context.ProjectID, UserID: req.Context.UserID, CreatedAt: time.Now().UTC(),
	}
	defer func() {
		if err == nil {
			return
		}
		if uerr := u.run(ctx); uerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup after failed build: %w", uerr))
		}
		rec.VMState = StateError
		rec.Fault = err.Error()
		_ = os.RemoveAll(dir)
		if perr := m.store.Put(rec); perr != nil {
			m.log.Error("cannot record build fault", "instance_uuid", inst.UUID, "error", perr)
		}
	}()
	vifs, err := m.vifsFor(inst, reqNets)
	if err != nil {
		return buildAbortedException(inst.UUID, err.Error(), err)
	}
	if img.Properties["lxc_agent_network"] == "dhcp" {
		// The image runs its own DHCP client: VIFs on subnets with DHCP
		// are left to it (MAC, MTU and the link only).
		for i := range vifs {
			if vifs[i].DHCP {
				vifs[i].Addrs, vifs[i].Gateway4, vifs[i].Gateway6, vifs[i].Routes, vifs[i].DNS = nil, "", "", nil, nil
			}
		}
	}
	rec.VIFs = vifs
	u.push(func(context.Context) error { return os.RemoveAll(dir) })
	if err := m.store.Put(rec); err != nil {
		return err
	}

	// image
	t := time.Now()
	path, hit, err := m.images.Fetch(ctx, img.ID, req.Context.AuthToken)
	if err != nil {
		return classifyImageError(img.ID, fmt.Errorf("image %s: %w", img.ID, err))
	}
	m.metrics.ImageCache(hit)
	m.metrics.BuildPhase(metrics.PhaseImage, time.Since(t))

	// rootfs
	t = time.Now()
	u.push(func(ctx context.Context) error { return m.rootfs.Release(ctx, dir) })
	rootfs, err := m.rootfs.Prepare(ctx, img.ID, path, dir)
	if err != nil {
		return classifyImageError(img.ID, fmt.Errorf("rootfs: %w", err))
	}
	m.metrics.BuildPhase(metrics.PhaseRootfs, time.Since(t))

	// network: every tap is on its bridge before the container starts.
	t = time.Now()
	nics := make([]driver.NIC, 0, len(vifs))
	for i := range vifs {
		v := &vifs[i]
		ps := v.plugSpec()
		u.push(func(ctx context.Context) error { return m.net.Unplug(ctx, ps) })
		peer, err := m.plug(ctx, ps)
		if err != nil {
			return fmt.Errorf("plug port %s: %w", v.PortID, err)
		}
		v.Peer = peer
		nic, err := v.nic()
		if err != nil {
			return err
		}
		nics = append(nics, nic)
	}
	rec.VIFs = vifs
	m.metrics.BuildPhase(metrics.PhaseNetwork, time.Since(t))

	// container
	t = time.Now()
	spec := driver.Spec{ID: inst.UUID, Hostname: rec.Hostname, InstanceDir: dir, Rootfs: rootfs,
		ConsoleLog: consolePath(dir), Init: "/sbin/init", NICs: nics, Limits: m.limitsFor(inst)}
	if inst.ID > 0 {
		spec.Name = fmt.Sprintf("instance-%08x", inst.ID) // nova's instance_name_template
	}
	spec.IDMaps = m.cfg.IDMaps
	u.push(func(ctx context.Context) error { return m.drv.Destroy(ctx, inst.UUID) })
	if err := m.drv.Create(ctx, spec); err != nil {
		return fmt.Errorf("define container: %w", err)
	}
	if err := writeGuestFiles(rootfs, rec.Hostname, vifs); err != nil {
		return err
	}
	if err := m.drv.Start(ctx, inst.UUID); err != nil {
		return fmt.Errorf("start container: %w", err)
	}
	if err := m.configureGuest(ctx, inst.UUID, vifs); err != nil {
		return err
	}
	m.metrics.BuildPhase(metrics.PhaseStart, time.Since(t))

	now := time.Now().UTC()
	rec.VMState = StateActive
	rec.LaunchedAt = &now
	return m.store.Put(rec)
}

var hostnameRE = regexp.MustCompile(`[^a-z0-9-]+`)

// hostnameFor follows nova's sanitize_hostname closely enough for a UTS name.
func hostnameFor(inst *novaobj.Instance) string {
	h := inst.Hostname
	if h == "" {
		h = inst.DisplayName
	}
	h = strings.Trim(hostnameRE.ReplaceAllString(strings.ToLower(h), "-"), "-.")
	if len(h) > 63 {
		h = h[:63]
	}
	if h == "" {
		h = "server-" + inst.UUID
	}
	return h
}

// vifsFor derives the VIFs from info_cache.network_info (nova's VIF model)
// or, without it, from requested_networks with the configured defaults.
func (m *Manager) vifsFor(inst *novaobj.Instance, reqNets []novaobj.NetworkRequest) ([]VIFRecord, error) {
	var out []VIFRecord
	if len(inst.NetworkInfo) > 0 {
		for i, v := range inst.NetworkInfo {
			kind, err := vifKind(v.Type)
			if err != nil {
				return nil, fmt.Errorf("VIF %s: %w", v.ID, err)
			}
			if v.ID == "" || v.Network.ID == "" {
				return nil, fmt.Errorf("VIF %d has no port or network id", i)
			}
			r := VIFRecord{PortID: v.ID, NetworkID: v.Network.ID, MAC: v.Address, Bridge: v.Network.Bridge,
				Tap: v.Devname, Name: fmt.Sprintf("eth%d", i), MTU: v.Network.MTU()}
			if kind == VIFKindOVS {
				// nova's os_vif_util: VIFOpenVSwitch, or VIFBridge on
				// qbr… when the port wants the hybrid plug.
				r.Kind, r.InstanceUUID = VIFKindOVS, inst.UUID
				r.Hybrid = detailTrue(v.Details, "ovs_hybrid_plug")
				r.Datapath, _ = v.Details["datapath_type"].(string)
				if r.Bridge == "" {
					r.Bridge = DefaultOVSBridge
				}
			}
			if r.Bridge == "" {
				r.Bridge = BridgeName(v.Network.ID)
			}
			if r.Tap == "" {
				r.Tap = TapName(v.ID)
			}
			if r.MTU == 0 {
				r.MTU = m.cfg.DefaultMTU
			}
			for _, sn := range v.Network.Subnets {
				if _, ok := sn.Meta["dhcp_server"]; ok {
					r.DHCP = true
				}
				pfx, err := netip.ParsePrefix(sn.CIDR)
				if err != nil && len(sn.IPs) > 0 {
					return nil, fmt.Errorf("VIF %s: subnet cidr %q: %w", v.ID, sn.CIDR, err)
				}
				for _, ip := range sn.IPs {
					a, err := netip.ParseAddr(ip.Address)
					if err != nil {
						return nil, fmt.Errorf("VIF %s: fixed ip %q: %w", v.ID, ip.Address, err)
					}
					r.Addrs = append(r.Addrs, netip.PrefixFrom(a, pfx.Bits()).String())
				}
				if len(sn.IPs) > 0 {
					for _, rt := range sn.Routes {
						if rt.Gateway == nil || rt.Gateway.Address == "" {
							continue
						}
						if _, err := netip.ParsePrefix(rt.CIDR); err != nil {
							return nil, fmt.Errorf("VIF %s: host route %q: %w", v.ID, rt.CIDR, err)
						}
						if _, err := netip.ParseAddr(rt.Gateway.Address); err != nil {
							return nil, fmt.Errorf("VIF %s: host route nexthop %q: %w", v.ID, rt.Gateway.Address, err)
						}
						r.Routes = append(r.Routes, rt.CIDR+" "+rt.Gateway.Address)
					}
					for _, d := range sn.DNS {
						if a, err := netip.ParseAddr(d.Address); err == nil && !slices.Contains(r.DNS, a.String()) {
							r.DNS = append(r.DNS, a.String())
						}
					}
				}
				if sn.Gateway != nil && sn.Gateway.Address != "" && len(sn.IPs) > 0 {
					if g, err := netip.ParseAddr(sn.Gateway.Address); err == nil {
						if g.Is4() && r.Gateway4 == "" {
							r.Gateway4 = g.String()
						} else if g.Is6() && r.Gateway6 == "" {
							r.Gateway6 = g.String()
						}
					}
				}
			}
			if r.MAC == "" {
				r.MAC = randomMAC()
			}
			out = append(out, r)
		}
		return out, nil
	}
	for i, nr := range reqNets {
		if nr.NetworkID == "" {
			return nil, fmt.Errorf("requested network %d has no network_id (Neutron ports need Neutron)", i)
		}
		port := nr.PortID
		if port == "" {
			port = uuid.NewString()
		}
		r := VIFRecord{PortID: port, NetworkID: nr.NetworkID, MAC: randomMAC(), Bridge: BridgeName(nr.NetworkID),
			Tap: TapName(port), Name: fmt.Sprintf("eth%d", i), MTU: m.cfg.DefaultMTU}
		if nr.Address != "" {
			a, err := netip.ParseAddr(nr.Address)
			if err != nil {
				return nil, fmt.Errorf("requested address %q: %w", nr.Address, err)
			}
			bits := m.cfg.DefaultPrefix
			if a.Is6() {
				bits = 64
			}
			r.Addrs = append(r.Addrs, netip.PrefixFrom(a, bits).String())
			if a.Is4() && m.cfg.DefaultGateway != "" {
				r.Gateway4 = m.cfg.DefaultGateway
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// DefaultOVSBridge is nova's [neutron] ovs_bridge, the bridge of an "ovs"
// VIF whose network names none.
const DefaultOVSBridge = "br-int"

// vifKind maps nova's VIF type to what the plugger does with it.
func vifKind(vifType string) (string, error) {
	switch vifType {
	case "", VIFKindBridge:
		return "", nil
	case VIFKindOVS:
		return VIFKindOVS, nil
	}
	return "", fmt.Errorf("type %q: %w", vifType, driver.ErrUnsupported)
}

// detailTrue reads a boolean of vif_details (a JSON bool; tolerates "true").
func detailTrue(d map[string]any, key string) bool {
	switch v := d[key].(type) {
	case bool:
		return v
	case string:
		return strings.EqualFold(v, "true")
	}
	return false
}

// HybridBridgeName is a hybrid OVS plug's per-port linux bridge:
// ("qbr" + port id)[:14], nova's and os-vif's.
func HybridBridgeName(portID string) string { return trunc("qbr"+portID, 14) }

// TapName is nova's devname: ("tap" + port id)[:14].
func TapName(portID string) string { return trunc("tap"+portID, 14) }

// BridgeName is neutron linuxbridge's bridge: ("brq" + network id)[:14].
func BridgeName(networkID string) string { return trunc("brq"+networkID, 14) }

func trunc(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// randomMAC returns a MAC in OpenStack's fa:16:3e prefix.
func randomMAC() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("fa:16:3e:%02x:%02x:%02x", b[0], b[1], b[2])
}

func (v VIFRecord) plugSpec() PlugSpec {
	return PlugSpec{PortID: v.PortID, MAC: v.MAC, Bridge: v.Bridge, Tap: v.Tap, MTU: v.MTU,
		Kind: v.Kind, Hybrid: v.Hybrid, Datapath: v.Datapath, InstanceUUID: v.InstanceUUID}
}

func (v VIFRecord) nic() (driver.NIC, error) {
	n := driver.NIC{HostDev: v.Peer, Bridge: v.Bridge, Tap: v.Tap, Name: v.Name, MAC: v.MAC, MTU: v.MTU}
	if v.Kind == VIFKindOVS {
		// For backends that make the tap: in qbr… (hybrid), else an
		// OVS port of its own.
		if v.Hybrid {
			n.Bridge = HybridBridgeName(v.PortID)
		} else {
			n.OVSInterfaceID = v.PortID
		}
	}
	for _, a := range v.Addrs {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return n, fmt.Errorf("address %q: %w", a, err)
		}
		n.Addrs = append(n.Addrs, p)
	}
	if v.Gateway4 != "" {
		g, err := netip.ParseAddr(v.Gateway4)
		if err != nil {
			return n, fmt.Errorf("gateway %q: %w", v.Gateway4, err)
		}
		n.Gateway4 = g
	}
	if v.Gateway6 != "" {
		g, err := netip.ParseAddr(v.Gateway6)
		if err != nil {
			return n, fmt.Errorf("gateway %q: %w", v.Gateway6, err)
		}
		n.Gateway6 = g
	}
	return n, nil
}

func (m *Manager) terminateInstance(ctx context.Context, req *rpc.Request) (any, error) {
	inst, err := instanceArgCtx(ctx, req)
	if err != nil {
		return nil, err
	}
	rec, _ := m.store.Get(inst.UUID)
	vifs := rec.VIFs
	// Also unplug what nova's own network_info names (derived names).
	for _, v := range inst.NetworkInfo {
		tap := v.Devname
		if tap == "" {
			tap = TapName(v.ID)
		}
		kind, _ := vifKind(v.Type)
		vifs = append(vifs, VIFRecord{PortID: v.ID, Tap: tap, Bridge: v.Network.Bridge, Kind: kind})
	}
	if err := m.teardown(ctx, inst.UUID, vifs); err != nil {
		m.logFor(req, inst.UUID).Error("terminate failed", "error", err)
		if serr := m.novaSave(ctx, req, inst, nil, map[string]any{"vm_state": StateError}); serr != nil {
			m.logFor(req, inst.UUID).Error("cannot set vm_state error", "error", serr)
		}
		return nil, err
	}
	m.logFor(req, inst.UUID).Info("instance terminated")
	return nil, m.deleted(ctx, req, inst)
}

// teardown removes everything an instance has on this host. Every step is
// idempotent, so it is safe on a half-built or already removed instance.
func (m *Manager) teardown(ctx context.Context, id string, vifs []VIFRecord) error {
	var errs []error
	if err := m.drv.Destroy(ctx, id); err != nil {
		errs = append(errs, fmt.Errorf("destroy container: %w", err))
	}
	seen := map[string]bool{}
	for _, v := range vifs {
		if v.Tap == "" || seen[v.Tap] {
			continue
		}
		seen[v.Tap] = true
		if err := m.net.Unplug(ctx, v.plugSpec()); err != nil {
			errs = append(errs, fmt.Errorf("unplug %s: %w", v.Tap, err))
		}
	}
	dir := m.store.Dir(id)
	if err := m.rootfs.Release(ctx, dir); err != nil {
		errs = append(errs, fmt.Errorf("release rootfs: %w", err))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return m.store.Forget(id)
}

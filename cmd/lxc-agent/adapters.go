package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/lxc-agent/lxc-agent/internal/compute"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/netplug"
	"github.com/lxc-agent/lxc-agent/pkg/rootfs"
	"github.com/lxc-agent/lxc-agent/pkg/snapshot"
)

// imageErr wraps image errors in the classes the compute manager turns into
// nova's ImageNotFound / ImageUnacceptable.
func imageErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rootfs.ErrImageTooLarge), errors.Is(err, rootfs.ErrCacheFull):
		return fmt.Errorf("%w: %w", compute.ErrNoCapacity, err)
	case errors.Is(err, rootfs.ErrImageNotFound):
		return fmt.Errorf("%w: %w", compute.ErrImageNotFound, err)
	case errors.Is(err, rootfs.ErrUnsupportedImage), errors.Is(err, rootfs.ErrChecksumMismatch),
		errors.Is(err, rootfs.ErrInvalidImage), errors.Is(err, rootfs.ErrUnsafeImage):
		return fmt.Errorf("%w: %w", compute.ErrImageUnacceptable, err)
	}
	return err
}

// capturer adapts pkg/snapshot to the compute manager.
type capturer struct{}

func (capturer) Capture(ctx context.Context, format compute.SnapshotFormat, root string, w io.Writer) error {
	// An unprivileged instance's files are owned by host ids: the image
	// gets the container's (rootfs.InstanceIDMap).
	maps, err := rootfs.InstanceIDMap(filepath.Dir(root))
	if err != nil {
		return err
	}
	switch {
	case format == compute.SnapshotRaw && len(maps) > 0:
		return snapshot.WriteExt4Unshifted(ctx, root, filepath.Dir(root), w, maps)
	case format == compute.SnapshotRaw:
		return snapshot.WriteExt4(ctx, root, filepath.Dir(root), w)
	case len(maps) > 0:
		_, err = snapshot.WriteTarUnshifted(ctx, root, w, maps)
	default:
		_, err = snapshot.WriteTar(ctx, root, w)
	}
	return err
}

// glanceUploader stores snapshots in Glance.
type glanceUploader struct{ g snapshot.Glance }

func (u glanceUploader) Upload(ctx context.Context, token, imageID, diskFormat, containerFormat string, props map[string]string, body io.Reader) error {
	err := u.g.Upload(ctx, token, imageID, snapshot.UploadMeta{DiskFormat: diskFormat, ContainerFormat: containerFormat, Properties: props}, body)
	if errors.Is(err, snapshot.ErrImageNotQueued) {
		return fmt.Errorf("%w: %w", compute.ErrImageUnacceptable, err)
	}
	return err
}

// localUploader stores snapshots in the local image directory.
type localUploader struct{ l snapshot.LocalDir }

func (u localUploader) Upload(ctx context.Context, _, imageID, _, _ string, _ map[string]string, body io.Reader) error {
	return u.l.Upload(ctx, imageID, body)
}

// imageStore adapts the rootfs cache to the compute manager.
type imageStore struct{ c *rootfs.Cache }

func (s imageStore) Fetch(ctx context.Context, id, token string) (string, bool, error) {
	path, _, hit, err := s.c.Fetch(ctx, id, token)
	return path, hit, imageErr(err)
}

// rootfsMounter adapts the rootfs Mounter to the compute manager, which
// names the image by id: its metadata (disk and container format, image
// properties such as os_root_partition) is read back from the cache's
// <id>.json, written by the Fetch that returned imagePath.
type rootfsMounter struct {
	m        *rootfs.Mounter
	cacheDir string
}

func (r rootfsMounter) Prepare(ctx context.Context, imageID, imagePath, instanceDir string) (string, error) {
	meta, err := rootfs.ReadMeta(r.cacheDir, imageID)
	if err != nil {
		return "", imageErr(fmt.Errorf("prepare rootfs of %s: %w", instanceDir, err))
	}
	path, err := r.m.Prepare(ctx, meta, imagePath, instanceDir)
	return path, imageErr(err)
}

func (r rootfsMounter) Release(ctx context.Context, instanceDir string) error {
	return r.m.Release(ctx, instanceDir)
}

// plugger adapts netplug to the compute manager.
type plugger struct{ p *netplug.Plugger }

func (p plugger) Plug(ctx context.Context, v compute.PlugSpec) (string, error) {
	vif := netVIF(v)
	if v.NoTap {
		if vif.OVS == nil {
			return "", p.p.EnsureBridge(ctx, v.Bridge, v.MTU)
		}
		_, err := p.p.PrepareOVS(ctx, vif)
		return "", err
	}
	return p.p.Plug(ctx, vif)
}

// netVIF is the netplug VIF of a compute PlugSpec.
func netVIF(v compute.PlugSpec) netplug.VIF {
	vif := netplug.VIF{ID: v.PortID, MAC: v.MAC, Bridge: v.Bridge, DevName: v.Tap, MTU: v.MTU}
	if v.Kind == compute.VIFKindOVS {
		vif.OVS = &netplug.OVSPort{InstanceUUID: v.InstanceUUID, Hybrid: v.Hybrid, DatapathType: v.Datapath}
	}
	return vif
}

func (p plugger) EnsureBridge(ctx context.Context, bridge string, mtu int) error {
	return p.p.EnsureBridge(ctx, bridge, mtu)
}

func (p plugger) Unplug(ctx context.Context, v compute.PlugSpec) error {
	return p.p.Unplug(ctx, netVIF(v))
}

func (p plugger) Wired(ctx context.Context, v compute.PlugSpec) (bool, bool, error) {
	if _, err := os.Stat("/sys/class/net/" + v.Tap); err != nil {
		return false, false, nil
	}
	in, err := p.p.Attached(ctx, netVIF(v))
	return true, in, err
}

func (p plugger) GuestRoutes(ctx context.Context, pid int, dev string, routes []compute.GuestRoute) error {
	rs := make([]netplug.Route, 0, len(routes))
	for _, r := range routes {
		rs = append(rs, netplug.Route{Dst: r.Dst, Via: r.Via})
	}
	return netplug.AddRoutes(ctx, pid, dev, rs)
}

func nicStats(p *netplug.Plugger) compute.NICCounters {
	return func(ctx context.Context, tap string) (driver.NICStats, error) {
		rxB, rxP, rxE, rxD, txB, txP, txE, txD, err := p.Stats(ctx, tap)
		return driver.NICStats{RxOctets: rxB, RxPackets: rxP, RxErrors: rxE, RxDrop: rxD,
			TxOctets: txB, TxPackets: txP, TxErrors: txE, TxDrop: txD}, err
	}
}

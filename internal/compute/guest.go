package compute

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// writeGuestFiles puts what the container's own boot cannot know into its
// root filesystem before it starts: /etc/hostname, and /etc/resolv.conf
// with the name servers of the VIFs' subnets (only when there are some:
// an image's own resolv.conf stays otherwise). Both are written through
// an os.Root of the rootfs, so a symlink in the image cannot send the
// write outside it.
func writeGuestFiles(rootfs, hostname string, vifs []VIFRecord) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return fmt.Errorf("guest files: %w", err)
	}
	defer root.Close()
	if err := root.MkdirAll("etc", 0o755); err != nil {
		return fmt.Errorf("guest files: %w", err)
	}
	write := func(name, content string) error {
		// Replace a symlink rather than follow it.
		if fi, err := root.Lstat(name); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			if err := root.Remove(name); err != nil {
				return err
			}
		}
		_, statErr := root.Lstat(name)
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		if _, err := f.WriteString(content); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if errors.Is(statErr, fs.ErrNotExist) {
			// A new file gets the owner of /etc: the image's root, which
			// is a host id other than 0 for an unprivileged container.
			return chownLike(root, name, "etc")
		}
		return nil
	}
	if hostname != "" {
		if err := write("etc/hostname", hostname+"\n"); err != nil {
			return fmt.Errorf("guest /etc/hostname: %w", err)
		}
	}
	var ns []string
	for _, v := range vifs {
		for _, d := range v.DNS {
			if !slices.Contains(ns, d) {
				ns = append(ns, d)
			}
		}
	}
	if len(ns) > 0 {
		var b strings.Builder
		b.WriteString("# written by lxc-agent from the Neutron subnets' dns_nameservers\n")
		for _, d := range ns {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		if err := write("etc/resolv.conf", b.String()); err != nil {
			return fmt.Errorf("guest /etc/resolv.conf: %w", err)
		}
	}
	return nil
}

// configureGuest adds the VIFs' host routes inside the running container
// (they live in its network namespace, so every start needs them again).
func (m *Manager) configureGuest(ctx context.Context, id string, vifs []VIFRecord) error {
	var pid int
	for _, v := range vifs {
		if len(v.Routes) == 0 {
			continue
		}
		if pid == 0 {
			info, err := m.drv.Info(ctx, id)
			if err != nil {
				return err
			}
			if pid = info.InitPID; pid <= 0 {
				return errors.New("guest routes: the container has no init process")
			}
		}
		var rs []GuestRoute
		for _, r := range v.Routes {
			dst, via, _ := strings.Cut(r, " ")
			p, err := netip.ParsePrefix(dst)
			if err != nil {
				return fmt.Errorf("route %q: %w", r, err)
			}
			a, err := netip.ParseAddr(via)
			if err != nil {
				return fmt.Errorf("route %q: %w", r, err)
			}
			rs = append(rs, GuestRoute{Dst: p, Via: a})
		}
		if err := m.net.GuestRoutes(ctx, pid, v.Name, rs); err != nil {
			return fmt.Errorf("routes of %s: %w", v.Name, err)
		}
	}
	return nil
}

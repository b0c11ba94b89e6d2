package netplug

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
)

// disableIPv6 turns IPv6 off on dev, like os-vif and neutron do on their
// bridges. Best effort: a kernel without IPv6 has no such file.
func (p *Plugger) disableIPv6(log *slog.Logger, dev string) {
	path := filepath.Join("/proc/sys/net/ipv6/conf", dev, "disable_ipv6")
	err := p.inNetns(func() error { return writeSysctl(path, "1") })
	switch {
	case errors.Is(err, fs.ErrNotExist):
		log.Warn("cannot disable ipv6: no sysctl", "path", path)
	case err != nil:
		log.Warn("cannot disable ipv6", "path", path, "err", err)
	}
}

func writeSysctl(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// inNetns runs fn in the Plugger's namespace. /proc/sys/net shows the
// namespace of the thread that opens it, so for a Plugger from New fn runs
// right here, and for one from NewInNamespace on a locked thread switched
// into the namespace. fn must not start goroutines.
func (p *Plugger) inNetns(fn func() error) error {
	if !p.ns.IsOpen() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Unlocked only once back in the original namespace; otherwise the
		// thread dies with this goroutine.
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(p.ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

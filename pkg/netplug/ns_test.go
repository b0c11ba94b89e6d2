package netplug

import (
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// requireRoot skips tests that need CAP_NET_ADMIN.
func requireRoot(tb testing.TB) {
	tb.Helper()
	if !canUnshareNet() {
		tb.Skip("needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) to create network namespaces")
	}
}

// canUnshareNet probes once whether this process may create namespaces.
var canUnshareNet = sync.OnceValue(func() bool {
	ns, err := newDetachedNS()
	if err != nil {
		return false
	}
	ns.Close()
	return true
})

// enterTestNS moves the calling goroutine, locked to its thread, into a new
// network namespace until the test ends. Netlink's package functions and
// /proc/sys/net then act on that namespace only. Must be called from the
// test's own goroutine (cleanups run there too).
func enterTestNS(t *testing.T) netns.NsHandle {
	t.Helper()
	requireRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get netns: %v", err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.Set(orig); err != nil {
			orig.Close()
			// The thread stays locked and dies with the test goroutine.
			t.Errorf("restore netns: %v", err)
			return
		}
		orig.Close()
		runtime.UnlockOSThread()
	})
	return ns
}

// newDetachedNS creates a network namespace without entering it.
func newDetachedNS() (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			c <- result{netns.None(), err}
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			runtime.UnlockOSThread()
			c <- result{netns.None(), err}
			return
		}
		if err := netns.Set(orig); err != nil {
			ns.Close()
			// Leave the thread locked: it dies with this goroutine.
			c <- result{netns.None(), fmt.Errorf("restore netns: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		c <- result{ns, nil}
	}()
	r := <-c
	return r.ns, r.err
}

// detachedNS is newDetachedNS closed at the end of the test, with a netlink
// handle in it for checks.
func detachedNS(tb testing.TB) (netns.NsHandle, *netlink.Handle) {
	tb.Helper()
	requireRoot(tb)
	ns, err := newDetachedNS()
	if err != nil {
		tb.Fatalf("new netns: %v", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		tb.Fatalf("netlink handle: %v", err)
	}
	tb.Cleanup(func() {
		h.Close()
		ns.Close()
	})
	return ns, h
}

// runInNS runs fn on a thread switched into ns.
func runInNS(ns netns.NsHandle, fn func() error) error {
	p := &Plugger{ns: ns}
	return p.inNetns(fn)
}

// nsPlugger is NewInNamespace closed at the end of the test.
func nsPlugger(tb testing.TB, ns netns.NsHandle) *Plugger {
	tb.Helper()
	p, err := NewInNamespace(nil, ns)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := p.Close(); err != nil {
			tb.Error(err)
		}
	})
	return p
}

package netplug

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// dumpAttempts bounds the retries of a netlink dump that the kernel
// interrupted because the table changed meanwhile.
const dumpAttempts = 5

// retryDump calls fn until it does not fail with netlink.ErrDumpInterrupted,
// at most dumpAttempts times. A dump still interrupted on the last attempt
// gives an error that wraps netlink.ErrDumpInterrupted.
func retryDump[T any](fn func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range dumpAttempts {
		v, err = fn()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	var zero T
	return zero, fmt.Errorf("%d attempts: %w", dumpAttempts, err)
}

// linkList is h.LinkList retried on interrupted dumps.
func linkList(h *netlink.Handle) ([]netlink.Link, error) {
	return retryDump(h.LinkList)
}

// linkByName is p.h.LinkByName, retried on interrupted dumps (the kernel
// needs a dump when it cannot look names up directly).
func (p *Plugger) linkByName(name string) (netlink.Link, error) {
	return retryDump(func() (netlink.Link, error) { return p.h.LinkByName(name) })
}

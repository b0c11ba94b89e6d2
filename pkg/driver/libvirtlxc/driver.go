package libvirtlxc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"libvirt.org/go/libvirt"

	"github.com/lxc-agent/lxc-agent/internal/keymutex"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

const (
	// DefaultURI is nova's default connection for virt_type=lxc.
	DefaultURI = "lxc:///"

	// killWait bounds the wait for shutoff after a destroy.
	killWait = 30 * time.Second
	// destroyRetries: how often a destroy that libvirt reports as "Some
	// processes refused to die" is tried again (nova: 3 attempts).
	destroyRetries = 3
	destroyBackoff = time.Second
	// initWait bounds the wait for the container's init after Create.
	initWait = 10 * time.Second
)

// Driver runs instances as libvirt LXC domains. Its methods are safe for
// concurrent use; operations on the same instance are serialized.
type Driver struct {
	uri string
	log *slog.Logger

	// connMu guards conn: operations hold it for reading while they use
	// the connection; a reconnect holds it for writing.
	connMu sync.RWMutex
	conn   *libvirt.Connect
	closed bool

	locks keymutex.Map // serializes operations on one instance

	consoles *consoles
}

var (
	_ driver.Driver      = (*Driver)(nil)
	_ driver.StatsReader = (*Driver)(nil)
	_ driver.Pauser      = (*Driver)(nil)
	_ driver.LimitSetter = (*Driver)(nil)
)

// New connects to libvirt at uri ("" = DefaultURI, nova's lxc:///) and
// returns the driver. The connection is re-established when it breaks (a
// libvirtd restart). Consoles of domains already running are logged again
// from now on.
func New(uri string, logger *slog.Logger) (*Driver, error) {
	if uri == "" {
		uri = DefaultURI
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	d := &Driver{
		uri: uri,
		log: logger.With("component", "libvirtlxc"),
	}
	d.consoles = newConsoles(d.log)
	var libVer, hvVer uint32
	err := d.do(context.Background(), func(c *libvirt.Connect) error {
		typ, err := c.GetType()
		if err != nil {
			return err
		}
		if typ != "LXC" {
			return fmt.Errorf("%s is a %s connection, not LXC", uri, typ)
		}
		libVer, _ = c.GetLibVersion()
		hvVer, _ = c.GetVersion()
		return nil
	})
	if err != nil {
		d.Close()
		return nil, fail("connect", uri, err)
	}
	d.log.Info("libvirt-lxc driver ready", "uri", uri, "libvirt", versionString(libVer), "hypervisor", versionString(hvVer))
	d.adoptConsoles()
	return d, nil
}

func versionString(v uint32) string {
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000)
}

// Name implements driver.Driver.
func (d *Driver) Name() string { return "libvirt-lxc" }

// PlugsNICs reports that libvirt creates each NIC's tap in its bridge.
func (d *Driver) PlugsNICs() bool { return true }

// URI is the libvirt connection URI.
func (d *Driver) URI() string { return d.uri }

// Close stops the console loggers and closes the connection. Containers
// keep running.
func (d *Driver) Close() error {
	d.consoles.stopAll()
	d.connMu.Lock()
	defer d.connMu.Unlock()
	d.closed = true
	if d.conn != nil {
		_, err := d.conn.Close()
		d.conn = nil
		return err
	}
	return nil
}

// acquire returns the connection with connMu held for reading.
func (d *Driver) acquire() (*libvirt.Connect, error) {
	for {
		d.connMu.RLock()
		if d.closed {
			d.connMu.RUnlock()
			return nil, fmt.Errorf("driver closed: %w", driver.ErrUnavailable)
		}
		if c := d.conn; c != nil {
			return c, nil
		}
		d.connMu.RUnlock()

		d.connMu.Lock()
		if d.conn == nil && !d.closed {
			c, err := libvirt.NewConnect(d.uri)
			if err != nil {
				d.connMu.Unlock()
				if e, ok := asVirt(err); ok {
					return nil, fmt.Errorf("connect %s: %w (%w)", d.uri, virtError{e}, driver.ErrUnavailable)
				}
				return nil, fmt.Errorf("connect %s: %w (%w)", d.uri, err, driver.ErrUnavailable)
			}
			d.conn = c
		}
		d.connMu.Unlock()
	}
}

// reset drops c if it is still the current connection.
func (d *Driver) reset(c *libvirt.Connect) {
	d.connMu.Lock()
	defer d.connMu.Unlock()
	if d.conn == c {
		_, _ = c.Close()
		d.conn = nil
	}
}

// do runs fn with the connection. When fn fails because the connection is
// dead (libvirtd restarted), it reconnects and runs fn once more: every
// operation starts by looking its domain up again, so a second run is
// safe.
func (d *Driver) do(ctx context.Context, fn func(c *libvirt.Connect) error) error {
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		c, err := d.acquire()
		if err != nil {
			return err
		}
		err = fn(c)
		dead := false
		if err != nil {
			if _, ok := asVirt(err); ok {
				alive, aerr := c.IsAlive()
				dead = aerr != nil || !alive
			}
		}
		d.connMu.RUnlock()
		if !dead {
			return err
		}
		d.reset(c)
		if attempt > 0 {
			return fmt.Errorf("%w (%w)", err, driver.ErrUnavailable)
		}
		d.log.Warn("libvirt connection lost, reconnecting", "uri", d.uri, "err", lv(err))
	}
}

// onDomain runs fn on the agent's domain of instance id (see lookup) over
// the connection, as do does.
func (d *Driver) onDomain(ctx context.Context, op, id string, fn func(dom *libvirt.Domain) error) error {
	return d.do(ctx, func(c *libvirt.Connect) error {
		dom, err := d.lookup(c, op, id)
		if err != nil {
			return err
		}
		defer dom.Free()
		return fn(dom)
	})
}

// lock serializes operations on one instance inside this process.
func (d *Driver) lock(id string) func() { return d.locks.Lock(id) }

// canonicalID returns id in libvirt's uuid spelling, false if id is no uuid.
func canonicalID(id string) (string, bool) {
	u, err := uuid.Parse(id)
	if err != nil {
		return "", false
	}
	return u.String(), true
}

// managed reports whether dom carries the lxc-agent marker.
func managed(dom *libvirt.Domain) (bool, error) {
	_, err := dom.GetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, MetadataNS, libvirt.DOMAIN_AFFECT_CURRENT)
	if err == nil {
		return true, nil
	}
	if isCode(err, libvirt.ERR_NO_DOMAIN_METADATA) {
		return false, nil
	}
	return false, err
}

// lookup finds the domain of instance id; ErrNotFound if there is none or
// it is not one of ours (no marker). The caller must Free the domain.
func (d *Driver) lookup(c *libvirt.Connect, op, id string) (*libvirt.Domain, error) {
	cid, ok := canonicalID(id)
	if !ok {
		return nil, fmt.Errorf("not a uuid: %w", driver.ErrNotFound)
	}
	dom, err := c.LookupDomainByUUIDString(cid)
	if err != nil {
		return nil, err
	}
	ok, err = managed(dom)
	if err != nil {
		dom.Free()
		return nil, err
	}
	if !ok {
		dom.Free()
		d.log.Warn("ignoring a domain without the lxc-agent marker", "op", op, "id", id)
		return nil, fmt.Errorf("domain is not managed by lxc-agent: %w", driver.ErrNotFound)
	}
	return dom, nil
}

// Create implements driver.Driver: it defines the domain (DefineXML).
// ErrAlreadyExists if a domain with the uuid or the
// name exists, ours or not.
func (d *Driver) Create(ctx context.Context, spec driver.Spec) error {
	if err := checkSpec(spec); err != nil {
		return fmt.Errorf("libvirt-lxc: create: %w", err)
	}
	id, name := spec.ID, DomainName(spec)
	defer d.lock(id)()
	if spec.Pids > 0 {
		d.log.Warn("libvirt-lxc has no pids limit: ignored", "id", id, "pids", spec.Pids)
	}
	if spec.IOWeight > 0 {
		d.log.Warn("block I/O weight is not applied by this backend: ignored", "id", id, "io_weight", spec.IOWeight)
	}
	err := d.do(ctx, func(c *libvirt.Connect) error {
		if dom, err := c.LookupDomainByUUIDString(id); err == nil {
			dom.Free()
			return fmt.Errorf("uuid in use: %w", driver.ErrAlreadyExists)
		} else if !isCode(err, libvirt.ERR_NO_DOMAIN) {
			return err
		}
		if dom, err := c.LookupDomainByName(name); err == nil {
			other, _ := dom.GetUUIDString()
			dom.Free()
			return fmt.Errorf("domain name %s in use by %s: %w", name, other, driver.ErrAlreadyExists)
		} else if !isCode(err, libvirt.ERR_NO_DOMAIN) {
			return err
		}
		var hostKiB uint64
		if spec.MemoryMB == 0 {
			ni, err := c.GetNodeInfo()
			if err != nil {
				return err
			}
			hostKiB = ni.Memory
		}
		doc, err := buildDomain(spec, hostKiB).Marshal()
		if err != nil {
			return err
		}
		// No DOMAIN_DEFINE_VALIDATE: libvirt 9.0's schema rejects <cmdline> in
		// an exe <os>, which nova writes and libvirt accepts and uses
		// (LIBVIRT_LXC_CMDLINE in init's environment).
		dom, err := c.DomainDefineXML(doc)
		if err != nil {
			return err
		}
		dom.Free()
		return nil
	})
	if err != nil {
		return fail("create", id, err)
	}
	d.log.Info("domain defined", "id", id, "name", name, "rootfs", spec.Rootfs, "nics", len(spec.NICs))
	return nil
}

// Start implements driver.Driver. It starts the domain (libvirt creates
// each NIC's veth: the tap… end in the brq… bridge, the other end as
// eth<N> in the container, with its MAC, addresses and routes), then sets
// the NICs' MTU (libvirt 9.0 ignores <mtu> for LXC), starts copying the
// console to the console log, and returns once init runs. Starting a
// running domain is not an error; a paused one is ErrInvalidState.
func (d *Driver) Start(ctx context.Context, id string) error {
	defer d.lock(id)()
	t0 := time.Now()
	var facts domainFacts
	var ctrl int
	started := false
	err := d.onDomain(ctx, "start", id, func(dom *libvirt.Domain) error {
		st, _, err := dom.GetState()
		if err != nil {
			return err
		}
		switch st {
		case libvirt.DOMAIN_RUNNING, libvirt.DOMAIN_BLOCKED:
		case libvirt.DOMAIN_SHUTOFF, libvirt.DOMAIN_CRASHED, libvirt.DOMAIN_NOSTATE:
			if name, err := dom.GetName(); err == nil {
				removePidsCgroups(name) // a previous run's, if any
			}
			if err := dom.Create(); err != nil {
				return err
			}
			started = true
		default:
			return fmt.Errorf("domain is %s: %w", stateName(st), driver.ErrInvalidState)
		}
		doc, err := dom.GetXMLDesc(0)
		if err != nil {
			return err
		}
		if facts, err = parseFacts(doc); err != nil {
			return err
		}
		pid, err := dom.GetID()
		if err != nil {
			return err
		}
		ctrl = int(pid)
		return nil
	})
	if err != nil {
		return fail("start", id, err)
	}
	err = d.afterStart(ctx, id, facts, ctrl, started)
	if err == nil && started {
		err = d.limitPids(ctx, id, ctrl, facts.Pids)
	}
	if err == nil && started && facts.Unlimited {
		// libvirt-lxc always writes <memory> as the cgroup's limit at
		// start; lift it when the spec has no memory limit.
		err = d.onDomain(ctx, "start", id, func(dom *libvirt.Domain) error {
			return dom.SetMemoryParameters(&libvirt.DomainMemoryParameters{HardLimitSet: true,
				HardLimit: libvirt.DOMAIN_MEMORY_PARAM_UNLIMITED}, libvirt.DOMAIN_AFFECT_LIVE)
		})
	}
	if errors.Is(err, errNoLocalInit) {
		// Either libvirtd is not on this host, or init is gone already.
		var st libvirt.DomainState
		serr := d.onDomain(ctx, "start", id, func(dom *libvirt.Domain) error {
			st, _, err = dom.GetState()
			return err
		})
		switch {
		case serr != nil:
			err = serr
		case !active(st):
			return fmt.Errorf("libvirt-lxc: start %s: the container stopped right after start (see libvirt's log of domain %s)", id, facts.Name)
		default:
			d.log.Warn("start: init is not a local process (remote libvirtd?); MTU and console log not handled", "id", id, "controller_pid", ctrl)
			err = nil
		}
	}
	if err != nil {
		if started {
			d.log.Warn("start: setup after start failed, destroying", "id", id, "err", err)
			_ = d.onDomain(context.WithoutCancel(ctx), "start", id, func(dom *libvirt.Domain) error {
				return d.destroyDomain(ctx, dom, id)
			})
		}
		return fmt.Errorf("libvirt-lxc: start %s: %w", id, err)
	}
	if started {
		d.log.Info("domain started", "id", id, "name", facts.Name, "controller_pid", ctrl, "took", time.Since(t0))
	}
	return nil
}

// limitPids puts the just started domain under its pids limit: libvirt's
// LXC driver can neither start a domain paused nor limit pids, so the
// domain is frozen, its processes moved into a pids cgroup, and thawed
// (milliseconds after init started).
func (d *Driver) limitPids(ctx context.Context, id string, ctrl, limit int) (err error) {
	initPID, err := findInit(ctrl)
	if err != nil {
		return err
	}
	freeze := func(f func(*libvirt.Domain) error) error { return d.onDomain(ctx, "start", id, f) }
	// Without a limit the container still gets its pids cgroup (for
	// pids.current), and nothing needs to be frozen for that.
	if limit > 0 {
		if err := freeze((*libvirt.Domain).Suspend); err != nil {
			return fmt.Errorf("freeze for the pids limit: %w", err)
		}
		defer func() {
			if rerr := freeze((*libvirt.Domain).Resume); rerr != nil && err == nil {
				err = fmt.Errorf("thaw after the pids limit: %w", rerr)
			}
		}()
	}
	dir, err := pidsCgroup(initPID, limit)
	if err != nil {
		return fmt.Errorf("pids limit %d: %w", limit, err)
	}
	d.log.Debug("pids limit applied", "id", id, "limit", limit, "cgroup", dir)
	return nil
}

// errNoLocalInit: the domain's controller is not a local process.
var errNoLocalInit = errors.New("no local libvirt_lxc controller")

// afterStart finds init, applies the NICs' MTU and logs the console.
func (d *Driver) afterStart(ctx context.Context, id string, f domainFacts, ctrl int, started bool) error {
	initPID, err := waitInit(ctx, ctrl, initWait)
	if err != nil {
		if !isLocal(ctrl) {
			return errNoLocalInit
		}
		return err
	}
	if started {
		if err := setMTUs(initPID, f.NICs); err != nil {
			return err
		}
	}
	if f.ConsoleLog != "" && f.ConsolePty != "" {
		if started {
			d.consoles.start(id, f.ConsolePty, f.ConsoleLog)
		} else {
			d.consoles.ensure(id, f.ConsolePty, f.ConsoleLog)
		}
	}
	return nil
}

// Stop implements driver.Driver. With a timeout it sends init the halt
// signal, as liblxc does (SIGPWR; SIGRTMIN+3 when init blocks that one,
// i.e. systemd), and waits for the domain to shut off; afterwards, or with
// a zero timeout, it destroys the domain. libvirt's own shutdown is only
// used when init is not a local process: its signal mode sends SIGTERM,
// which busybox init takes for "reboot", and libvirt then restarts the
// domain. Stopping a stopped domain is not an error.
func (d *Driver) Stop(ctx context.Context, id string, timeout time.Duration) error {
	defer d.lock(id)()
	err := d.onDomain(ctx, "stop", id, func(dom *libvirt.Domain) error {
		if err := d.stop(ctx, dom, id, timeout); err != nil {
			return err
		}
		if name, err := dom.GetName(); err == nil {
			removePidsCgroups(name)
		}
		return nil
	})
	return fail("stop", id, err)
}

func (d *Driver) stop(ctx context.Context, dom *libvirt.Domain, id string, timeout time.Duration) error {
	st, _, err := dom.GetState()
	if err != nil {
		return err
	}
	if !active(st) {
		return nil
	}
	t0 := time.Now()
	if timeout > 0 && st == libvirt.DOMAIN_PAUSED {
		// A frozen init cannot handle the halt signal.
		if err := dom.Resume(); err != nil {
			d.log.Warn("stop: resume before shutdown failed, destroying", "id", id, "err", err)
			timeout = 0
		}
	}
	if timeout > 0 {
		done, err := d.shutdown(ctx, dom, id, timeout)
		if done {
			d.log.Info("domain shut down", "id", id, "took", time.Since(t0))
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for shutdown: %w", ctx.Err())
		}
		if err != nil {
			d.log.Warn("stop: halt failed, destroying", "id", id, "err", err)
		} else {
			d.log.Info("domain did not shut down in time, destroying", "id", id, "timeout", timeout)
		}
	}
	if err := d.destroyDomain(ctx, dom, id); err != nil {
		return err
	}
	d.log.Info("domain stopped", "id", id, "took", time.Since(t0))
	return nil
}

// shutdown asks init to halt and waits up to timeout for the domain to
// shut off. The request is repeated (after 0.5 s, 1 s, 2 s, … at most every
// 5 s): an init that has not yet set up its signal handling (right after
// start) does not get a signal the kernel drops for a pid namespace's init
// without a handler; an init that is already halting ignores it (busybox
// resets its handlers first, systemd has the job queued).
func (d *Driver) shutdown(ctx context.Context, dom *libvirt.Domain, id string, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for next := 500 * time.Millisecond; ; next = min(2*next, 5*time.Second) {
		if err := d.halt(ctx, dom, id); err != nil {
			if st, _, serr := dom.GetState(); serr == nil && !active(st) {
				return true, nil
			}
			return false, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		wctx, cancel := context.WithTimeout(ctx, min(next, left))
		err := waitInactive(wctx, dom)
		cancel()
		if err == nil {
			return true, nil
		}
		if ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return false, err
		}
		if time.Until(deadline) <= 0 {
			return false, nil
		}
	}
}

// halt asks the domain's init to shut down.
func (d *Driver) halt(ctx context.Context, dom *libvirt.Domain, id string) error {
	ctrl, err := dom.GetID()
	if err == nil && isLocal(int(ctrl)) {
		pid, err := waitInit(ctx, int(ctrl), time.Second)
		if err == nil {
			sig := haltSignal(pid)
			d.log.Debug("sending init the halt signal", "id", id, "pid", pid, "signal", sig)
			if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("signal init %d: %w", pid, err)
			}
			return nil
		}
	}
	// Not a local container: libvirt's default (initctl, then SIGTERM).
	return dom.ShutdownFlags(libvirt.DOMAIN_SHUTDOWN_DEFAULT)
}

// destroyDomain kills a running domain and waits for shutoff, retrying
// libvirt's "Some processes refused to die" as nova does. When init is a
// local process it gets SIGKILL first, which ends the container at once
// (its pid namespace dies with it) and libvirt tears the domain down as
// for any exit of init; libvirt's destroy alone sends SIGTERM to every
// process and SIGKILL only 1.6 s later (virCgroupKillPainfully), and
// busybox init takes that SIGTERM for a reboot.
func (d *Driver) destroyDomain(ctx context.Context, dom *libvirt.Domain, id string) error {
	if st, _, err := dom.GetState(); err == nil && st != libvirt.DOMAIN_PAUSED {
		if ctrl, err := dom.GetID(); err == nil {
			if pid, err := findInit(int(ctrl)); err == nil {
				if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
					wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
					err := waitInactive(wctx, dom)
					cancel()
					if err == nil {
						return nil
					}
				}
			}
		}
	}
	var err error
	for i := 0; i < destroyRetries; i++ {
		err = dom.Destroy()
		if err == nil || isCode(err, libvirt.ERR_NO_DOMAIN) {
			err = nil
			break
		}
		if isCode(err, libvirt.ERR_OPERATION_INVALID) { // not running (any more)
			if st, _, serr := dom.GetState(); serr == nil && !active(st) {
				err = nil
				break
			}
		}
		if !refusedToDie(err) {
			return err
		}
		d.log.Warn("destroy: processes refused to die, retrying", "id", id, "attempt", i+1, "err", err)
		if serr := sleepCtx(ctx, destroyBackoff); serr != nil {
			return err
		}
	}
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killWait)
	defer cancel()
	if err := waitInactive(wctx, dom); err != nil {
		return fmt.Errorf("still running after destroy: %w", lv(err))
	}
	return nil
}

// waitInactive polls the domain state until it is inactive or ctx ends.
func waitInactive(ctx context.Context, dom *libvirt.Domain) error {
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		st, _, err := dom.GetState()
		if isCode(err, libvirt.ERR_NO_DOMAIN) || (err == nil && !active(st)) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := sleepCtx(ctx, delay); err != nil {
			return err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Destroy implements driver.Driver: destroy (if running) and undefine.
// nil when the domain does not exist; a domain without the lxc-agent
// marker is left alone (and nil returned: it is not the agent's).
func (d *Driver) Destroy(ctx context.Context, id string) error {
	if _, ok := canonicalID(id); !ok {
		return nil
	}
	defer d.lock(id)()
	defer d.consoles.stop(id)
	err := d.onDomain(ctx, "destroy", id, func(dom *libvirt.Domain) error {
		st, _, err := dom.GetState()
		if err != nil {
			return err
		}
		if active(st) {
			if err := d.destroyDomain(ctx, dom, id); err != nil {
				return err
			}
		}
		if name, err := dom.GetName(); err == nil {
			removePidsCgroups(name)
		}
		persistent, err := dom.IsPersistent()
		if err != nil {
			return err
		}
		if persistent {
			if err := dom.Undefine(); err != nil && !isCode(err, libvirt.ERR_NO_DOMAIN) {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, driver.ErrNotFound) || isCode(err, libvirt.ERR_NO_DOMAIN) {
		return nil
	}
	if err != nil {
		return fail("destroy", id, err)
	}
	d.log.Info("domain destroyed", "id", id)
	return nil
}

// Info implements driver.Driver. InitPID is set when init is a local
// process (always, for lxc:///).
func (d *Driver) Info(ctx context.Context, id string) (driver.Info, error) {
	var info driver.Info
	err := d.onDomain(ctx, "info", id, func(dom *libvirt.Domain) error {
		st, _, err := dom.GetState()
		if err != nil {
			return err
		}
		info = driver.Info{ID: id, State: powerState(st)}
		if active(st) {
			if ctrl, err := dom.GetID(); err == nil {
				if pid, err := findInit(int(ctrl)); err == nil {
					info.InitPID = pid
				}
			}
		}
		return nil
	})
	if err != nil {
		return driver.Info{}, fail("info", id, err)
	}
	return info, nil
}

// active reports whether a domain in state st has processes.
func active(st libvirt.DomainState) bool {
	switch st {
	case libvirt.DOMAIN_SHUTOFF, libvirt.DOMAIN_CRASHED, libvirt.DOMAIN_NOSTATE:
		return false
	}
	return true
}

func powerState(st libvirt.DomainState) driver.PowerState {
	switch st {
	case libvirt.DOMAIN_RUNNING, libvirt.DOMAIN_BLOCKED, libvirt.DOMAIN_SHUTDOWN:
		return driver.Running
	case libvirt.DOMAIN_PAUSED:
		return driver.Paused
	case libvirt.DOMAIN_SHUTOFF:
		return driver.Shutdown
	case libvirt.DOMAIN_CRASHED:
		return driver.Crashed
	case libvirt.DOMAIN_PMSUSPENDED:
		return driver.Suspended
	default:
		return driver.NoState
	}
}

func stateName(st libvirt.DomainState) string {
	switch st {
	case libvirt.DOMAIN_NOSTATE:
		return "nostate"
	case libvirt.DOMAIN_RUNNING:
		return "running"
	case libvirt.DOMAIN_BLOCKED:
		return "blocked"
	case libvirt.DOMAIN_PAUSED:
		return "paused"
	case libvirt.DOMAIN_SHUTDOWN:
		return "shutting down"
	case libvirt.DOMAIN_SHUTOFF:
		return "shut off"
	case libvirt.DOMAIN_CRASHED:
		return "crashed"
	case libvirt.DOMAIN_PMSUSPENDED:
		return "pmsuspended"
	}
	return fmt.Sprintf("state %d", st)
}

// List implements driver.Driver: the uuids of every domain carrying the
// lxc-agent marker; other domains on the same libvirtd are not listed.
func (d *Driver) List(ctx context.Context) ([]string, error) {
	ids := []string{}
	err := d.do(ctx, func(c *libvirt.Connect) error {
		ids = ids[:0]
		doms, err := c.ListAllDomains(0)
		if err != nil {
			return err
		}
		defer func() {
			for i := range doms {
				doms[i].Free()
			}
		}()
		for i := range doms {
			ok, err := managed(&doms[i])
			if isCode(err, libvirt.ERR_NO_DOMAIN) {
				continue // undefined meanwhile
			}
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			u, err := doms[i].GetUUIDString()
			if err != nil {
				if isCode(err, libvirt.ERR_NO_DOMAIN) {
					continue
				}
				return err
			}
			ids = append(ids, u)
		}
		return nil
	})
	if err != nil {
		return nil, fail("list", d.uri, err)
	}
	return ids, nil
}

// Pause implements driver.Pauser (virDomainSuspend: the cgroup freezer).
// Pausing a paused domain is not an error; ErrInvalidState if it is not
// running.
func (d *Driver) Pause(ctx context.Context, id string) error {
	defer d.lock(id)()
	err := d.onDomain(ctx, "pause", id, func(dom *libvirt.Domain) error {
		st, _, err := dom.GetState()
		if err != nil {
			return err
		}
		switch st {
		case libvirt.DOMAIN_PAUSED:
			return nil
		case libvirt.DOMAIN_RUNNING, libvirt.DOMAIN_BLOCKED:
			return dom.Suspend()
		default:
			return fmt.Errorf("domain is %s: %w", stateName(st), driver.ErrInvalidState)
		}
	})
	return fail("pause", id, err)
}

// Unpause implements driver.Pauser (virDomainResume). Unpausing a running
// domain is not an error; ErrInvalidState if it is shut off.
func (d *Driver) Unpause(ctx context.Context, id string) error {
	defer d.lock(id)()
	err := d.onDomain(ctx, "unpause", id, func(dom *libvirt.Domain) error {
		st, _, err := dom.GetState()
		if err != nil {
			return err
		}
		switch st {
		case libvirt.DOMAIN_RUNNING, libvirt.DOMAIN_BLOCKED:
			return nil
		case libvirt.DOMAIN_PAUSED:
			return dom.Resume()
		default:
			return fmt.Errorf("domain is %s: %w", stateName(st), driver.ErrInvalidState)
		}
	})
	return fail("unpause", id, err)
}

// DomainName returns the libvirt name of instance id's domain.
func (d *Driver) DomainName(ctx context.Context, id string) (string, error) {
	var name string
	err := d.onDomain(ctx, "name", id, func(dom *libvirt.Domain) error {
		var err error
		name, err = dom.GetName()
		return err
	})
	return name, fail("name", id, err)
}

// adoptConsoles starts logging the consoles of running managed domains
// (after an agent restart).
func (d *Driver) adoptConsoles() {
	ctx := context.Background()
	ids, err := d.List(ctx)
	if err != nil {
		d.log.Warn("adopt consoles: list", "err", err)
		return
	}
	for _, id := range ids {
		_ = d.onDomain(ctx, "adopt", id, func(dom *libvirt.Domain) error {
			if st, _, err := dom.GetState(); err != nil || !active(st) {
				return err
			}
			doc, err := dom.GetXMLDesc(0)
			if err != nil {
				return err
			}
			f, err := parseFacts(doc)
			if err != nil {
				return err
			}
			if f.ConsoleLog != "" && f.ConsolePty != "" {
				d.consoles.ensure(id, f.ConsolePty, f.ConsoleLog)
			}
			return nil
		})
	}
}

// HypervisorVersion is libvirt's virConnectGetVersion, which nova records as
// the compute node's hypervisor_version.
func (d *Driver) HypervisorVersion(ctx context.Context) (int, error) {
	var v uint32
	err := d.do(ctx, func(c *libvirt.Connect) error {
		var err error
		v, err = c.GetVersion()
		return err
	})
	return int(v), err
}

// Package fake is a stateful in-memory driver.Driver for tests of the
// compute manager and the RPC layer. It moves containers through the same
// states and returns the same error classes as the golxc backend, records
// every call, lets tests inject errors, and writes to Spec.ConsoleLog on
// Start and Stop so callers can test console output.
package fake

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// Console lines the fake appends to Spec.ConsoleLog.
const (
	ConsoleStart  = "fake: init started\n"
	ConsoleHalt   = "fake: init halted\n"
	ConsoleKilled = "fake: init killed\n"
)

// fakeMemoryBytes is the memory use reported for a running container
// (capped at its limit).
const fakeMemoryBytes = 16 << 20

// Driver is the fake backend. The zero value is not usable; call New.
type Driver struct {
	mu         sync.Mutex
	containers map[string]*container
	calls      []string
	inject     map[string][]error
	nextPID    int
	now        func() time.Time
}

type container struct {
	spec    driver.Spec
	state   driver.PowerState
	pid     int
	started time.Time
	cpu     time.Duration // CPU time of earlier runs
}

var (
	_ driver.Driver      = (*Driver)(nil)
	_ driver.StatsReader = (*Driver)(nil)
	_ driver.Pauser      = (*Driver)(nil)
	_ driver.LimitSetter = (*Driver)(nil)
)

// New returns an empty fake driver.
func New() *Driver {
	return &Driver{
		containers: map[string]*container{},
		inject:     map[string][]error{},
		nextPID:    1000,
		now:        time.Now,
	}
}

// Name implements driver.Driver.
func (d *Driver) Name() string { return "fake" }

// Calls returns the calls made so far, in order, as "<Method> <id>"
// ("List" has no id), e.g. "Create 6f1c…", "Stop 6f1c…".
func (d *Driver) Calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.calls)
}

// ResetCalls forgets the recorded calls.
func (d *Driver) ResetCalls() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = nil
}

// InjectError makes the next call of method ("Create", "Start", "Stop",
// "Destroy", "Info", "List", "Stats", "Pause", "Unpause", "SetLimits") fail
// with err,
// without changing any state. Several injections for one method are used
// in order, one per call.
func (d *Driver) InjectError(method string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.inject[method] = append(d.inject[method], err)
}

// begin records a call and returns an injected error, if any. d.mu is held.
func (d *Driver) begin(method, id string) error {
	if id == "" && method == "List" {
		d.calls = append(d.calls, method)
	} else {
		d.calls = append(d.calls, method+" "+id)
	}
	if q := d.inject[method]; len(q) > 0 {
		err := q[0]
		if len(q) == 1 {
			delete(d.inject, method)
		} else {
			d.inject[method] = q[1:]
		}
		return err
	}
	return nil
}

func (d *Driver) get(op, id string) (*container, error) {
	c := d.containers[id]
	if c == nil {
		return nil, fmt.Errorf("fake: %s %s: %w", op, id, driver.ErrNotFound)
	}
	return c, nil
}

// Create implements driver.Driver.
func (d *Driver) Create(ctx context.Context, spec driver.Spec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin("Create", spec.ID); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if spec.ID == "" || strings.ContainsAny(spec.ID, "/\x00") || spec.ID == "." || spec.ID == ".." {
		return fmt.Errorf("fake: create: invalid container id %q", spec.ID)
	}
	if _, ok := d.containers[spec.ID]; ok {
		return fmt.Errorf("fake: create %s: %w", spec.ID, driver.ErrAlreadyExists)
	}
	spec.NICs = slices.Clone(spec.NICs)
	d.containers[spec.ID] = &container{spec: spec, state: driver.Shutdown}
	return nil
}

// Start implements driver.Driver. Starting a running container is not an
// error; starting a paused one is ErrInvalidState. It appends ConsoleStart
// to Spec.ConsoleLog.
func (d *Driver) Start(ctx context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin("Start", id); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := d.get("start", id)
	if err != nil {
		return err
	}
	switch c.state {
	case driver.Running:
		return nil
	case driver.Paused:
		return fmt.Errorf("fake: start %s: container is paused: %w", id, driver.ErrInvalidState)
	}
	if err := appendConsole(c.spec.ConsoleLog, ConsoleStart); err != nil {
		return fmt.Errorf("fake: start %s: console log: %w", id, err)
	}
	d.nextPID++
	c.state, c.pid, c.started = driver.Running, d.nextPID, d.now()
	return nil
}

// Stop implements driver.Driver. A positive timeout is a clean halt
// (ConsoleHalt in the console log), zero a kill (ConsoleKilled).
func (d *Driver) Stop(ctx context.Context, id string, timeout time.Duration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin("Stop", id); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := d.get("stop", id)
	if err != nil {
		return err
	}
	d.halt(c, timeout)
	return nil
}

// halt stops c if it runs. d.mu is held.
func (d *Driver) halt(c *container, timeout time.Duration) {
	if c.state != driver.Running && c.state != driver.Paused {
		c.state, c.pid = driver.Shutdown, 0
		return
	}
	line := ConsoleKilled
	if timeout > 0 { // a paused container is thawed first, like golxc does
		line = ConsoleHalt
	}
	_ = appendConsole(c.spec.ConsoleLog, line)
	c.cpu += d.cpuSince(c)
	c.state, c.pid, c.started = driver.Shutdown, 0, time.Time{}
}

// Destroy implements driver.Driver; nil if the container does not exist.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin("Destroy", id); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if c := d.containers[id]; c != nil {
		d.halt(c, 0)
		delete(d.containers, id)
	}
	return nil
}

// Info implements driver.Driver.
func (d *Driver) Info(ctx context.Context, id string) (driver.Info, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin("Info", id); err != nil {
		return driver.Info{}, err
	}
	c, err := d.get("info", id)
	if err != nil {
		return driver.Info{}, err
	}
	return driver.Info{ID: id, State: c.state, InitPID: c.pid}, nil
}

// List implements driver.Driver; the ids are sorted.
func (d *Driver) List(ctx context.Context) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin("List", ""); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(d.containers))
	for id := range d.containers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, nil
}

// Stats implements driver.StatsReader with plausible figures: CPU time and
// uptime grow with wall time while running, memory use is 16 MiB capped at
// the limit. A stopped container reports only its limit.
func (d *Driver) Stats(ctx context.Context, id string) (driver.Stats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin("Stats", id); err != nil {
		return driver.Stats{}, err
	}
	c, err := d.get("stats", id)
	if err != nil {
		return driver.Stats{}, err
	}
	limit := uint64(c.spec.MemoryMB) << 20
	s := driver.Stats{MemoryLimit: limit}
	if c.state != driver.Running && c.state != driver.Paused {
		return s, nil
	}
	s.MemoryBytes = fakeMemoryBytes
	if limit > 0 && s.MemoryBytes > limit {
		s.MemoryBytes = limit
	}
	s.CPUTime = c.cpu + d.cpuSince(c)
	s.UptimeSeconds = int64(d.now().Sub(c.started).Seconds())
	for _, n := range c.spec.NICs {
		s.NICs = append(s.NICs, driver.NICStats{MAC: n.MAC})
	}
	return s, nil
}

// cpuSince is the fake CPU time of the current run: 1% of its wall time.
func (d *Driver) cpuSince(c *container) time.Duration {
	if c.started.IsZero() {
		return 0
	}
	return d.now().Sub(c.started) / 100
}

// Pause freezes a running container (Paused); nil if already paused,
// ErrInvalidState if it is not running.
func (d *Driver) Pause(ctx context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin("Pause", id); err != nil {
		return err
	}
	c, err := d.get("pause", id)
	if err != nil {
		return err
	}
	switch c.state {
	case driver.Paused:
		return nil
	case driver.Running:
		c.state = driver.Paused
		return nil
	}
	return fmt.Errorf("fake: pause %s: container is %s: %w", id, c.state, driver.ErrInvalidState)
}

// Unpause thaws a paused container; nil if it runs, ErrInvalidState if it
// is stopped.
func (d *Driver) Unpause(ctx context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin("Unpause", id); err != nil {
		return err
	}
	c, err := d.get("unpause", id)
	if err != nil {
		return err
	}
	switch c.state {
	case driver.Running:
		return nil
	case driver.Paused:
		c.state = driver.Running
		return nil
	}
	return fmt.Errorf("fake: unpause %s: container is %s: %w", id, c.state, driver.ErrInvalidState)
}

// SetLimits implements driver.LimitSetter: l replaces the container's
// limits, running or not (Spec and Stats report them). Negative values
// are refused like golxc refuses them.
func (d *Driver) SetLimits(ctx context.Context, id string, l driver.Limits) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin("SetLimits", id); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := d.get("set limits", id)
	if err != nil {
		return err
	}
	if l.MemoryMB < 0 || l.SwapMB < 0 || l.VCPUs < 0 || l.CPUShares < 0 || l.CPUQuotaUS < -1 ||
		l.CPUPeriodUS < 0 || l.Pids < 0 || l.IOWeight < 0 {
		return fmt.Errorf("fake: set limits %s: negative limit in %+v", id, l)
	}
	c.spec.Limits = l
	return nil
}

// Limits returns a container's current limits (ErrNotFound if it does not
// exist). It is not recorded as a call.
func (d *Driver) Limits(id string) (driver.Limits, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.get("limits", id)
	if err != nil {
		return driver.Limits{}, err
	}
	return c.spec.Limits, nil
}

// SetState forces a container's power state, e.g. driver.Crashed or
// driver.Shutdown to simulate init dying behind the agent's back. It is not
// recorded as a call. ErrNotFound if the container does not exist.
func (d *Driver) SetState(id string, s driver.PowerState) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.get("set state", id)
	if err != nil {
		return err
	}
	switch s {
	case driver.Running, driver.Paused:
		if c.pid == 0 {
			d.nextPID++
			c.pid, c.started = d.nextPID, d.now()
		}
	default:
		c.cpu += d.cpuSince(c)
		c.pid, c.started = 0, time.Time{}
	}
	c.state = s
	return nil
}

// Spec returns the spec a container was created with (ErrNotFound if it
// does not exist), like golxc.Driver.Spec. It is not recorded as a call.
func (d *Driver) Spec(id string) (driver.Spec, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.get("spec", id)
	if err != nil {
		return driver.Spec{}, err
	}
	s := c.spec
	s.NICs = slices.Clone(s.NICs)
	return s, nil
}

func appendConsole(path, line string) error {
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

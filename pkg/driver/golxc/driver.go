package golxc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	lxc "github.com/lxc/go-lxc"

	"github.com/lxc-agent/lxc-agent/internal/keymutex"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/idmap"
)

const (
	configName = "config"
	specName   = "spec.json"
	logName    = "lxc.log"

	// defaultStartTimeout bounds Start when the context has no deadline.
	defaultStartTimeout = 2 * time.Minute
	// killWait bounds the wait for STOPPED after a kill.
	killWait = 30 * time.Second
	// helperWaitDelay: how long to wait for the helper's stderr to close
	// after it exited (the daemonized monitor must not hold it open).
	helperWaitDelay = 5 * time.Second
	// cgroupCleanPatience bounds the retries of leftover cgroup removal.
	cgroupCleanPatience = 2 * time.Second
	// maxHelperStderr caps the helper output kept for an error message.
	maxHelperStderr = 8 << 10
)

// Driver runs containers with liblxc. Its methods are safe for concurrent
// use; operations on the same container are serialized.
type Driver struct {
	lxcpath string
	helper  HelperCommand
	log     *slog.Logger
	host    hostInfo

	locks keymutex.Map // serializes operations on one container
}

var (
	_ driver.Driver      = (*Driver)(nil)
	_ driver.StatsReader = (*Driver)(nil)
)

// New returns a driver keeping its containers under lxcpath (created if
// missing). helper runs the forklxc start helper (see SelfExecHelper).
func New(lxcpath string, helper HelperCommand, logger *slog.Logger) (*Driver, error) {
	if !filepath.IsAbs(lxcpath) {
		return nil, fmt.Errorf("golxc: lxcpath %q is not absolute", lxcpath)
	}
	if helper == nil {
		return nil, errors.New("golxc: no helper command")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// Searchable by others: liblxc resolves the lxcpath as the root of an
	// unprivileged container (whose host uid is not root).
	if err := os.MkdirAll(lxcpath, 0o711); err != nil {
		return nil, fmt.Errorf("golxc: %w", err)
	}
	d := &Driver{
		lxcpath: filepath.Clean(lxcpath),
		helper:  helper,
		log:     logger.With("component", "golxc"),
		host:    detectHost(),
	}
	d.log.Info("lxc driver ready", "lxcpath", d.lxcpath, "liblxc", lxc.Version(),
		"apparmor", d.host.AppArmor, "cgroup", fmt.Sprintf("%+v", d.host.Cgroup))
	return d, nil
}

// Name implements driver.Driver.
func (d *Driver) Name() string { return "lxc" }

// LXCPath is the directory holding the containers.
func (d *Driver) LXCPath() string { return d.lxcpath }

func (d *Driver) dir(id string) string     { return filepath.Join(d.lxcpath, id) }
func (d *Driver) logPath(id string) string { return filepath.Join(d.lxcpath, id, logName) }

// ConfigPath is the liblxc configuration file of container id.
func (d *Driver) ConfigPath(id string) string { return filepath.Join(d.lxcpath, id, configName) }

// lock serializes operations on one container inside this process.
func (d *Driver) lock(id string) func() { return d.locks.Lock(id) }

// open returns a fresh liblxc handle for a defined container; the caller
// must Release it. ErrNotFound if the container is not defined.
func (d *Driver) open(id string) (*lxc.Container, error) {
	if !validID(id) {
		return nil, fmt.Errorf("golxc: container %q: %w", id, driver.ErrNotFound)
	}
	c, err := d.handle(id)
	if err != nil {
		return nil, err
	}
	if !c.Defined() {
		c.Release()
		return nil, fmt.Errorf("golxc: container %s: %w", id, driver.ErrNotFound)
	}
	return c, nil
}

func (d *Driver) handle(id string) (*lxc.Container, error) {
	c, err := lxc.NewContainer(id, d.lxcpath)
	if err != nil {
		// liblxc also fails here when the config file does not parse.
		return nil, fmt.Errorf("golxc: open container %s: %w%s", id, err,
			logSuffix(errorLinesSince(d.logPath(id), 0)))
	}
	return c, nil
}

// fail wraps a liblxc error with the operation, the container and the
// ERROR lines liblxc logged since mark, mapping go-lxc's "not defined" and
// "not running" to the driver's error classes.
func (d *Driver) fail(op, id string, err error, mark int64) error {
	msg := err.Error()
	var class error
	switch {
	case errors.Is(err, lxc.ErrNotDefined) || strings.Contains(msg, lxc.ErrNotDefined.Error()):
		class = driver.ErrNotFound
	case errors.Is(err, lxc.ErrNotRunning) || strings.Contains(msg, lxc.ErrNotRunning.Error()),
		errors.Is(err, lxc.ErrAlreadyRunning) || strings.Contains(msg, lxc.ErrAlreadyRunning.Error()),
		errors.Is(err, lxc.ErrNotFrozen), errors.Is(err, lxc.ErrAlreadyFrozen):
		class = driver.ErrInvalidState
	}
	suffix := logSuffix(errorLinesSince(d.logPath(id), mark))
	if class != nil && !errors.Is(err, class) {
		return fmt.Errorf("golxc: %s %s: %w (%w)%s", op, id, err, class, suffix)
	}
	return fmt.Errorf("golxc: %s %s: %w%s", op, id, err, suffix)
}

// Create implements driver.Driver.
func (d *Driver) Create(ctx context.Context, spec driver.Spec) (err error) {
	if err := checkSpec(spec); err != nil {
		return fmt.Errorf("golxc: create: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("golxc: create %s: %w", spec.ID, err)
	}
	if len(spec.IDMaps) > 0 {
		if err := CheckIDMaps(spec.IDMaps); err != nil {
			return fmt.Errorf("golxc: create %s: %w", spec.ID, err)
		}
		if err := checkRootfsOwner(spec); err != nil {
			return fmt.Errorf("golxc: create %s: %w", spec.ID, err)
		}
		if err := checkPaths(d.lxcpath, spec); err != nil {
			return fmt.Errorf("golxc: create %s: %w", spec.ID, err)
		}
	}
	id := spec.ID
	defer d.lock(id)()

	cfgPath := d.ConfigPath(id)
	if _, err := os.Lstat(cfgPath); err == nil {
		return fmt.Errorf("golxc: create %s: %w", id, driver.ErrAlreadyExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("golxc: create %s: %w", id, err)
	}
	dir := d.dir(id)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("golxc: create %s: %w", id, err)
	}
	defer func() {
		if err != nil {
			if rerr := removeOneDev(dir); rerr != nil {
				d.log.Warn("create: cleanup failed", "id", id, "err", rerr)
			}
		}
	}()

	c, err := d.handle(id)
	if err != nil {
		return err
	}
	defer c.Release()
	mark := logMark(d.logPath(id))
	for _, it := range buildConfig(spec, d.host, d.logPath(id)) {
		if err := c.SetConfigItem(it.Key, it.Value); err != nil {
			return d.fail("create", id, fmt.Errorf("set %s = %q: %w", it.Key, it.Value, err), mark)
		}
	}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return fmt.Errorf("golxc: create %s: %w", id, err)
	}
	if err := writeFileAtomic(filepath.Join(dir, specName), append(b, '\n'), 0o640); err != nil {
		return fmt.Errorf("golxc: create %s: %w", id, err)
	}
	// The config file comes last: its existence is what "defined" means.
	if err := c.SaveConfigFile(cfgPath); err != nil {
		return d.fail("create", id, fmt.Errorf("save %s: %w", cfgPath, err), mark)
	}
	_, notes := limitSettings(spec.Limits, d.host.Cgroup)
	for _, n := range notes {
		d.log.Warn("limit not applied", "id", id, "note", n)
	}
	d.log.Info("container defined", "id", id, "rootfs", spec.Rootfs, "nics", len(spec.NICs),
		"limits", fmt.Sprintf("%+v", spec.Limits), "idmap", idmap.Key(spec.IDMaps))
	return nil
}

// Start implements driver.Driver. It runs the forklxc helper, which starts
// the container daemonized, and returns once init runs. Starting a running
// container is not an error; starting a frozen one is ErrInvalidState.
func (d *Driver) Start(ctx context.Context, id string) (err error) {
	defer d.lock(id)()
	c, err := d.open(id)
	if err != nil {
		return err
	}
	defer c.Release()
	switch st := c.State(); st {
	case lxc.RUNNING:
		return nil
	case lxc.STOPPED:
	default:
		return fmt.Errorf("golxc: start %s: container is %s: %w", id, st, driver.ErrInvalidState)
	}

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}
	// An unprivileged container needs its rootfs prepared for its map
	// (after a reboot, the caller mounts it again before Start).
	if spec, err := d.Spec(id); err == nil && len(spec.IDMaps) > 0 {
		if err := checkRootfsOwner(spec); err != nil {
			return fmt.Errorf("golxc: start %s: %w", id, err)
		}
	}
	mark := logMark(d.logPath(id))
	t0 := time.Now()
	defer func() {
		if err != nil && c.State() == lxc.STOPPED {
			// A failed start can leave liblxc's cgroups behind.
			d.cleanCgroups(context.WithoutCancel(ctx), id, cgroupCleanPatience)
		}
	}()
	cmd := d.helper(ctx, HelperSubcommand, "start", id, d.lxcpath, d.ConfigPath(id))
	cmd.Stdin = nil
	cmd.Stdout = nil
	stderr := &capBuffer{max: maxHelperStderr}
	cmd.Stderr = stderr
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	cmd.SysProcAttr.Setpgid = false // exclusive with Setsid
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = helperWaitDelay
	}
	if err := cmd.Run(); err != nil {
		out := strings.TrimSpace(stderr.String())
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		if out != "" {
			// The helper already attached the liblxc log lines.
			return fmt.Errorf("golxc: start %s: helper: %w: %s", id, err, out)
		}
		return d.fail("start", id, fmt.Errorf("helper: %w", err), mark)
	}

	// The helper returned once liblxc reported RUNNING; confirm from here.
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		st := c.State()
		if st == lxc.RUNNING {
			if pid := c.InitPid(); pid > 0 {
				d.log.Info("container started", "id", id, "init_pid", pid, "took", time.Since(t0))
				return nil
			}
		}
		if st == lxc.STOPPED {
			// liblxc reported RUNNING to the helper: init died since.
			return d.fail("start", id, errors.New("container stopped right after start"), mark)
		}
		if err := sleepCtx(ctx, delay); err != nil {
			return d.fail("start", id, fmt.Errorf("waiting for init: state %s: %w", st, err), mark)
		}
	}
}

// Stop implements driver.Driver: it sends the halt signal (liblxc picks
// lxc.signal.halt, SIGRTMIN+3 for systemd, else SIGPWR), waits up to
// timeout for the container to stop and kills it afterwards.
func (d *Driver) Stop(ctx context.Context, id string, timeout time.Duration) error {
	defer d.lock(id)()
	c, err := d.open(id)
	if err != nil {
		return err
	}
	defer c.Release()
	return d.stop(ctx, c, id, timeout)
}

func (d *Driver) stop(ctx context.Context, c *lxc.Container, id string, timeout time.Duration) error {
	mark := logMark(d.logPath(id))
	st := c.State()
	if st == lxc.STOPPED {
		return nil
	}
	t0 := time.Now()
	if timeout > 0 && (st == lxc.FROZEN || st == lxc.FREEZING) {
		// A frozen init cannot handle the halt signal.
		if err := c.Unfreeze(); err != nil {
			d.log.Warn("stop: thaw before shutdown failed, killing", "id", id, "err", err)
			timeout = 0
		}
	}
	if timeout > 0 {
		// Shutdown(0) only sends the signal; waiting here honours ctx.
		if err := c.Shutdown(0); err != nil {
			if c.State() == lxc.STOPPED {
				return nil
			}
			d.log.Warn("stop: halt signal failed, killing", "id", id, "err", err)
		} else {
			wctx, cancel := context.WithTimeout(ctx, timeout)
			st, err := waitState(wctx, c, lxc.STOPPED)
			cancel()
			if err == nil {
				d.log.Info("container shut down", "id", id, "took", time.Since(t0))
				return nil
			}
			if ctx.Err() != nil {
				return d.fail("stop", id, fmt.Errorf("waiting for shutdown (state %s): %w", st, ctx.Err()), mark)
			}
			d.log.Info("container did not halt in time, killing", "id", id, "timeout", timeout)
		}
	}
	if err := c.Stop(); err != nil && c.State() != lxc.STOPPED {
		return d.fail("stop", id, err, mark)
	}
	wctx, cancel := context.WithTimeout(ctx, killWait)
	defer cancel()
	if st, err := waitState(wctx, c, lxc.STOPPED); err != nil {
		return d.fail("stop", id, fmt.Errorf("still %s after kill: %w", st, err), mark)
	}
	d.log.Info("container stopped", "id", id, "took", time.Since(t0))
	return nil
}

// waitState polls the container's state until it is want or ctx is done.
func waitState(ctx context.Context, c *lxc.Container, want lxc.State) (lxc.State, error) {
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		st := c.State()
		if st == want {
			return st, nil
		}
		if err := sleepCtx(ctx, delay); err != nil {
			return st, err
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

// Destroy implements driver.Driver. It kills the container if it runs and
// removes <lxcpath>/<id>. It never touches Spec.Rootfs: liblxc's own destroy
// would delete a dir: rootfs recursively (and with lxc.rootfs.managed = 0 it
// does nothing at all), so the directory is removed here, without crossing
// into other file systems.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	if !validID(id) {
		return nil
	}
	defer d.lock(id)()
	dir := d.dir(id)
	if _, err := os.Lstat(d.ConfigPath(id)); errors.Is(err, fs.ErrNotExist) {
		// Not defined; clear what a failed Create may have left.
		if err := removeOneDev(dir); err != nil {
			return fmt.Errorf("golxc: destroy %s: %w", id, err)
		}
		d.cleanCgroups(ctx, id, 0)
		return nil
	}
	c, err := d.handle(id)
	if err != nil {
		return err
	}
	defer c.Release()
	if err := d.stop(ctx, c, id, 0); err != nil {
		return err
	}
	// Removing the config first undefines the container even if the rest
	// of the removal fails.
	if err := os.Remove(d.ConfigPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("golxc: destroy %s: %w", id, err)
	}
	if err := removeOneDev(dir); err != nil {
		return fmt.Errorf("golxc: destroy %s: %w", id, err)
	}
	d.cleanCgroups(ctx, id, cgroupCleanPatience)
	d.log.Info("container destroyed", "id", id)
	return nil
}

// Info implements driver.Driver.
func (d *Driver) Info(ctx context.Context, id string) (driver.Info, error) {
	c, err := d.open(id)
	if err != nil {
		return driver.Info{}, err
	}
	defer c.Release()
	st := c.State()
	info := driver.Info{ID: id, State: powerState(st)}
	if st != lxc.STOPPED {
		if pid := c.InitPid(); pid > 0 {
			info.InitPID = pid
		}
	}
	return info, nil
}

func powerState(s lxc.State) driver.PowerState {
	switch s {
	case lxc.RUNNING:
		return driver.Running
	case lxc.FROZEN:
		return driver.Paused
	case lxc.STOPPED:
		return driver.Shutdown
	default:
		return driver.NoState
	}
}

// List implements driver.Driver: every container defined under lxcpath.
func (d *Driver) List(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	names := lxc.DefinedContainerNames(d.lxcpath)
	if names == nil {
		names = []string{}
	}
	return names, nil
}

// Pause freezes a running container (power state Paused). Pausing a paused
// container is not an error; ErrInvalidState if it is not running.
func (d *Driver) Pause(ctx context.Context, id string) error {
	defer d.lock(id)()
	c, err := d.open(id)
	if err != nil {
		return err
	}
	defer c.Release()
	mark := logMark(d.logPath(id))
	switch st := c.State(); st {
	case lxc.FROZEN:
		return nil
	case lxc.RUNNING:
	default:
		return fmt.Errorf("golxc: pause %s: container is %s: %w", id, st, driver.ErrInvalidState)
	}
	if err := c.Freeze(); err != nil && !errors.Is(err, lxc.ErrAlreadyFrozen) {
		return d.fail("pause", id, err, mark)
	}
	return nil
}

// Unpause thaws a frozen container. Unpausing a running container is not
// an error; ErrInvalidState if it is stopped.
func (d *Driver) Unpause(ctx context.Context, id string) error {
	defer d.lock(id)()
	c, err := d.open(id)
	if err != nil {
		return err
	}
	defer c.Release()
	mark := logMark(d.logPath(id))
	switch st := c.State(); st {
	case lxc.RUNNING:
		return nil
	case lxc.FROZEN, lxc.FREEZING, lxc.THAWED:
	default:
		return fmt.Errorf("golxc: unpause %s: container is %s: %w", id, st, driver.ErrInvalidState)
	}
	if err := c.Unfreeze(); err != nil && !errors.Is(err, lxc.ErrNotFrozen) {
		return d.fail("unpause", id, err, mark)
	}
	return nil
}

// Spec returns the spec container id was created from.
func (d *Driver) Spec(id string) (driver.Spec, error) {
	var s driver.Spec
	if !validID(id) {
		return s, fmt.Errorf("golxc: container %q: %w", id, driver.ErrNotFound)
	}
	b, err := os.ReadFile(filepath.Join(d.dir(id), specName))
	if errors.Is(err, fs.ErrNotExist) {
		return s, fmt.Errorf("golxc: container %s: %w", id, driver.ErrNotFound)
	}
	if err != nil {
		return s, fmt.Errorf("golxc: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("golxc: %s: %w", specName, err)
	}
	return s, nil
}

// capBuffer keeps the first max bytes written to it.
type capBuffer struct {
	bytes.Buffer
	max int
}

func (b *capBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// removeOneDev removes path recursively like os.RemoveAll, but never
// descends into a directory on another device (a mount point) and never
// follows symlinks; it fails if such a mount point keeps path from being
// removed. A missing path is not an error.
func removeOneDev(path string) error {
	var root syscall.Stat_t
	if err := syscall.Lstat(path, &root); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil
		}
		return &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	return removeDev(path, root.Dev)
}

func removeDev(path string, dev uint64) error {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil
		}
		return &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	if st.Dev != dev {
		return fmt.Errorf("remove %s: is on another file system (a mount point?), not descending", path)
	}
	ents, err := os.ReadDir(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var first error
	for _, e := range ents {
		if err := removeDev(filepath.Join(path, e.Name()), dev); err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return first
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// HypervisorVersion is liblxc's version as one number, the way libvirt
// encodes versions (major*1000000 + minor*1000 + micro): 5.0.2 is 5000002.
func (d *Driver) HypervisorVersion(context.Context) (int, error) {
	return encodeVersion(lxc.Version()), nil
}

func encodeVersion(v string) int {
	var parts [3]int
	for i, p := range strings.SplitN(strings.Fields(v + " ")[0], ".", 3) {
		n := 0
		for _, c := range p {
			if c < '0' || c > '9' {
				break
			}
			n = n*10 + int(c-'0')
		}
		parts[i] = n
	}
	return parts[0]*1000000 + parts[1]*1000 + parts[2]
}

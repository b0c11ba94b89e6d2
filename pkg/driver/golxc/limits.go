package golxc

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	lxc "github.com/lxc/go-lxc"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

var _ driver.LimitSetter = (*Driver)(nil)

// SetLimits implements driver.LimitSetter. l replaces the container's
// limits as a whole (zero fields go back to the kernel defaults). A running
// or paused container gets them at once, through liblxc's set_cgroup_item
// (the monitor hands out the container's cgroup in whichever hierarchy
// carries the controller, v1 or v2); its config and spec.json are then
// rewritten so the next start applies them before init runs. If a live
// change fails (e.g. a memory limit below what the container uses and
// cannot reclaim), the previous limits are written back, best effort, and
// nothing is persisted.
func (d *Driver) SetLimits(ctx context.Context, id string, l driver.Limits) error {
	if err := checkLimits(l); err != nil {
		return fmt.Errorf("golxc: set limits %s: %w", id, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("golxc: set limits %s: %w", id, err)
	}
	defer d.lock(id)()
	c, err := d.open(id)
	if err != nil {
		return err
	}
	defer c.Release()
	spec, err := d.Spec(id)
	if err != nil {
		return err
	}
	old := spec.Limits
	spec.Limits = l
	mark := logMark(d.logPath(id))
	_, notes := limitSettings(l, d.host.Cgroup)
	for _, n := range notes {
		d.log.Warn("limit not applied", "id", id, "note", n)
	}
	if c.State() != lxc.STOPPED {
		if err := d.applyLimits(c, l); err != nil {
			if rerr := d.applyLimits(c, old); rerr != nil {
				d.log.Error("set limits: restoring the previous limits failed", "id", id, "err", rerr)
			}
			return d.fail("set limits", id, err, mark)
		}
	}
	if err := d.writeConfig(id, spec); err != nil {
		return err
	}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return fmt.Errorf("golxc: set limits %s: %w", id, err)
	}
	if err := writeFileAtomic(filepath.Join(d.dir(id), specName), append(b, '\n'), 0o640); err != nil {
		return fmt.Errorf("golxc: set limits %s: %w", id, err)
	}
	d.log.Info("limits set", "id", id, "limits", fmt.Sprintf("%+v", l), "live", c.State() != lxc.STOPPED)
	return nil
}

// applyLimits writes every managed cgroup file of a running container.
func (d *Driver) applyLimits(c *lxc.Container, l driver.Limits) error {
	set, _ := limitSettings(l, d.host.Cgroup)
	set = orderMemsw(set, func() (string, bool) {
		v := c.CgroupItem("memory.limit_in_bytes")
		return strings.TrimSpace(strings.Join(v, "")), len(v) > 0
	})
	for _, s := range set {
		if err := c.SetCgroupItem(s.File, s.Value); err != nil {
			cur := strings.TrimSpace(strings.Join(c.CgroupItem(s.File), " "))
			return fmt.Errorf("set cgroup %s = %s (now %q): %w", s.File, s.Value, cur, err)
		}
	}
	return nil
}

// orderMemsw reorders the v1 memory settings of a live change. The kernel
// keeps memory.limit_in_bytes <= memory.memsw.limit_in_bytes at every
// step, so memsw goes first when its new value is not below the current
// memory limit (raising), last otherwise (lowering). current reads the
// current memory.limit_in_bytes.
func orderMemsw(set []cgSetting, current func() (string, bool)) []cgSetting {
	mem, sw := -1, -1
	for i, s := range set {
		switch s.File {
		case "memory.limit_in_bytes":
			mem = i
		case "memory.memsw.limit_in_bytes":
			sw = i
		}
	}
	if mem < 0 || sw < 0 {
		return set
	}
	cur, ok := current()
	if !ok || v1Bytes(set[sw].Value) < v1Bytes(cur) {
		return set // memory first (creation order)
	}
	out := make([]cgSetting, 0, len(set))
	for i, s := range set {
		switch i {
		case mem:
			out = append(out, set[sw], s)
		case sw:
		default:
			out = append(out, s)
		}
	}
	return out
}

// v1Bytes parses a v1 memory limit; -1 and unparsable values are
// "unlimited".
func v1Bytes(s string) uint64 {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return math.MaxUint64
	}
	return n
}

// writeConfig renders spec into the container's config file, replacing it
// atomically.
func (d *Driver) writeConfig(id string, spec driver.Spec) error {
	c, err := d.handle(id)
	if err != nil {
		return err
	}
	defer c.Release()
	mark := logMark(d.logPath(id))
	c.ClearConfig()
	for _, it := range buildConfig(spec, d.host, d.logPath(id)) {
		if err := c.SetConfigItem(it.Key, it.Value); err != nil {
			return d.fail("write config", id, fmt.Errorf("set %s = %q: %w", it.Key, it.Value, err), mark)
		}
	}
	tmp := d.ConfigPath(id) + ".new"
	if err := c.SaveConfigFile(tmp); err != nil {
		os.Remove(tmp)
		return d.fail("write config", id, fmt.Errorf("save %s: %w", tmp, err), mark)
	}
	if err := os.Rename(tmp, d.ConfigPath(id)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("golxc: write config %s: %w", id, err)
	}
	return nil
}

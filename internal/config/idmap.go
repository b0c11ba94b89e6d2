package config

import (
	"fmt"
	"strings"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/idmap"
)

// idmaps reads nova's [libvirt] uid_maps and gid_maps, lists of
// "guest:host:count" (nova/conf/libvirt.py), into the id maps every
// container runs with: nil when both are empty (privileged containers).
// Unlike nova, which skips malformed entries and all but the first five
// with a warning, a bad entry, more than five, one list without the other,
// overlapping ranges, an unmapped container root or a mapped host root
// are configuration errors (idmap.Validate).
func (r *reader) idmaps() []driver.IDMap {
	raw := func(option string) string { v, _ := r.ini.Get("libvirt", option); return r.expand(v) }
	u, g := r.list("libvirt", "uid_maps"), r.list("libvirt", "gid_maps")
	if len(u) == 0 && len(g) == 0 {
		return nil
	}
	um, err := idmap.ParseNova('u', u)
	if err != nil {
		r.failErr("libvirt", "uid_maps", raw("uid_maps"), err)
		return nil
	}
	gm, err := idmap.ParseNova('g', g)
	if err != nil {
		r.failErr("libvirt", "gid_maps", raw("gid_maps"), err)
		return nil
	}
	maps := append(um, gm...)
	if err := idmap.Validate(maps); err != nil {
		if r.err == nil {
			r.err = fmt.Errorf("[libvirt] uid_maps = %q, gid_maps = %q: %w: %w", strings.Join(u, ","), strings.Join(g, ","), ErrSyntax, err)
		}
		return nil
	}
	return maps
}

// failErr records a malformed option with the parser's reason.
func (r *reader) failErr(section, option, v string, err error) {
	if r.err == nil {
		r.err = fmt.Errorf("[%s] %s = %q: %w: %w", section, option, v, ErrSyntax, err)
	}
}

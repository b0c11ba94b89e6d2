package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/idmap"
)

func TestIDMaps(t *testing.T) {
	c, err := Load([]string{write(t, "nova.conf", "[DEFAULT]\nhost = h\n[libvirt]\nvirt_type = lxc\nuid_maps = 0:100000:65536\ngid_maps = 0:100000:1000, 1000:200000:64536\n")}, Flags{})
	if err != nil {
		t.Fatal(err)
	}
	want := []driver.IDMap{
		{Kind: 'u', ContainerID: 0, HostID: 100000, Count: 65536},
		{Kind: 'g', ContainerID: 0, HostID: 100000, Count: 1000},
		{Kind: 'g', ContainerID: 1000, HostID: 200000, Count: 64536},
	}
	if !idmap.Equal(c.LXCAgent.IDMaps, want) {
		t.Errorf("IDMaps = %+v, want %+v", c.LXCAgent.IDMaps, want)
	}

	c, err = Load([]string{write(t, "nova.conf", "[DEFAULT]\nhost = h\n[libvirt]\nuid_maps =\n")}, Flags{})
	if err != nil || c.LXCAgent.IDMaps != nil {
		t.Errorf("empty uid_maps: %+v, %v; want privileged (nil)", c, err)
	}

	for _, bad := range []struct{ conf, want string }{
		{"uid_maps = 0:100000\ngid_maps = 0:100000:65536", `[libvirt] uid_maps = "0:100000"`},
		{"uid_maps = 0:100000:65536\ngid_maps = 0:x:65536", `[libvirt] gid_maps = "0:x:65536"`},
		{"uid_maps = 0:100000:65536", "uid and gid maps go together"},
		{"gid_maps = 0:100000:65536", "uid and gid maps go together"},
		{"uid_maps = 0:100000:65536, 10:300000:5\ngid_maps = 0:100000:65536", "overlap inside the container"},
		{"uid_maps = 1:100000:65536\ngid_maps = 0:100000:65536", "container uid 0 (root) is not mapped"},
		{"uid_maps = 0:0:65536\ngid_maps = 0:100000:65536", "maps host uid 0 (root)"},
		{"uid_maps = 0:100000:0\ngid_maps = 0:100000:65536", "count must be positive"},
	} {
		_, err := Load([]string{write(t, "nova.conf", "[DEFAULT]\nhost = h\n[libvirt]\n"+bad.conf+"\n")}, Flags{})
		if !errors.Is(err, ErrSyntax) || !errors.Is(err, idmap.ErrInvalid) || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want ErrSyntax and idmap.ErrInvalid mentioning %q", bad.conf, err, bad.want)
		}
	}
}

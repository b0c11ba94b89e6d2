package idmap

import (
	"errors"
	"strings"
	"testing"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

func mustNova(t *testing.T, u, g []string) []driver.IDMap {
	t.Helper()
	um, err := ParseNova('u', u)
	if err != nil {
		t.Fatal(err)
	}
	gm, err := ParseNova('g', g)
	if err != nil {
		t.Fatal(err)
	}
	return append(um, gm...)
}

func TestParseNova(t *testing.T) {
	got, err := ParseNova('u', []string{"0:100000:65536", " 65536 : 300000 : 10 "})
	if err != nil {
		t.Fatal(err)
	}
	want := []driver.IDMap{{Kind: 'u', ContainerID: 0, HostID: 100000, Count: 65536}, {Kind: 'u', ContainerID: 65536, HostID: 300000, Count: 10}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("ParseNova = %+v, want %+v", got, want)
	}
	for _, bad := range []string{"0:100000", "0:100000:65536:1", "a:1:2", "0:-1:5", "0:1:4294967296", ""} {
		if _, err := ParseNova('u', []string{bad}); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseNova(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := ParseNova('x', nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("kind x: %v", err)
	}
}

func TestValidate(t *testing.T) {
	ok := mustNova(t, []string{"0:100000:65536"}, []string{"0:100000:65536"})
	if err := Validate(ok); err != nil {
		t.Errorf("Validate(%v) = %v", ok, err)
	}
	two := mustNova(t, []string{"0:100000:1000", "1000:200000:64536"}, []string{"0:100000:65536"})
	if err := Validate(two); err != nil {
		t.Errorf("Validate(%v) = %v", two, err)
	}
	for _, c := range []struct {
		name string
		u, g []string
		want string
	}{
		{"no gid map", []string{"0:100000:65536"}, nil, "no gid ranges"},
		{"no uid map", nil, []string{"0:100000:65536"}, "no uid ranges"},
		{"zero count", []string{"0:100000:0"}, []string{"0:100000:65536"}, "count must be positive"},
		{"host root", []string{"0:0:65536"}, []string{"0:100000:65536"}, "maps host uid 0"},
		{"host root inside", []string{"0:100000:65536"}, []string{"0:0:1"}, "maps host gid 0"},
		{"container overlap", []string{"0:100000:10", "5:200000:10"}, []string{"0:100000:65536"}, "overlap inside"},
		{"host overlap", []string{"0:100000:10", "10:100005:10"}, []string{"0:100000:65536"}, "overlap on the host"},
		{"root unmapped", []string{"1:100000:65536"}, []string{"0:100000:65536"}, "container uid 0 (root) is not mapped"},
		{"too big", []string{"0:4294967290:10"}, []string{"0:100000:65536"}, "ids must lie within"},
		{"too many", []string{"0:100000:1", "1:100001:1", "2:100002:1", "3:100003:1", "4:100004:1", "5:100005:1"}, []string{"0:100000:65536"}, "at most 5"},
	} {
		err := Validate(mustNova(t, c.u, c.g))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate = %v, want ErrInvalid containing %q", c.name, err, c.want)
		}
	}
	if err := Validate([]driver.IDMap{{Kind: 'x', HostID: 1, Count: 1}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("kind x: %v", err)
	}
	if err := Validate(nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("nil: %v", err)
	}
}

func TestLookupsAndForms(t *testing.T) {
	m := mustNova(t, []string{"1000:200000:10", "0:100000:1000"}, []string{"0:300000:65536"})
	for _, c := range []struct {
		kind      byte
		id, host  int
		ok        bool
		reverseOK bool
	}{
		{'u', 0, 100000, true, true}, {'u', 999, 100999, true, true}, {'u', 1005, 200005, true, true},
		{'u', 1010, 0, false, false}, {'g', 65535, 365535, true, true}, {'g', 65536, 0, false, false},
	} {
		h, ok := HostID(m, c.kind, c.id)
		if ok != c.ok || (ok && h != c.host) {
			t.Errorf("HostID(%c, %d) = %d, %v; want %d, %v", c.kind, c.id, h, ok, c.host, c.ok)
		}
		if c.ok {
			if back, ok := ContainerID(m, c.kind, h); !ok || back != c.id {
				t.Errorf("ContainerID(%c, %d) = %d, %v; want %d", c.kind, h, back, ok, c.id)
			}
		}
	}
	if _, ok := ContainerID(m, 'u', 5); ok {
		t.Error("ContainerID of an unmapped host id succeeded")
	}
	if k := Key(m); k != "u0-100000-1000_u1000-200000-10_g0-300000-65536" {
		t.Errorf("Key = %q", k)
	}
	reordered := []driver.IDMap{m[2], m[1], m[0]}
	if Key(reordered) != Key(m) || !Equal(reordered, m) {
		t.Errorf("order changes Key/Equal: %q vs %q", Key(reordered), Key(m))
	}
	if Equal(m, m[:2]) {
		t.Error("Equal of different maps")
	}
	back, err := Parse(Format(m))
	if err != nil || !Equal(back, m) {
		t.Errorf("Parse(Format) = %v, %v; Format = %q", back, err, Format(m))
	}
	if Format(m)[:17] != "u 1000 200000 10\n" {
		t.Errorf("Format = %q", Format(m))
	}
	if _, err := Parse("u 0 1\n"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Parse short line: %v", err)
	}
}

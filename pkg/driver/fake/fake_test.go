package fake_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/driver/drivertest"
	"github.com/lxc-agent/lxc-agent/pkg/driver/fake"
)

func spec(t *testing.T, id string) driver.Spec {
	dir := t.TempDir()
	return driver.Spec{ID: id, Hostname: "h-" + id, InstanceDir: dir, Rootfs: filepath.Join(dir, "rootfs"),
		ConsoleLog: filepath.Join(dir, "console.log"), Init: "/sbin/init", Limits: driver.Limits{MemoryMB: 128, VCPUs: 1},
		NICs: []driver.NIC{{HostDev: "tin1", Name: "eth0", MAC: "fa:16:3e:00:00:01"}}}
}

func state(t *testing.T, d *fake.Driver, id string) driver.Info {
	t.Helper()
	info, err := d.Info(context.Background(), id)
	if err != nil {
		t.Fatalf("Info(%s): %v", id, err)
	}
	return info
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	d := fake.New()
	if d.Name() != "fake" {
		t.Errorf("Name = %q", d.Name())
	}
	s := spec(t, "a")
	if err := d.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := d.Create(ctx, s); !errors.Is(err, driver.ErrAlreadyExists) {
		t.Fatalf("second Create: %v", err)
	}
	if info := state(t, d, "a"); info.State != driver.Shutdown || info.InitPID != 0 || info.ID != "a" {
		t.Fatalf("after Create: %+v", info)
	}
	if st, err := d.Stats(ctx, "a"); err != nil || st.MemoryLimit != 128<<20 || st.MemoryBytes != 0 {
		t.Fatalf("Stats stopped: %+v %v", st, err)
	}
	if err := d.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	info := state(t, d, "a")
	if info.State != driver.Running || info.InitPID <= 0 {
		t.Fatalf("after Start: %+v", info)
	}
	if b, _ := os.ReadFile(s.ConsoleLog); string(b) != fake.ConsoleStart {
		t.Errorf("console log = %q", b)
	}
	if err := d.Start(ctx, "a"); err != nil {
		t.Errorf("Start running: %v", err)
	}
	st, err := d.Stats(ctx, "a")
	if err != nil || st.MemoryLimit != 128<<20 || st.MemoryBytes == 0 || len(st.NICs) != 1 || st.NICs[0].MAC != s.NICs[0].MAC {
		t.Errorf("Stats running: %+v %v", st, err)
	}
	if err := d.Pause(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got := state(t, d, "a"); got.State != driver.Paused || got.InitPID != info.InitPID {
		t.Errorf("after Pause: %+v", got)
	}
	if err := d.Start(ctx, "a"); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("Start paused: %v", err)
	}
	if err := d.Unpause(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(ctx, "a", time.Second); err != nil {
		t.Fatal(err)
	}
	if got := state(t, d, "a"); got.State != driver.Shutdown || got.InitPID != 0 {
		t.Errorf("after Stop: %+v", got)
	}
	if err := d.Stop(ctx, "a", 0); err != nil {
		t.Errorf("Stop stopped: %v", err)
	}
	if err := d.Pause(ctx, "a"); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("Pause stopped: %v", err)
	}
	if err := d.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got := state(t, d, "a"); got.InitPID == info.InitPID {
		t.Errorf("restart kept pid %d", got.InitPID)
	}
	if err := d.Stop(ctx, "a", 0); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(s.ConsoleLog)
	if want := fake.ConsoleStart + fake.ConsoleHalt + fake.ConsoleStart + fake.ConsoleKilled; string(b) != want {
		t.Errorf("console log = %q, want %q", b, want)
	}
	ids, err := d.List(ctx)
	if err != nil || !slices.Equal(ids, []string{"a"}) {
		t.Errorf("List = %v %v", ids, err)
	}
	if err := d.Destroy(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Info(ctx, "a"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Info after Destroy: %v", err)
	}
	if err := d.Destroy(ctx, "a"); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
	want := []string{"Create a", "Create a", "Info a", "Stats a", "Start a", "Info a", "Start a", "Stats a",
		"Pause a", "Info a", "Start a", "Unpause a", "Stop a", "Info a", "Stop a", "Pause a", "Start a",
		"Info a", "Stop a", "List", "Destroy a", "Info a", "Destroy a"}
	if got := d.Calls(); !slices.Equal(got, want) {
		t.Errorf("Calls =\n%v\nwant\n%v", got, want)
	}
	d.ResetCalls()
	if len(d.Calls()) != 0 {
		t.Errorf("ResetCalls left %v", d.Calls())
	}
}

func TestNotFound(t *testing.T) {
	ctx := context.Background()
	d := fake.New()
	for name, err := range map[string]error{
		"Start": d.Start(ctx, "x"), "Stop": d.Stop(ctx, "x", 0), "Pause": d.Pause(ctx, "x"), "Unpause": d.Unpause(ctx, "x"),
	} {
		if !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := d.Info(ctx, "x"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Info: %v", err)
	}
	if _, err := d.Stats(ctx, "x"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Stats: %v", err)
	}
	if err := d.Destroy(ctx, "x"); err != nil {
		t.Errorf("Destroy: %v", err)
	}
	if err := d.Create(ctx, driver.Spec{}); err == nil {
		t.Errorf("Create accepted an empty id")
	}
	if ids, err := d.List(ctx); err != nil || len(ids) != 0 {
		t.Errorf("List = %v %v", ids, err)
	}
}

func TestInjectError(t *testing.T) {
	ctx := context.Background()
	d := fake.New()
	boom := errors.New("boom")
	d.InjectError("Create", boom)
	if err := d.Create(ctx, spec(t, "a")); !errors.Is(err, boom) {
		t.Fatalf("Create: %v", err)
	}
	if _, err := d.Info(ctx, "a"); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("failed Create defined the container: %v", err)
	}
	if err := d.Create(ctx, spec(t, "a")); err != nil {
		t.Fatalf("Create after the injected failure: %v", err)
	}
	d.InjectError("Start", driver.ErrUnavailable)
	d.InjectError("Start", boom)
	if err := d.Start(ctx, "a"); !errors.Is(err, driver.ErrUnavailable) {
		t.Errorf("first Start: %v", err)
	}
	if err := d.Start(ctx, "a"); !errors.Is(err, boom) {
		t.Errorf("second Start: %v", err)
	}
	if info := state(t, d, "a"); info.State != driver.Shutdown {
		t.Errorf("failed Start changed state: %+v", info)
	}
	if err := d.Start(ctx, "a"); err != nil {
		t.Errorf("third Start: %v", err)
	}
	d.InjectError("Destroy", boom)
	if err := d.Destroy(ctx, "a"); !errors.Is(err, boom) {
		t.Errorf("Destroy: %v", err)
	}
	if info := state(t, d, "a"); info.State != driver.Running {
		t.Errorf("failed Destroy changed state: %+v", info)
	}
	d.InjectError("List", boom)
	if _, err := d.List(ctx); !errors.Is(err, boom) {
		t.Errorf("List: %v", err)
	}
	calls := strings.Join(d.Calls(), ",")
	if calls != "Create a,Info a,Create a,Start a,Start a,Info a,Start a,Destroy a,Info a,List" {
		t.Errorf("Calls = %s", calls)
	}
}

func TestSetState(t *testing.T) {
	ctx := context.Background()
	d := fake.New()
	if err := d.SetState("x", driver.Crashed); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("SetState unknown: %v", err)
	}
	d.Create(ctx, spec(t, "a"))
	d.Start(ctx, "a")
	if err := d.SetState("a", driver.Crashed); err != nil {
		t.Fatal(err)
	}
	if info := state(t, d, "a"); info.State != driver.Crashed || info.InitPID != 0 {
		t.Errorf("after crash: %+v", info)
	}
	if err := d.Start(ctx, "a"); err != nil {
		t.Errorf("Start crashed: %v", err)
	}
	if s, err := d.Spec("a"); err != nil || s.Hostname != "h-a" {
		t.Errorf("Spec = %+v %v", s, err)
	}
	if _, err := d.Spec("x"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Spec unknown: %v", err)
	}
}

func TestConcurrent(t *testing.T) {
	ctx := context.Background()
	d := fake.New()
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := string(rune('a' + i))
			s := spec(t, id)
			if err := d.Create(ctx, s); err != nil {
				t.Error(err)
				return
			}
			for j := 0; j < 10; j++ {
				d.Start(ctx, id)
				d.Info(ctx, id)
				d.Stats(ctx, id)
				d.Stop(ctx, id, time.Second)
			}
			d.Destroy(ctx, id)
		}()
	}
	wg.Wait()
	if ids, _ := d.List(ctx); len(ids) != 0 {
		t.Errorf("left %v", ids)
	}
}

// The fake passes the backend-independent part of the conformance suite;
// the kernel-level subtests (Real) are skipped.
func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) driver.Driver { return fake.New() },
		Spec: func(t *testing.T, id string) driver.Spec {
			dir := t.TempDir()
			return driver.Spec{ID: id, Hostname: "h-" + id[:8], InstanceDir: dir, Rootfs: filepath.Join(dir, "rootfs"),
				ConsoleLog: filepath.Join(dir, "console.log"), Init: "/sbin/init"}
		},
		BootLine:     strings.TrimSpace(fake.ConsoleStart),
		ShutdownLine: strings.TrimSpace(fake.ConsoleHalt),
	})
}

func TestSetLimits(t *testing.T) {
	ctx := context.Background()
	d := fake.New()
	if err := d.Create(ctx, spec(t, "a")); err != nil {
		t.Fatal(err)
	}
	l := driver.Limits{MemoryMB: 512, SwapMB: 128, VCPUs: 2, CPUShares: 300, CPUQuotaUS: -1, Pids: 64, IOWeight: 200}
	if err := d.SetLimits(ctx, "a", l); err != nil {
		t.Fatal(err)
	}
	if got, err := d.Limits("a"); err != nil || got != l {
		t.Errorf("Limits = %+v, %v", got, err)
	}
	if s, _ := d.Spec("a"); s.Limits != l {
		t.Errorf("Spec.Limits = %+v", s.Limits)
	}
	if st, err := d.Stats(ctx, "a"); err != nil || st.MemoryLimit != 512<<20 {
		t.Errorf("Stats = %+v, %v", st, err)
	}
	if err := d.SetLimits(ctx, "a", driver.Limits{Pids: -1}); err == nil {
		t.Errorf("negative pids accepted")
	}
	if err := d.SetLimits(ctx, "x", l); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("SetLimits unknown: %v", err)
	}
	if _, err := d.Limits("x"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Limits unknown: %v", err)
	}
	boom := errors.New("boom")
	d.InjectError("SetLimits", boom)
	if err := d.SetLimits(ctx, "a", driver.Limits{}); !errors.Is(err, boom) {
		t.Errorf("injected: %v", err)
	}
	if got, _ := d.Limits("a"); got != l {
		t.Errorf("failed SetLimits changed the limits: %+v", got)
	}
	if calls := strings.Join(d.Calls(), ","); calls != "Create a,SetLimits a,Stats a,SetLimits a,SetLimits x,SetLimits a" {
		t.Errorf("Calls = %s", calls)
	}
}

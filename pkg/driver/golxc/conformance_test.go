package golxc_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/driver/drivertest"
	"github.com/lxc-agent/lxc-agent/pkg/driver/golxc"
)

// Environment of the re-executed test binary standing in for an agent that
// starts a container and is then killed (see startOrphan).
const (
	orphanSpecEnv    = "GOLXC_TEST_ORPHAN_SPEC"
	orphanLXCPathEnv = "GOLXC_TEST_ORPHAN_LXCPATH"
)

// TestConformance runs the driver conformance suite against real
// containers: every subtest, including the kernel-level ones.
func TestConformance(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("lxc-attach"); err != nil {
		t.Fatalf("needs lxc-attach (package lxc): %v", err)
	}
	ensureSubIDs(t, drivertest.UnprivilegedMaps)
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) driver.Driver { return newDriver(t) },
		Spec: func(t *testing.T, id string) driver.Spec {
			idsMu.Lock()
			createdIDs = append(createdIDs, id) // TestMain looks for their cgroups
			idsMu.Unlock()
			return drivertest.BusyboxSpec(t, id)
		},
		Real:        true,
		InContainer: lxcAttach,
		StartOrphan: startOrphan,
	})
}

// lxcAttach runs cmd in the container with lxc-attach, which joins the
// container's namespaces and cgroups (v1 and v2) through its monitor.
func lxcAttach(t *testing.T, d driver.Driver, id string, cmd ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := append([]string{"-P", d.(*golxc.Driver).LXCPath(), "-n", id,
		"--clear-env", "-v", "PATH=/bin:/sbin:/usr/bin:/usr/sbin", "--"}, cmd...)
	c := exec.CommandContext(ctx, "lxc-attach", args...)
	c.WaitDelay = 5 * time.Second
	out, err := c.CombinedOutput()
	return string(out), err
}

// orphanMain is the re-executed test binary: it creates and starts the
// container of the spec file with a driver of its own, prints the init pid
// and waits to be killed.
func orphanMain(specFile, lxcpath string) int {
	b, err := os.ReadFile(specFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var spec driver.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	d, err := golxc.New(lxcpath, testHelper(), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx := context.Background()
	if err := d.Create(ctx, spec); err != nil {
		fmt.Fprintln(os.Stderr, "create:", err)
		return 1
	}
	if err := d.Start(ctx, spec.ID); err != nil {
		fmt.Fprintln(os.Stderr, "start:", err)
		return 1
	}
	info, err := d.Info(ctx, spec.ID)
	if err != nil {
		fmt.Fprintln(os.Stderr, "info:", err)
		return 1
	}
	fmt.Printf("running %d\n", info.InitPID)
	select {} // until SIGKILL
}

// startOrphan implements Harness.StartOrphan: another process (this test
// binary, re-executed) creates and starts the container with its own
// golxc driver, and is killed with SIGKILL once the container runs, as
// `kill -9` of the agent would. The forklxc helper it ran must be gone as
// well: only the container's monitor and its processes remain.
func startOrphan(t *testing.T, spec driver.Spec) int {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(spec)
	specFile := filepath.Join(t.TempDir(), "spec.json")
	if err := os.WriteFile(specFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), orphanSpecEnv+"="+specFile, orphanLXCPathEnv+"="+filepath.Join(testRoot, "lxc"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	agent := cmd.Process.Pid
	killed := false
	kill := func() {
		if !killed {
			killed = true
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	defer kill()
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		line <- l
	}()
	var pid int
	select {
	case l := <-line:
		if _, err := fmt.Sscanf(l, "running %d", &pid); err != nil {
			kill()
			t.Fatalf("orphan agent: %q: %v; stderr: %s", l, err, stderr.String())
		}
	case <-time.After(2 * time.Minute):
		kill()
		t.Fatalf("orphan agent did not start the container; stderr: %s", stderr.String())
	}
	kill()
	t.Logf("agent process %d killed with SIGKILL: %v", agent, cmd.ProcessState)
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Errorf("agent process ended with %v, want SIGKILL", cmd.ProcessState)
	}
	if ps := procsMentioning(golxc.HelperSubcommand + " start " + spec.ID); len(ps) > 0 {
		t.Errorf("forklxc helper still running after the agent died: %v", ps)
	}
	mon := monitorPID(t, filepath.Join(testRoot, "lxc"), spec.ID)
	if mon == 0 {
		t.Errorf("no [lxc monitor] for %s after the agent died", spec.ID)
	} else {
		ppid, _ := strconv.Atoi(statField(t, mon, 4))
		t.Logf("monitor %d (parent %d) survives the agent %d", mon, ppid, agent)
		if ppid == agent {
			t.Errorf("monitor %d was a child of the killed agent", mon)
		}
	}
	if strings.TrimSpace(stderr.String()) != "" {
		t.Logf("orphan agent stderr: %s", stderr.String())
	}
	return pid
}

// ensureSubIDs makes /etc/subuid and /etc/subgid give root the host
// ranges of maps when liblxc needs them (golxc.CheckIDMaps: the setuid
// newuidmap and newgidmap are installed), as an operator has to, and puts
// the files back as they were when the test ends.
func ensureSubIDs(t *testing.T, maps []driver.IDMap) {
	t.Helper()
	if golxc.CheckIDMaps(maps) == nil {
		return
	}
	for _, f := range []struct {
		kind byte
		file string
	}{{'u', "/etc/subuid"}, {'g', "/etc/subgid"}} {
		old, err := os.ReadFile(f.file)
		existed := err == nil
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		add := string(old)
		if add != "" && !strings.HasSuffix(add, "\n") {
			add += "\n"
		}
		for _, m := range maps {
			if m.Kind == f.kind {
				add += fmt.Sprintf("root:%d:%d\n", m.HostID, m.Count)
			}
		}
		if err := os.WriteFile(f.file, []byte(add), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: added root's ranges for the test", f.file)
		t.Cleanup(func() {
			var err error
			if existed {
				err = os.WriteFile(f.file, old, 0o644)
			} else {
				err = os.Remove(f.file)
			}
			if err != nil {
				t.Errorf("restore %s: %v", f.file, err)
			}
		})
	}
	if err := golxc.CheckIDMaps(maps); err != nil {
		t.Fatal(err)
	}
}

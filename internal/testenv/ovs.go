package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// OVS is a private Open vSwitch of a test: its own ovsdb-server and
// ovs-vswitchd with their database, sockets, pid and log files in a
// temporary directory, in the host's network namespace. The host's own
// OVS, if any, is not touched.
type OVS struct {
	Dir string
	// DB is what ovs-vsctl --db and the agent's [os_vif_ovs]
	// ovsdb_connection take.
	DB string
	// Datapath is what bridges need here: "" (the kernel's) when the
	// kernel has the openvswitch module, else "netdev" (userspace).
	Datapath string
}

// OVST starts a private OVS for t, or skips when Open vSwitch is not
// installed (Debian's openvswitch-switch; make test installs it).
func OVST(t testing.TB) *OVS { return OVSWith(t, nil) }

// OVSWith is OVST with ovs-vswitchd forked by startIn (which calls its
// argument, e.g. on a thread switched into a test's network namespace, so
// that the switch's ports live there); nil = here.
func OVSWith(t testing.TB, startIn func(start func() error) error) *OVS {
	t.Helper()
	RequireRoot(t)
	for _, prog := range []string{"ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Skipf("needs Open vSwitch (openvswitch-switch): %v", err)
		}
	}
	dir, err := os.MkdirTemp("", "ovs") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	o := &OVS{Dir: dir, DB: "unix:" + filepath.Join(dir, "db.sock")}
	_ = exec.Command("modprobe", "openvswitch").Run()
	if _, err := os.Stat("/sys/module/openvswitch"); err != nil {
		o.Datapath = "netdev"
	}
	env := append(os.Environ(), "OVS_RUNDIR="+dir, "OVS_LOGDIR="+dir, "OVS_DBDIR="+dir, "OVS_SYSCONFDIR="+dir)
	if out, err := exec.Command("ovsdb-tool", "create", filepath.Join(dir, "conf.db"), "/usr/share/openvswitch/vswitch.ovsschema").CombinedOutput(); err != nil {
		t.Fatalf("ovsdb-tool create: %v: %s", err, out)
	}
	o.daemon(t, env, nil, "ovsdb-server", filepath.Join(dir, "conf.db"), "--remote=punix:"+filepath.Join(dir, "db.sock"),
		"--pidfile="+filepath.Join(dir, "ovsdb-server.pid"), "--unixctl="+filepath.Join(dir, "ovsdb-server.ctl"),
		"--log-file="+filepath.Join(dir, "ovsdb-server.log"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := o.Vsctl("--no-wait", "init")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ovsdb-server not ready: %v: %s", err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	o.daemon(t, env, startIn, "ovs-vswitchd", o.DB, "--pidfile="+filepath.Join(dir, "ovs-vswitchd.pid"),
		"--unixctl="+filepath.Join(dir, "ovs-vswitchd.ctl"), "--log-file="+filepath.Join(dir, "ovs-vswitchd.log"))
	return o
}

// Vsctl runs ovs-vsctl against this OVS.
func (o *OVS) Vsctl(args ...string) (string, error) {
	out, err := exec.Command("ovs-vsctl", append([]string{"--timeout=10", "--db=" + o.DB}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ovs-vsctl %v: %w", args, err)
	}
	return string(out), nil
}

// daemon runs prog in the foreground (forked by startIn when set) and ends
// it by pid when t ends.
func (o *OVS) daemon(t testing.TB, env []string, startIn func(func() error) error, prog string, args ...string) {
	t.Helper()
	logf, err := os.Create(filepath.Join(o.Dir, prog+".out"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(prog, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if startIn == nil {
		startIn = func(start func() error) error { return start() }
	}
	if err := startIn(cmd.Start); err != nil {
		t.Fatalf("start %s: %v", prog, err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			// The daemons log to their .log and, before it opens, to .out.
			for _, f := range []string{prog + ".log", prog + ".out"} {
				if b, err := os.ReadFile(filepath.Join(o.Dir, f)); err == nil && len(b) > 0 {
					t.Logf("%s:\n%s", f, tailString(string(b), 3000))
					break
				}
			}
		}
	})
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PythonBin is Debian's python3, the one with python3-nova and
// python3-oslo.messaging. Never "python3" from PATH: a pyenv python3
// (/root/.pyenv/shims) comes first in PATH on the dev VMs and has neither.
const PythonBin = "/usr/bin/python3"

// PythonTimeout bounds one Python run (and is shortened to the test's
// deadline when that is earlier).
var PythonTimeout = 5 * time.Minute

// PythonCommand returns a command running PythonBin script args... in its own
// process group (killed as a group when ctx ends). Its environment is the
// current one without PYTHONHOME/PYTHONPATH, with the system directories
// first in PATH, plus env (which wins).
func PythonCommand(ctx context.Context, script string, env map[string]string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, PythonBin, append([]string{script}, args...)...)
	cmd.Env = pythonEnv(env)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func pythonEnv(extra map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "PYTHONHOME", "PYTHONPATH", "PYENV_VERSION":
			continue
		case "PATH":
			kv = "PATH=" + systemPath + ":" + v
		}
		if _, ok := extra[k]; ok {
			continue
		}
		env = append(env, kv)
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+extra[k])
	}
	return env
}

// RunPython runs PythonBin script args... and returns its stdout. On a
// non-zero exit the error includes stdout and stderr.
func RunPython(ctx context.Context, script string, env map[string]string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := PythonCommand(ctx, script, env, args...)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s %s: %v\n--- stdout ---\n%s\n--- stderr ---\n%s",
			PythonBin, script, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// Python runs `/usr/bin/python3 script args...` with a timeout (PythonTimeout
// or the test deadline) and returns its stdout; the test fails (t.Fatal) with
// stdout and stderr on a non-zero exit.
func Python(t testing.TB, script string, env map[string]string, args ...string) string {
	t.Helper()
	timeout := PythonTimeout
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			if left := time.Until(dl) - 5*time.Second; left > 0 && left < timeout {
				timeout = left
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := RunPython(ctx, script, env, args...)
	if err != nil {
		if ctx.Err() != nil {
			t.Fatalf("python timed out after %v: %v", timeout, err)
		}
		t.Fatalf("python: %v", err)
	}
	return out
}

// PythonCode writes code to a file in t.TempDir() and runs it like Python.
func PythonCode(t testing.TB, code string, env map[string]string, args ...string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "script.py")
	if err := os.WriteFile(f, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	return Python(t, f, env, args...)
}

// CheckNovaPython checks that Debian's python3 imports oslo_messaging and
// nova.compute.rpcapi (packages python3-oslo.messaging, python3-nova).
func CheckNovaPython(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, PythonBin, "-c", "import oslo_messaging, nova.compute.rpcapi")
	cmd.Env = pythonEnv(nil)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s cannot import oslo_messaging / nova.compute.rpcapi (apt install python3-nova python3-oslo.messaging): %v\n%s",
			PythonBin, err, out)
	}
	return nil
}

// RequireNovaPython fails the test unless CheckNovaPython succeeds.
func RequireNovaPython(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := CheckNovaPython(ctx); err != nil {
		t.Fatal(err)
	}
}

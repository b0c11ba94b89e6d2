package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/procfs"
)

// systemPath is the PATH given to every service the package starts. It leaves
// out pyenv shims and other per-user tool directories so that the Debian
// packages (and Debian's /usr/bin/python3) are used.
const systemPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// proc is one service process started in its own process group.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd.Wait returned
	waitErr error         // valid after done is closed
}

// startProc starts argv in its own process group with stdout and stderr
// appended to logPath. env is the complete environment. The child gets
// SIGTERM if the thread that started it dies (Pdeathsig), so a test binary
// that is killed on timeout does not leave brokers behind.
func startProc(name, logPath string, env []string, argv ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the pid (and process group id) of the process.
func (p *proc) Pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process, waits up to timeout, then sends
// SIGKILL to its process group and to every descendant it had. Descendants
// left after the leader exited get SIGKILL too (erlang's erl_child_setup and
// inet_gethost call setsid, so they are not in the process group). Signals go
// by pid / pgid only, and only to processes that descend from the one this
// package started (checked with their start time, against pid reuse).
func (p *proc) stop(timeout time.Duration) error {
	if p == nil {
		return nil
	}
	pid := p.Pid()
	tree := p.tree()
	if !p.exited() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(timeout):
			return p.kill()
		}
	}
	p.reapTree(tree)
	return nil
}

// kill sends SIGKILL to the process, its process group and its descendants
// at once (a crash, not a shutdown).
func (p *proc) kill() error {
	if p == nil {
		return nil
	}
	tree := p.tree()
	if !p.exited() {
		_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
		tree.signal(syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, p.Pid())
		}
	}
	p.reapTree(tree)
	return nil
}

// reapTree kills what is left of the process group and of tree after the
// leader exited and waits (up to 5 s) until none of it is alive.
func (p *proc) reapTree(tree procTree) {
	pgid := p.Pid()
	if syscall.Kill(-pgid, 0) == nil {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	tree.signal(syscall.SIGKILL)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && (len(groupMembers(pgid)) > 0 || len(tree.alive()) > 0) {
		time.Sleep(20 * time.Millisecond)
	}
}

// procTree maps pid -> start time (field 22 of /proc/pid/stat).
type procTree map[int]string

type procStat struct {
	pid, ppid, pgid int
	state, start    string
}

func readStat(pid int) (procStat, bool) {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return procStat{}, false
	}
	return procStat{pid: pid, ppid: st.PPID, pgid: st.PGID, state: string(st.State),
		start: strconv.FormatUint(st.StartTicks, 10)}, true
}

func allStats() []procStat {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []procStat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := readStat(pid); ok {
			out = append(out, st)
		}
	}
	return out
}

// tree returns the process and all its live descendants.
func (p *proc) tree() procTree {
	if p == nil {
		return procTree{}
	}
	stats := allStats()
	children := map[int][]procStat{}
	self := map[int]procStat{}
	for _, st := range stats {
		children[st.ppid] = append(children[st.ppid], st)
		self[st.pid] = st
	}
	t := procTree{}
	root, ok := self[p.Pid()]
	if !ok {
		return t
	}
	queue := []procStat{root}
	for len(queue) > 0 {
		st := queue[0]
		queue = queue[1:]
		if _, seen := t[st.pid]; seen {
			continue
		}
		t[st.pid] = st.start
		queue = append(queue, children[st.pid]...)
	}
	return t
}

// alive returns the members of t that still run (same start time, not a zombie).
func (t procTree) alive() []int {
	var pids []int
	for pid, start := range t {
		if st, ok := readStat(pid); ok && st.start == start && st.state != "Z" && st.state != "X" {
			pids = append(pids, pid)
		}
	}
	return pids
}

func (t procTree) signal(sig syscall.Signal) {
	for _, pid := range t.alive() {
		_ = syscall.Kill(pid, sig)
	}
}

// groupMembers returns the live (non-zombie) processes of process group pgid.
func groupMembers(pgid int) []int {
	var pids []int
	for _, st := range allStats() {
		if st.pgid == pgid && st.state != "Z" && st.state != "X" {
			pids = append(pids, st.pid)
		}
	}
	return pids
}

// errExited marks errors from a service that exited during startup.
var errExited = errors.New("exited during startup")

// exitError describes how the process ended, with the tail of its log.
func (p *proc) exitError() error {
	return fmt.Errorf("%s (pid %d) exited: %v\n%s", p.name, p.Pid(), p.waitErr, tailFile(p.logPath, 40))
}

// tailFile returns the last n lines of a file, for error messages.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "---- " + path + " (tail) ----\n" + strings.Join(lines, "\n")
}

// serviceEnv returns the environment for a service: the current environment
// without variables whose names start with one of the drop prefixes, with
// PATH replaced by systemPath and a UTF-8 locale, plus extra ("K=V").
func serviceEnv(drop []string, extra ...string) []string {
	var env []string
next:
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "PATH", "LANG", "LC_ALL", "HOME":
			continue
		}
		for _, d := range drop {
			if strings.HasPrefix(k, d) {
				continue next
			}
		}
		env = append(env, kv)
	}
	env = append(env, "PATH="+systemPath, "LANG=C.UTF-8", "LC_ALL=C.UTF-8")
	return append(env, extra...)
}

// FreePorts returns n distinct TCP ports that were free on 127.0.0.1 when the
// call returned. Another process may still take them before they are used;
// the Start functions retry with new ports when that happens.
func FreePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// portOpen reports whether something accepts TCP connections on 127.0.0.1:port.
func portOpen(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 500*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

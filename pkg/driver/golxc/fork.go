package golxc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"

	lxc "github.com/lxc/go-lxc"
	"golang.org/x/sys/unix"
)

// HelperSubcommand is the agent subcommand that runs the start helper:
// "<agent> forklxc start <name> <lxcpath> <configfile>".
const HelperSubcommand = "forklxc"

// HelperCommand builds the command that runs the agent binary with args
// (args[0] is HelperSubcommand). The driver sets Stdin, Stdout, Stderr,
// SysProcAttr.Setsid and WaitDelay on the returned command; the function
// should only choose the binary, the arguments and the environment.
type HelperCommand func(ctx context.Context, args ...string) *exec.Cmd

// SelfExecHelper is the production HelperCommand: it re-executes the running
// agent binary through /proc/self/exe, which works even if the file on disk
// was replaced by an upgrade.
func SelfExecHelper() HelperCommand {
	return func(ctx context.Context, args ...string) *exec.Cmd {
		return exec.CommandContext(ctx, "/proc/self/exe", args...)
	}
}

// forkWaitTimeout bounds the helper's wait for RUNNING after liblxc's start
// returned (start itself already waits for the container to run or fail).
const forkWaitTimeout = 30 * time.Second

// ForkMain runs the helper subcommand; args are the arguments after
// HelperSubcommand ("start", name, lxcpath, configfile). It prints a failure
// to stderr and returns the process exit code.
func ForkMain(args []string) int {
	if len(args) == 0 || args[0] != "start" {
		fmt.Fprintf(os.Stderr, "usage: %s start <name> <lxcpath> <configfile>\n", HelperSubcommand)
		return 2
	}
	if err := ForkStart(args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "%s start: %v\n", HelperSubcommand, err)
		return 1
	}
	return 0
}

// ForkStart starts a container daemonized and returns once it is RUNNING.
// args are name, lxcpath and configfile. It is meant to run in a short-lived
// helper process (see ForkMain); liblxc forks the container monitor from it.
// The error carries the ERROR lines liblxc logged during the attempt.
func ForkStart(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("want <name> <lxcpath> <configfile>, got %d arguments", len(args))
	}
	name, lxcpath, configPath := args[0], args[1], args[2]

	// Nothing inherited beyond stdio may leak into the monitor or the
	// container. Closing would break the Go runtime's own descriptors, so
	// mark everything above stderr close-on-exec (liblxc's daemonized
	// monitor then closes all inherited descriptors itself).
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		cloexecFallback()
	}

	c, err := lxc.NewContainer(name, lxcpath)
	if err != nil {
		return fmt.Errorf("open container %s in %s: %w", name, lxcpath, err)
	}
	defer c.Release()
	if !c.Defined() {
		return fmt.Errorf("container %s is not defined in %s", name, lxcpath)
	}
	// NewContainer already parsed <lxcpath>/<name>/config; start from an empty
	// configuration so that list-valued keys are not applied twice.
	c.ClearConfig()
	if err := c.LoadConfigFile(configPath); err != nil {
		return fmt.Errorf("load config %s: %w", configPath, err)
	}
	logFile := c.LogFile()
	mark := logMark(logFile)
	withLog := func(err error) error {
		return fmt.Errorf("%w%s", err, logSuffix(errorLinesSince(logFile, mark)))
	}

	if c.Running() {
		return nil
	}
	if err := c.WantDaemonize(true); err != nil {
		return fmt.Errorf("daemonize: %w", err)
	}
	if err := c.WantCloseAllFds(true); err != nil {
		return fmt.Errorf("close all fds: %w", err)
	}
	if err := c.Start(); err != nil {
		return withLog(fmt.Errorf("liblxc: %w", err))
	}
	if !c.Wait(lxc.RUNNING, forkWaitTimeout) {
		return withLog(fmt.Errorf("not RUNNING after %v (state %s)", forkWaitTimeout, c.State()))
	}
	if c.InitPid() <= 0 {
		return withLog(errors.New("RUNNING without an init pid"))
	}
	return nil
}

// cloexecFallback sets FD_CLOEXEC on every descriptor above stderr, for
// kernels without close_range(2) (before 5.11).
func cloexecFallback() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 {
			continue
		}
		unix.CloseOnExec(fd)
	}
}

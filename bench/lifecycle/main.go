// Command lifecycle is the Go side of bench/lifecycle.sh: for each backend
// (go-lxc and libvirt-lxc, the latter on a private libvirtd started like
// internal/testenv does for the tests) it creates N busybox containers,
// each on its own overlay of one busybox root filesystem, and times through
// the driver.Driver interface:
//
//   - Create, Start and Create+Start (a new container's first boot);
//   - Stop with a grace period (init halts: SIGPWR, see both drivers);
//   - Start of a stopped, defined container;
//   - Stop with timeout 0 (kill);
//   - soft reboot (Stop with grace + Start) and hard reboot (Stop 0 + Start),
//     as internal/compute's reboot_instance does;
//   - Destroy of a running container (nova's delete);
//
// one container after the other (median, p90, min, max over N). Then, for
// the memory, -mem-n containers (N by default) are killed, MemAvailable is
// read, they are started and left idle for a settle period, MemAvailable
// is read again, and again after they are killed: the drop per container
// is the running reading against the mean of the two stopped ones. The
// cycle is repeated once (shorter settle) if the two stopped readings
// disagree by more than a fifth of the drop plus 2 MiB (other activity on
// the host), and the quieter cycle is reported. With them running it also reads RSS, PSS and USS
// (/proc/<pid>/smaps_rollup) of each container's processes and of its
// monitor (liblxc's "[lxc monitor]", a fork of the forklxc helper; libvirt's
// libvirt_lxc controller), and the usage of their memory cgroups. It prints
// one Markdown report on stdout, both backends side by side; progress goes
// to stderr.
//
// Needs root, liblxc (lxc), libvirt-daemon-driver-lxc and busybox-static.
// Everything it makes lives under -work and is released before it exits,
// on failure and SIGINT/SIGTERM too; it writes -work/state.txt for the
// script's last-resort sweep (bench/lifecycle.sh). See
// docs/benchmarks-lifecycle.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lxc-agent/lxc-agent/pkg/driver/golxc"
)

func main() {
	// liblxc's start runs in this binary re-executed as the forklxc helper
	// (golxc.SelfExecHelper): dispatch before anything else.
	if len(os.Args) > 1 && os.Args[1] == golxc.HelperSubcommand {
		os.Exit(golxc.ForkMain(os.Args[2:]))
	}
	def := DefaultConfig()
	work := flag.String("work", "", "work directory (required; on a disk in the root mount namespace)")
	n := flag.Int("n", def.N, "containers per backend")
	memN := flag.Int("mem-n", 0, "containers running in the memory phase (at least -n; default -n)")
	backends := flag.String("backends", strings.Join(def.Backends, ","), "backends to measure, in order: lxc, libvirt-lxc")
	grace := flag.Duration("grace", def.Grace, "timeout of the clean stops (then the driver kills)")
	settle := flag.Duration("settle", def.Settle, "how long the N containers stay idle before memory is measured")
	helper := flag.String("helper", "", "binary run as \"<helper> forklxc start ...\" to start go-lxc containers\n(the agent's: build ./cmd/lxc-agent; default: this binary)")
	jsonOut := flag.String("json", "", "also write the raw samples as JSON to this file")
	command := flag.String("command", "", "the command line to print in the report (default: this one)")
	flag.Parse()
	if *work == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: lifecycle -work DIR [flags]; see -h")
		os.Exit(2)
	}
	cfg := Config{WorkDir: *work, N: *n, MemN: *memN, Grace: *grace, Settle: *settle, Helper: *helper, Progress: os.Stderr}
	for _, b := range strings.Split(*backends, ",") {
		if b = strings.TrimSpace(b); b != "" {
			cfg.Backends = append(cfg.Backends, b)
		}
	}
	if *command == "" {
		*command = strings.Join(os.Args, " ")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	t0 := time.Now()
	rep, err := Run(ctx, cfg)
	if rep != nil && err == nil {
		rep.Took = time.Since(t0)
		rep.Format(os.Stdout, *command)
		if *jsonOut != "" {
			b, jerr := json.MarshalIndent(rep, "", "  ")
			if jerr == nil {
				jerr = os.WriteFile(*jsonOut, append(b, '\n'), 0o644)
			}
			if jerr != nil {
				fmt.Fprintf(os.Stderr, "lifecycle: %v\n", jerr)
				os.Exit(1)
			}
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "lifecycle: %v\n", err)
		os.Exit(1)
	}
}

// Command imagebench is the Go side of bench/image-build.sh: it starts a
// private glance-api on 127.0.0.1, builds and uploads the benchmark images,
// measures lxc-agent's cold and warm image builds against the same work
// done by hand (curl, sha512sum, mount/qemu-img/tar), and the disk and
// memory each instance costs, then prints one report (Markdown) on stdout.
// Progress goes to stderr. See package imagebench and
// docs/benchmarks-images.md.
//
// Needs root. Everything is created under -work and released before it
// exits, also on SIGINT/SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/lxc-agent/lxc-agent/bench/imagebench"
)

func main() {
	def := imagebench.DefaultConfig()
	work := flag.String("work", "", "work directory (required; on a disk, not tmpfs)")
	sizes := flag.String("sizes", joinInts(def.SizesMiB), "payload sizes in MiB, comma-separated")
	formats := flag.String("formats", strings.Join(def.Formats, ","), "image formats, comma-separated")
	reps := flag.Int("reps", def.Reps, "cold builds per side and image")
	firstReps := flag.Int("first-reps", def.FirstReps, "warm builds per image that make the base again (first instance)")
	instances := flag.Int("instances", def.Instances, "warm instances per image")
	copies := flag.Int("copies", def.Copies, "full copies per image for the comparison (0: none)")
	drop := flag.Bool("drop-caches", def.DropCaches, "drop the page cache before every cold build")
	jsonOut := flag.String("json", "", "also write the raw samples as JSON to this file")
	command := flag.String("command", "", "the command line to print in the report (default: this one)")
	flag.Parse()
	if *work == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: imagebench -work DIR [flags]; see -h")
		os.Exit(2)
	}
	cfg := imagebench.Config{WorkDir: *work, Formats: splitList(*formats), Reps: *reps, FirstReps: *firstReps, Instances: *instances,
		Copies: *copies, DropCaches: *drop, Seed: def.Seed, Progress: os.Stderr}
	for _, s := range splitList(*sizes) {
		n, err := strconv.Atoi(s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "imagebench: -sizes: %q is not a number\n", s)
			os.Exit(2)
		}
		cfg.SizesMiB = append(cfg.SizesMiB, n)
	}
	if *command == "" {
		*command = imagebench.Command(os.Args)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := imagebench.Run(ctx, cfg)
	if rep != nil && err == nil {
		rep.Format(os.Stdout, *command)
		if *jsonOut != "" {
			b, jerr := json.MarshalIndent(rep, "", "  ")
			if jerr == nil {
				jerr = os.WriteFile(*jsonOut, append(b, '\n'), 0o644)
			}
			if jerr != nil {
				fmt.Fprintf(os.Stderr, "imagebench: %v\n", jerr)
				os.Exit(1)
			}
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "imagebench: %v\n", err)
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func joinInts(vs []int) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

// Command goserver is the Go side of bench/rpc-roundtrip.sh: lxc-agent's
// rpc.Server with nova's baseapi endpoint (rpc.BaseAPI("compute"), the ping
// method) on topic compute, server -server, configured like `lxc-agent serve`
// with default settings (executor_thread_pool_size 64, heartbeat 60 s).
//
// It prints "ready" on stdout once it consumes, runs until SIGTERM or SIGINT,
// then prints how many messages it handled.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

func main() {
	url := flag.String("url", os.Getenv("LXC_AGENT_BENCH_AMQP_URL"), "broker URL (rabbit:// or amqp://)")
	server := flag.String("server", "bench-go", "server (host) name: the queue is compute.<server>")
	concurrency := flag.Int("concurrency", 64, "handlers at once (executor_thread_pool_size)")
	flag.Parse()
	if *url == "" {
		fmt.Fprintln(os.Stderr, "goserver: -url or LXC_AGENT_BENCH_AMQP_URL is required")
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	var handled, failed atomic.Int64
	srv := rpc.NewServer(rpc.ServerConfig{
		Transport: rpc.TransportConfig{
			URL: *url, Heartbeat: 60 * time.Second,
			ConnectionName: fmt.Sprintf("rpcbench-goserver:%d:%s", os.Getpid(), *server),
		},
		Exchange: "nova", Topic: "compute", Server: *server,
		Concurrency: *concurrency, ShutdownGrace: 10 * time.Second, Logger: log,
		Observe: func(_, result string, _ time.Duration) {
			handled.Add(1)
			if result != "success" {
				failed.Add(1)
			}
		},
	}, rpc.NewDispatcher(rpc.BaseAPI("compute")))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
		fmt.Println("ready")
	case err := <-done:
		fmt.Fprintf(os.Stderr, "goserver: %v\n", err)
		os.Exit(1)
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "goserver: not consuming after 60 s")
		os.Exit(1)
	}
	err := <-done
	fmt.Printf("handled %d messages, %d failed\n", handled.Load(), failed.Load())
	if err != nil {
		fmt.Fprintf(os.Stderr, "goserver: %v\n", err)
		os.Exit(1)
	}
}

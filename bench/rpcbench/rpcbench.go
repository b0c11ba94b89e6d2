// Package rpcbench measures no-op RPC round trips (nova's baseapi ping)
// through RabbitMQ with lxc-agent's Go rpc.Client, against lxc-agent's Go
// rpc.Server and against an oslo.messaging server, on the same broker.
//
// The benchmarks (rpcbench_test.go) need a running broker and the two
// servers, which bench/rpc-roundtrip.sh (make bench) starts; they read where
// to find them from the environment variables below and skip when those are
// unset, so `go test ./...` stays quick.
package rpcbench

import (
	"slices"
	"time"
)

// Environment variables read by the benchmarks.
const (
	// EnvAMQPURL is the broker (amqp:// or rabbit://).
	EnvAMQPURL = "LXC_AGENT_BENCH_AMQP_URL"
	// EnvGoServer names the server (host) of the Go rpc.Server: the
	// benchmarks call topic compute, server <name>.
	EnvGoServer = "LXC_AGENT_BENCH_GO_SERVER"
	// EnvOsloServer names the server of the oslo.messaging RPC server.
	EnvOsloServer = "LXC_AGENT_BENCH_OSLO_SERVER"
	// EnvConcurrency is the number of goroutines calling at once in the
	// parallel benchmarks (default 16).
	EnvConcurrency = "LXC_AGENT_BENCH_CONCURRENCY"
	// EnvWarmup is the number of warm-up calls per server, made once
	// sequentially and once concurrently before measuring (default 200).
	EnvWarmup = "LXC_AGENT_BENCH_WARMUP"
)

// Percentile returns the nearest-rank percentile (permille: 500 is the
// median, 990 the 99th percentile) of latencies, which it sorts in place.
func Percentile(lat []time.Duration, permille int) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	if !slices.IsSorted(lat) {
		slices.Sort(lat)
	}
	i := (permille*len(lat)+999)/1000 - 1
	return lat[max(0, min(len(lat)-1, i))]
}

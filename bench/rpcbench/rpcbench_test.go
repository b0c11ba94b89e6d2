package rpcbench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// callTimeout bounds one call; a benchmark fails at the first timeout.
const callTimeout = 30 * time.Second

// BenchmarkPingGoServer calls baseapi ping on lxc-agent's Go rpc.Server.
func BenchmarkPingGoServer(b *testing.B) { benchPing(b, EnvGoServer) }

// BenchmarkPingOsloServer calls baseapi ping on the oslo.messaging server.
func BenchmarkPingOsloServer(b *testing.B) { benchPing(b, EnvOsloServer) }

// benchPing runs two sub-benchmarks against the server named by serverEnv:
// "sequential" (one call at a time: latency) and "parallel" (b.RunParallel
// with LXC_AGENT_BENCH_CONCURRENCY goroutines sharing one client:
// throughput). Both report calls/s and p50/p99 latency in ms.
func benchPing(b *testing.B, serverEnv string) {
	url, server := os.Getenv(EnvAMQPURL), os.Getenv(serverEnv)
	if url == "" || server == "" {
		b.Skipf("%s or %s is not set: these benchmarks need a broker and running RPC servers; run bench/rpc-roundtrip.sh (make bench)",
			EnvAMQPURL, serverEnv)
	}
	conc, err := envInt(EnvConcurrency, 16)
	if err != nil {
		b.Fatal(err)
	}
	warmup, err := envInt(EnvWarmup, 200)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	c, err := rpc.Dial(ctx, rpc.TransportConfig{URL: url, Heartbeat: 60 * time.Second}, "nova", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	p := &pinger{c: c, target: rpc.Target{Topic: "compute", Server: server, Namespace: "baseapi", Version: "1.0"},
		rctx: rpc.AdminContext()}

	// Warm up: the first calls pay for connection, queue and code paths.
	for range warmup {
		if err := p.ping(ctx); err != nil {
			b.Fatalf("warm-up against %s: %v", server, err)
		}
	}
	if err := p.parallel(ctx, warmup, conc); err != nil {
		b.Fatalf("warm-up against %s: %v", server, err)
	}

	b.Run("sequential", func(b *testing.B) {
		lat := make([]time.Duration, b.N)
		b.ResetTimer()
		start := time.Now()
		for i := range lat {
			t0 := time.Now()
			if err := p.ping(ctx); err != nil {
				b.Fatalf("call %d of %d: %v", i+1, b.N, err)
			}
			lat[i] = time.Since(t0)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		report(b, lat, elapsed, 1)
	})

	b.Run("parallel", func(b *testing.B) {
		// RunParallel starts parallelism × GOMAXPROCS goroutines.
		par := (conc + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)
		workers := par * runtime.GOMAXPROCS(0)
		b.SetParallelism(par)
		var (
			mu     sync.Mutex
			lat    = make([]time.Duration, 0, b.N)
			failed atomic.Int64
			first  atomic.Value
		)
		b.ResetTimer()
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			mine := make([]time.Duration, 0, b.N/workers+1)
			for pb.Next() {
				t0 := time.Now()
				if err := p.ping(ctx); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err.Error())
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
		elapsed := time.Since(start)
		b.StopTimer()
		if n := failed.Load(); n > 0 {
			b.Fatalf("%d of %d calls failed; first: %v", n, b.N, first.Load())
		}
		report(b, lat, elapsed, workers)
	})
}

type pinger struct {
	c      *rpc.Client
	target rpc.Target
	rctx   *rpc.RequestContext
	seq    atomic.Int64
}

// ping calls baseapi ping and checks the reply echoes the argument.
func (p *pinger) ping(ctx context.Context) error {
	arg := "bench-" + strconv.FormatInt(p.seq.Add(1), 10)
	res, err := p.c.Call(ctx, p.target, "ping", map[string]any{"arg": arg}, p.rctx, callTimeout)
	if err != nil {
		return err
	}
	var r struct {
		Service string `json:"service"`
		Arg     string `json:"arg"`
	}
	if err := json.Unmarshal(res, &r); err != nil || r.Service != "compute" || r.Arg != arg {
		return fmt.Errorf("unexpected reply %s to ping(arg=%q)", res, arg)
	}
	return nil
}

// parallel makes n calls from workers goroutines (for the warm-up).
func (p *pinger) parallel(ctx context.Context, n, workers int) error {
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := p.ping(ctx); err != nil {
					errMu.Lock()
					if first == nil {
						first = err
					}
					errMu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

func report(b *testing.B, lat []time.Duration, elapsed time.Duration, workers int) {
	if len(lat) != b.N {
		b.Fatalf("%d of %d calls answered", len(lat), b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "calls/s")
	b.ReportMetric(float64(Percentile(lat, 500))/1e6, "p50-ms")
	b.ReportMetric(float64(Percentile(lat, 990))/1e6, "p99-ms")
	b.ReportMetric(float64(workers), "workers")
}

func envInt(name string, def int) (int, error) {
	s := os.Getenv(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%s=%q: want a positive integer", name, s)
	}
	return n, nil
}

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	lat := ms(5, 1, 4, 2, 3, 10, 9, 8, 7, 6)
	for _, c := range []struct {
		permille int
		want     time.Duration
	}{{500, 5 * time.Millisecond}, {990, 10 * time.Millisecond}, {100, time.Millisecond}, {0, time.Millisecond}, {1000, 10 * time.Millisecond}} {
		if got := Percentile(lat, c.permille); got != c.want {
			t.Errorf("Percentile(%d) = %v, want %v", c.permille, got, c.want)
		}
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(100-i) * time.Millisecond
	}
	if got := Percentile(hundred, 990); got != 99*time.Millisecond {
		t.Errorf("p99 of 1..100 ms = %v, want 99ms", got)
	}
	if got := Percentile(nil, 500); got != 0 {
		t.Errorf("Percentile(nil) = %v", got)
	}
}

// Package metrics holds lxc-agent's Prometheus metrics on a dedicated
// registry. All names are here, with the lxc_agent_ prefix and base units.
package metrics

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Build phases observed by BuildPhase.
const (
	PhaseImage   = "image"
	PhaseRootfs  = "rootfs"
	PhaseNetwork = "network"
	PhaseStart   = "start"

	PhaseFreeze = "freeze" // snapshot: the instance is frozen while its files are read
	PhaseUpload = "upload"
)

// Metrics are the agent's instruments.
type Metrics struct {
	Registry *prometheus.Registry

	rpcRequests   *prometheus.CounterVec
	rpcDuration   *prometheus.HistogramVec
	buildPhase    *prometheus.HistogramVec
	builds        *prometheus.CounterVec
	imageCache    *prometheus.CounterVec
	snapshotPhase *prometheus.HistogramVec
	knownMethods  map[string]bool
}

// PowerStateCounter reports how many instances are in each power state at
// scrape time (container density).
type PowerStateCounter func(ctx context.Context) map[string]int

// New registers every metric on a fresh registry. methods bounds the method
// label of RPC metrics: anything else is counted as "other".
func New(version, backend string, methods []string, states PowerStateCounter) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{Registry: reg, knownMethods: map[string]bool{}}
	for _, name := range methods {
		m.knownMethods[name] = true
	}
	m.rpcRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lxc_agent_rpc_requests_total",
		Help: "RPC messages handled, by method and result (success, error, malformed).",
	}, []string{"method", "result"})
	m.rpcDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "lxc_agent_rpc_request_duration_seconds",
		Help:    "Time to handle one RPC message, by method.",
		Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
	}, []string{"method"})
	m.buildPhase = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "lxc_agent_build_phase_duration_seconds",
		Help:    "Time spent in each phase of build_and_run_instance (image, rootfs, network, start).",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"phase"})
	m.builds = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lxc_agent_builds_total",
		Help: "Instance builds, by result (success, error).",
	}, []string{"result"})
	m.imageCache = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lxc_agent_image_cache_requests_total",
		Help: "Image cache lookups by result (hit, miss).",
	}, []string{"result"})
	m.snapshotPhase = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "lxc_agent_snapshot_phase_duration_seconds",
		Help:    "Time spent in each phase of snapshot_instance (freeze: the guest is frozen; upload).",
		Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	}, []string{"phase"})
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "lxc_agent_build_info",
		Help: "Build information; always 1.",
	}, []string{"version", "backend"})
	info.WithLabelValues(version, backend).Set(1)
	reg.MustRegister(m.rpcRequests, m.rpcDuration, m.buildPhase, m.builds, m.imageCache, m.snapshotPhase, info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if states != nil {
		reg.MustRegister(&instanceCollector{states: states})
	}
	return m
}

func (m *Metrics) method(name string) string {
	if m.knownMethods[name] {
		return name
	}
	return "other"
}

// ObserveRPC records one handled message.
func (m *Metrics) ObserveRPC(method, result string, d time.Duration) {
	if m == nil {
		return
	}
	name := m.method(method)
	m.rpcRequests.WithLabelValues(name, result).Inc()
	if d > 0 {
		m.rpcDuration.WithLabelValues(name).Observe(d.Seconds())
	}
}

// BuildPhase records the duration of one build phase.
func (m *Metrics) BuildPhase(phase string, d time.Duration) {
	if m == nil {
		return
	}
	m.buildPhase.WithLabelValues(phase).Observe(d.Seconds())
}

// Build records a finished build.
func (m *Metrics) Build(ok bool) {
	if m == nil {
		return
	}
	if ok {
		m.builds.WithLabelValues("success").Inc()
	} else {
		m.builds.WithLabelValues("error").Inc()
	}
}

// ImageCache records a cache lookup.
func (m *Metrics) ImageCache(hit bool) {
	if m == nil {
		return
	}
	if hit {
		m.imageCache.WithLabelValues("hit").Inc()
	} else {
		m.imageCache.WithLabelValues("miss").Inc()
	}
}

// SnapshotPhase records the duration of one snapshot phase.
func (m *Metrics) SnapshotPhase(phase string, d time.Duration) {
	if m == nil {
		return
	}
	m.snapshotPhase.WithLabelValues(phase).Observe(d.Seconds())
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

var instancesDesc = prometheus.NewDesc("lxc_agent_instances",
	"Instances on this host by nova power state (container density).", []string{"power_state"}, nil)

// instanceCollector counts instances at scrape time, so deleted instances
// leave no stale series.
type instanceCollector struct{ states PowerStateCounter }

func (c *instanceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- instancesDesc }

func (c *instanceCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts := c.states(ctx)
	for _, s := range []string{"pending", "running", "paused", "shutdown", "crashed", "suspended"} {
		ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(counts[s]), s)
	}
}

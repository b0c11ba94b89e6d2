package metrics

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

func TestNamesFollowPrometheusConventions(t *testing.T) {
	m := New("test", "lxc", []string{"build_and_run_instance"}, func(context.Context) map[string]int {
		return map[string]int{"running": 3, "shutdown": 1}
	})
	m.ObserveRPC("build_and_run_instance", "success", 2*time.Second)
	m.ObserveRPC("made_up_method", "error", time.Millisecond)
	m.BuildPhase(PhaseImage, time.Second)
	m.Build(true)
	m.ImageCache(true)
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "lxc_agent_") {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, "lxc_agent_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("metric %s lacks the lxc_agent_ prefix", name)
		}
	}

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`lxc_agent_instances{power_state="running"} 3`,
		`lxc_agent_instances{power_state="paused"} 0`,
		`lxc_agent_rpc_requests_total{method="other",result="error"} 1`, // bounded label values
		`lxc_agent_rpc_request_duration_seconds_count{method="build_and_run_instance"} 1`,
		`lxc_agent_build_phase_duration_seconds_sum{phase="image"} 1`,
		`lxc_agent_image_cache_requests_total{result="hit"} 1`,
		`lxc_agent_build_info{backend="lxc",version="test"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}

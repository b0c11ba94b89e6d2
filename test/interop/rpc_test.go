// Package interop proves wire compatibility: Debian's python3-oslo.messaging
// and python3-nova drive lxc-agent's Go RPC server over a real RabbitMQ.
package interop

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lxc-agent/lxc-agent/internal/compute"
	"github.com/lxc-agent/lxc-agent/internal/testenv"
	"github.com/lxc-agent/lxc-agent/pkg/driver/fake"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// testEndpoint is an extra namespace the Python peer uses to observe casts,
// fanout, heartbeats and concurrency.
type testEndpoint struct {
	mu       sync.Mutex
	recorded []string
	block    chan struct{} // when set, "block" waits on it
	started  chan string
}

func (e *testEndpoint) endpoint() rpc.Endpoint {
	return rpc.Endpoint{Namespace: "interop", Version: "1.0", Methods: map[string]rpc.Method{
		"sleep": {Handler: func(ctx context.Context, req *rpc.Request) (any, error) {
			var s float64
			if _, err := req.Arg("seconds", &s); err != nil {
				return nil, err
			}
			select {
			case <-time.After(time.Duration(s * float64(time.Second))):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return fmt.Sprintf("slept %g", s), nil
		}},
		"record": {Handler: func(_ context.Context, req *rpc.Request) (any, error) {
			var v string
			if _, err := req.Arg("value", &v); err != nil {
				return nil, err
			}
			e.mu.Lock()
			e.recorded = append(e.recorded, v)
			e.mu.Unlock()
			return nil, nil
		}},
		"recorded": {Handler: func(context.Context, *rpc.Request) (any, error) {
			e.mu.Lock()
			defer e.mu.Unlock()
			return append([]string{}, e.recorded...), nil
		}},
		"whoami": {Handler: func(_ context.Context, req *rpc.Request) (any, error) {
			c := req.Context
			return map[string]string{"user_id": c.UserID, "project_id": c.ProjectID, "auth_token": c.AuthToken, "request_id": c.RequestID}, nil
		}},
		"block": {Handler: func(ctx context.Context, req *rpc.Request) (any, error) {
			var v string
			_, _ = req.Arg("value", &v)
			if e.started != nil {
				e.started <- v
			}
			select {
			case <-e.block:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return nil, nil
		}},
	}}
}

type agent struct {
	host   string
	ep     *testEndpoint
	srv    *rpc.Server
	cancel context.CancelFunc
	done   chan error
}

// startAgent runs an RPC server for host with nova's compute endpoints (on a
// stateful fake driver), baseapi and the test namespace.
func startAgent(t *testing.T, url, host string, journalDir string, grace time.Duration) *agent {
	t.Helper()
	return startAgentWith(t, url, host, journalDir, grace, &testEndpoint{})
}

func startAgentWith(t *testing.T, url, host string, journalDir string, grace time.Duration, ep *testEndpoint) *agent {
	t.Helper()
	dir := t.TempDir()
	mgr, err := compute.New(compute.Config{Host: host, InstancesPath: filepath.Join(dir, "instances"), FaultsDir: filepath.Join(dir, "faults")},
		compute.Deps{Driver: fake.New(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var j *rpc.Journal
	if journalDir != "" {
		if j, err = rpc.OpenJournal(journalDir); err != nil {
			t.Fatal(err)
		}
	}
	eps := append(mgr.Endpoints(), rpc.BaseAPI("compute"), ep.endpoint())
	srv := rpc.NewServer(rpc.ServerConfig{Transport: rpc.TransportConfig{URL: url, Heartbeat: 10 * time.Second},
		Exchange: "nova", Topic: "compute", Server: host, Journal: j, ShutdownGrace: grace, Logger: testLogger(t)},
		rpc.NewDispatcher(eps...))
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{host: host, ep: ep, srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-a.done:
		t.Fatalf("server %s: %v", host, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("server %s not ready", host)
	}
	t.Cleanup(a.stop)
	return a
}

func (a *agent) stop() {
	if a.cancel == nil {
		return
	}
	a.cancel()
	a.cancel = nil
	<-a.done
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func uniqueHost(t *testing.T, prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
}

// TestPythonPeer runs oslo.messaging's RPCClient and nova's serializer and
// exceptions against the Go server.
func TestPythonPeer(t *testing.T) {
	testenv.RequireNovaPython(t)
	url := testenv.RabbitMQ(t)
	a := startAgent(t, url, uniqueHost(t, "interop-a"), "", 5*time.Second)
	b := startAgent(t, url, uniqueHost(t, "interop-b"), "", 5*time.Second)
	out := testenv.Python(t, "rpc_peer.py", map[string]string{"AMQP_URL": url, "HOST": a.host, "HOST2": b.host},
		"ping", "unknown_kwargs_tolerated", "not_found", "invalid_state", "unsupported_version", "no_such_method",
		"heartbeat", "concurrent", "cast", "fanout", "context")
	t.Log(out)
	if strings.Contains(out, "FAIL") {
		t.Fatal("python peer reported failures")
	}
}

// rawCall publishes body as is to compute.<host> and waits for a reply on a
// queue of its own; it returns the decoded failure ("" when the reply had none).
func rawCall(t *testing.T, url, host string, body func(msgID, replyQ string) []byte) (failure string, answered bool) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("reply_"+strings.ReplaceAll(fmt.Sprint(time.Now().UnixNano()), "-", ""), false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	msgID := fmt.Sprintf("%x", time.Now().UnixNano())
	err = ch.PublishWithContext(context.Background(), "nova", "compute."+host, false, false, amqp.Publishing{
		ContentType: "application/json", ContentEncoding: "utf-8", Body: body(msgID, q.Name)})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-deliveries:
		inner, err := rpc.Unwrap(d.Body)
		if err != nil {
			t.Fatalf("reply: %v", err)
		}
		var f string
		_ = json.Unmarshal(inner["failure"], &f)
		var id string
		_ = json.Unmarshal(inner["_msg_id"], &id)
		if id != msgID {
			t.Errorf("reply _msg_id = %q, want %q", id, msgID)
		}
		return f, true
	case <-time.After(3 * time.Second):
		return "", false
	}
}

// TestBadInput sends what no well-behaved peer sends: every call is answered
// with a remote exception, every cast is dropped, and the agent keeps serving.
func TestBadInput(t *testing.T) {
	url := testenv.RabbitMQ(t)
	a := startAgent(t, url, uniqueHost(t, "bad"), "", 5*time.Second)
	env := func(inner string) []byte {
		b, _ := json.Marshal(map[string]string{"oslo.version": "2.0", "oslo.message": inner})
		return b
	}
	calls := map[string]struct {
		body  func(id, q string) []byte
		class string
	}{
		"malformed JSON": {func(id, q string) []byte {
			return env(fmt.Sprintf(`{"method": "ping", "_msg_id": "%s", "_reply_q": "%s", "args": {`, id, q))
		}, "Invalid"},
		"missing envelope (legacy body)": {func(id, q string) []byte {
			return []byte(fmt.Sprintf(`{"method": "ping", "namespace": "baseapi", "version": "1.0", "_msg_id": "%s", "_reply_q": "%s", "args": {"arg": 1}}`, id, q))
		}, ""},
		"unknown method": {func(id, q string) []byte {
			return env(fmt.Sprintf(`{"method": "no_such", "version": "6.0", "_msg_id": "%s", "_reply_q": "%s", "args": {}}`, id, q))
		}, "NoSuchMethod"},
		"bad instance primitive": {func(id, q string) []byte {
			return env(fmt.Sprintf(`{"method": "get_console_output", "version": "6.0", "_msg_id": "%s", "_reply_q": "%s", "args": {"instance": {"nova_object.name": "Flavor", "nova_object.namespace": "nova", "nova_object.data": {}}}}`, id, q))
		}, "Invalid"},
		"instance without uuid": {func(id, q string) []byte {
			return env(fmt.Sprintf(`{"method": "get_instance_diagnostics", "version": "6.0", "_msg_id": "%s", "_reply_q": "%s", "args": {"instance": 42}}`, id, q))
		}, "Invalid"},
	}
	for name, c := range calls {
		failure, answered := rawCall(t, url, a.host, c.body)
		if !answered {
			t.Errorf("%s: no reply", name)
			continue
		}
		if c.class == "" {
			if failure != "" {
				t.Errorf("%s: unexpected failure %s", name, failure)
			}
			continue
		}
		var f struct{ Class, Module string }
		if err := json.Unmarshal([]byte(failure), &f); err != nil || f.Class != c.class {
			t.Errorf("%s: failure = %s, want class %s", name, failure, c.class)
		}
	}
	// Casts with the same defects are logged and dropped: nothing to answer,
	// and the agent still serves afterwards.
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, _ := conn.Channel()
	for _, body := range [][]byte{[]byte("{{{"), env(`{"method": "terminate_instance", "version": "6.0", "args": {"instance": "nope"}}`),
		env(`{"method": "nothing_here", "version": "6.0", "args": {}}`), []byte(`"just a string"`)} {
		if err := ch.PublishWithContext(context.Background(), "nova", "compute."+a.host, false, false, amqp.Publishing{Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	failure, answered := rawCall(t, url, a.host, calls["missing envelope (legacy body)"].body)
	if !answered || failure != "" {
		t.Fatalf("agent stopped serving after bad casts: answered=%v failure=%s", answered, failure)
	}
}

// TestCastSurvivesCrash: a cast is acked only once journaled, so work taken
// by an agent that dies mid-way runs again when the agent comes back.
func TestCastSurvivesCrash(t *testing.T) {
	url := testenv.RabbitMQ(t)
	journal := t.TempDir()
	host := uniqueHost(t, "crash")
	// The first agent "dies" mid-way: its handler never finishes.
	a := startAgentWith(t, url, host, journal, 10*time.Millisecond,
		&testEndpoint{block: make(chan struct{}), started: make(chan string, 1)})
	c, err := rpc.Dial(context.Background(), rpc.TransportConfig{URL: url}, "nova", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tgt := rpc.Target{Topic: "compute", Server: host, Namespace: "interop", Version: "1.0"}
	if err := c.Cast(context.Background(), tgt, "block", map[string]any{"value": "work-1"}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.ep.started:
	case <-time.After(10 * time.Second):
		t.Fatal("cast not delivered")
	}
	pending, _ := filepath.Glob(filepath.Join(journal, "*.msg"))
	if len(pending) != 1 {
		t.Fatalf("journal holds %d entries while the cast runs, want 1", len(pending))
	}
	a.stop() // grace expires with the handler still blocked
	released := make(chan struct{})
	close(released)
	b := startAgentWith(t, url, host, journal, 5*time.Second, &testEndpoint{block: released, started: make(chan string, 1)})
	select {
	case v := <-b.ep.started:
		if v != "work-1" {
			t.Fatalf("replayed %q, want work-1", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the restarted agent did not run the unfinished cast again")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		p, _ := filepath.Glob(filepath.Join(journal, "*.msg"))
		if len(p) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("replayed cast never finished")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReconnect restarts the broker under a running server.
func TestReconnect(t *testing.T) {
	r := testenv.StartRabbitMQT(t)
	a := startAgent(t, r.URL(), uniqueHost(t, "reconnect"), "", 5*time.Second)
	ping := func() error {
		c, err := rpc.Dial(context.Background(), rpc.TransportConfig{URL: r.URL()}, "nova", nil)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Call(context.Background(), rpc.Target{Topic: "compute", Server: a.host, Namespace: "baseapi", Version: "1.0"},
			"ping", map[string]any{"arg": "x"}, nil, 3*time.Second)
		return err
	}
	if err := ping(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := r.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := ping()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not come back after the broker restart: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

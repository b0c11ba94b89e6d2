package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// EnvAMQPURL names the environment variable that points the tests at a broker
// started outside the test process (hack/rabbitmq.sh, used by `make test`).
const EnvAMQPURL = "LXC_AGENT_AMQP_URL"

// RabbitUser and RabbitPass are the credentials of every broker this package
// (and hack/rabbitmq.sh) starts.
const (
	RabbitUser = "lxcagent"
	RabbitPass = "lxcagent"
)

const (
	rabbitServer      = "/usr/lib/rabbitmq/bin/rabbitmq-server"
	epmdBin           = "/usr/bin/epmd"
	rabbitStopTimeout = 30 * time.Second
	// RabbitStartTimeout bounds StartRabbitMQ and StartNode when the context
	// has no earlier deadline. A node is usually ready in 3-8 s.
	RabbitStartTimeout = 90 * time.Second
)

// Rabbit is a private RabbitMQ node with its own epmd, listening on
// 127.0.0.1 only. All of its state (config, mnesia, logs, erlang cookie) is
// under Dir.
type Rabbit struct {
	Dir      string
	Port     int    // AMQP
	DistPort int    // erlang distribution
	EpmdPort int    // private epmd
	Node     string // erlang node name, <name>@localhost

	mu   sync.Mutex
	epmd *proc
	node *proc
}

// StartRabbitMQ starts a RabbitMQ node whose state lives under dir (created if
// needed) and waits until an AMQP connection with RabbitUser/RabbitPass
// succeeds. port 0 picks free ports (AMQP, distribution and epmd); with a
// fixed port, the distribution port is port+20000 and epmd uses port-1200
// (5679 -> 25679, 4479), like hack/rabbitmq.sh.
func StartRabbitMQ(ctx context.Context, dir string, port int) (*Rabbit, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if port != 0 && (port <= 1200 || port+20000 > 65535) {
		return nil, fmt.Errorf("rabbitmq port %d: want 1201..45535 (dist port+20000, epmd port-1200) or 0", port)
	}
	attempts := 1
	if port == 0 {
		attempts = 3 // a picked port may be taken by someone else meanwhile
	}
	var lastErr error
	for i := 0; i < attempts; i++ {
		r := &Rabbit{Dir: dir}
		if port == 0 {
			ps, err := FreePorts(3)
			if err != nil {
				return nil, err
			}
			r.Port, r.DistPort, r.EpmdPort = ps[0], ps[1], ps[2]
		} else {
			r.Port, r.DistPort, r.EpmdPort = port, port+20000, port-1200
			for _, p := range []int{r.Port, r.DistPort, r.EpmdPort} {
				if portOpen(p) {
					return nil, fmt.Errorf("rabbitmq: 127.0.0.1:%d is already in use", p)
				}
			}
		}
		r.Node = fmt.Sprintf("lxcagent-%d-%d@localhost", os.Getpid(), r.Port)
		lastErr = r.start(ctx)
		if lastErr == nil {
			return r, nil
		}
		// Retry on new ports only when a process died at startup (a port
		// taken meanwhile), not when the node was merely slow.
		if ctx.Err() != nil || !errors.Is(lastErr, errExited) {
			break
		}
	}
	return nil, lastErr
}

// URL returns the AMQP URL of the node.
func (r *Rabbit) URL() string {
	return fmt.Sprintf("amqp://%s:%s@127.0.0.1:%d/", RabbitUser, RabbitPass, r.Port)
}

// TransportURL returns the oslo.messaging transport URL of the node.
func (r *Rabbit) TransportURL() string {
	return fmt.Sprintf("rabbit://%s:%s@127.0.0.1:%d/", RabbitUser, RabbitPass, r.Port)
}

// LogDir returns the directory with the node's own log file.
func (r *Rabbit) LogDir() string { return filepath.Join(r.Dir, "log") }

// Pid returns the pid of the running node's rabbitmq-server process (the
// leader of its process group), or 0.
func (r *Rabbit) Pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.node == nil || r.node.exited() {
		return 0
	}
	return r.node.Pid()
}

func (r *Rabbit) start(ctx context.Context) error {
	for _, d := range []string{"etc", "home", "mnesia", "log"} {
		if err := os.MkdirAll(filepath.Join(r.Dir, d), 0o755); err != nil {
			return err
		}
	}
	conf := fmt.Sprintf(`listeners.tcp.1 = 127.0.0.1:%d
distribution.listener.interface = 127.0.0.1
distribution.listener.port_range.min = %d
distribution.listener.port_range.max = %d
default_user = %s
default_pass = %s
default_vhost = /
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
loopback_users = none
log.file.level = info
log.console = false
`, r.Port, r.DistPort, r.DistPort, RabbitUser, RabbitPass)
	if err := os.WriteFile(filepath.Join(r.Dir, "etc", "rabbitmq.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(r.Dir, "etc", "enabled_plugins"), []byte("[].\n"), 0o644); err != nil {
		return err
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.startEpmd(ctx); err != nil {
		return err
	}
	if err := r.startNodeLocked(ctx); err != nil {
		_ = r.epmd.stop(5 * time.Second)
		r.epmd = nil
		return err
	}
	return nil
}

func (r *Rabbit) env() []string {
	etc := filepath.Join(r.Dir, "etc")
	return serviceEnv([]string{"RABBITMQ_", "ERL_", "NOTIFY_SOCKET"},
		"HOME="+filepath.Join(r.Dir, "home"),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		fmt.Sprintf("ERL_EPMD_PORT=%d", r.EpmdPort),
		"RABBITMQ_NODENAME="+r.Node,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		fmt.Sprintf("RABBITMQ_NODE_PORT=%d", r.Port),
		fmt.Sprintf("RABBITMQ_DIST_PORT=%d", r.DistPort),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(etc, "rabbitmq.conf"),
		// Not created: keeps /etc/rabbitmq/{advanced.config,rabbitmq-env.conf} out.
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(etc, "advanced.config"),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(etc, "rabbitmq-env.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(etc, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(r.Dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+r.LogDir(),
		"RABBITMQ_PID_FILE="+filepath.Join(r.Dir, "rabbitmq.pid"),
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
	)
}

func (r *Rabbit) startEpmd(ctx context.Context) error {
	p, err := startProc("epmd", filepath.Join(r.Dir, "epmd.out"), r.env(),
		epmdBin, "-address", "127.0.0.1", "-port", fmt.Sprint(r.EpmdPort))
	if err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for !portOpen(r.EpmdPort) {
		if p.exited() {
			return fmt.Errorf("%w: %w", errExited, p.exitError())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = p.stop(5 * time.Second)
			return fmt.Errorf("epmd did not listen on 127.0.0.1:%d", r.EpmdPort)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.epmd = p
	return nil
}

func (r *Rabbit) startNodeLocked(ctx context.Context) error {
	if r.node != nil && !r.node.exited() {
		return errors.New("rabbitmq node already running")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, RabbitStartTimeout)
		defer cancel()
	}
	p, err := startProc("rabbitmq-server", filepath.Join(r.Dir, "rabbitmq.out"), r.env(), rabbitServer)
	if err != nil {
		return err
	}
	url := r.URL()
	for {
		c, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
		if err == nil {
			c.Close()
			r.node = p
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%w: %w\n%s", errExited, p.exitError(), tailFile(r.nodeLog(), 30))
		}
		select {
		case <-ctx.Done():
			_ = p.stop(rabbitStopTimeout)
			return fmt.Errorf("rabbitmq on 127.0.0.1:%d not ready: %w (last dial error: %v)\n%s",
				r.Port, ctx.Err(), err, tailFile(r.nodeLog(), 30))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (r *Rabbit) nodeLog() string {
	return filepath.Join(r.LogDir(), r.Node+".log")
}

// StopNode stops the RabbitMQ node gracefully (SIGTERM, SIGKILL after 30 s)
// and keeps epmd, the ports and the data dir, so StartNode can bring the same
// node back. Clients see a connection.close (320 CONNECTION_FORCED).
func (r *Rabbit) StopNode() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.node.stop(rabbitStopTimeout)
	r.node = nil
	return err
}

// KillNode kills the node's process group with SIGKILL: clients see the TCP
// connection drop without an AMQP close. StartNode brings it back.
func (r *Rabbit) KillNode() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.node.kill()
	r.node = nil
	return err
}

// StartNode starts the node again (after StopNode or KillNode) on the same
// ports with the same data dir and waits until AMQP answers.
func (r *Rabbit) StartNode(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.epmd == nil || r.epmd.exited() {
		if err := r.startEpmd(ctx); err != nil {
			return err
		}
	}
	return r.startNodeLocked(ctx)
}

// Restart is StopNode followed by StartNode.
func (r *Rabbit) Restart(ctx context.Context) error {
	if err := r.StopNode(); err != nil {
		return err
	}
	return r.StartNode(ctx)
}

// Stop stops the node and its epmd. The data dir is left in place.
func (r *Rabbit) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.node.stop(rabbitStopTimeout)
	r.node = nil
	if e := r.epmd.stop(5 * time.Second); err == nil {
		err = e
	}
	r.epmd = nil
	return err
}

// RabbitMQ returns an AMQP URL for the test. If LXC_AGENT_AMQP_URL is set it
// is returned as is (a broker shared by the whole `make test` run; tests must
// then use their own queue/exchange names). Otherwise a private node is
// started under t.TempDir() and stopped by t.Cleanup; the node's logs are
// printed when the test failed.
func RabbitMQ(t testing.TB) string {
	t.Helper()
	if u := os.Getenv(EnvAMQPURL); u != "" {
		return u
	}
	return StartRabbitMQT(t).URL()
}

// StartRabbitMQT starts a private node for the test (ignoring
// LXC_AGENT_AMQP_URL), for tests that need to Restart or Kill the broker.
func StartRabbitMQT(t testing.TB) *Rabbit {
	t.Helper()
	dir := t.TempDir()
	start := time.Now()
	r, err := StartRabbitMQ(context.Background(), dir, 0)
	if err != nil {
		t.Fatalf("start rabbitmq: %v", err)
	}
	t.Logf("rabbitmq %s ready on 127.0.0.1:%d in %.1fs (pid %d, dir %s)",
		r.Node, r.Port, time.Since(start).Seconds(), r.Pid(), dir)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("rabbitmq logs:\n%s", tailFile(r.nodeLog(), 40))
		}
		if err := r.Stop(); err != nil {
			t.Errorf("stop rabbitmq: %v", err)
		}
	})
	return r
}

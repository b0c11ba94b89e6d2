// Package notify sends nova-compute's instance notifications (nova 26.2.2,
// oslo.messaging 14.0.3) when, and only when, the deployment configured a
// notification driver: the legacy "unversioned" compute.instance.* events
// with nova's flat info_from_instance payload and/or the versioned
// instance.* events whose payload is an InstanceActionPayload (or
// InstanceCreatePayload, ...) object primitive.
//
// Sending never blocks the caller: InstanceAction renders the messages at
// once (the instance is a snapshot of that moment, as in nova) and hands
// them to a bounded queue that a background publisher drains; when the
// queue is full the notification is dropped, logged and counted.
package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// Notification formats ([notifications] notification_format).
const (
	FormatUnversioned = "unversioned" // nova Zed's default
	FormatVersioned   = "versioned"
	FormatBoth        = "both"
)

// Drivers ([oslo_messaging_notifications] driver) this package offers.
// oslo.messaging 14 has no "messagingv1": "messaging" is the 1.0 format (the
// message dict as the AMQP body, no envelope) and "messagingv2" the 2.0
// envelope. oslo's other drivers ("routing", "test") are refused: New logs
// a warning naming the driver and sends nothing through it.
const (
	DriverMessaging   = "messaging"
	DriverMessagingV2 = "messagingv2"
	DriverLog         = "log"
	DriverNoop        = "noop"
)

// Phases of an instance action.
const (
	PhaseStart = "start"
	PhaseEnd   = "end"
	PhaseError = "error"
)

// Config is the notification part of nova.conf.
type Config struct {
	// Driver is [oslo_messaging_notifications] driver (multi-valued,
	// default empty). Nothing is sent unless it names messaging,
	// messagingv2 or log.
	Driver []string
	// Topics is [oslo_messaging_notifications] topics, used by the legacy
	// notifier; empty means ["notifications"].
	Topics []string
	// TransportURL is [oslo_messaging_notifications] transport_url; when
	// set it replaces the RPC transport's URL (the other rabbit options
	// still come from the TransportConfig given to New).
	TransportURL string
	// Format is [notifications] notification_format: unversioned (also
	// when empty), versioned or both.
	Format string
	// VersionedTopics is [notifications] versioned_notifications_topics;
	// empty means ["versioned_notifications"].
	VersionedTopics []string
	// Host is [DEFAULT] host: publisher ids are "compute.<host>" (legacy)
	// and "nova-compute:<host>" (versioned).
	Host string
	// Exchange is [DEFAULT] control_exchange; empty means "nova".
	Exchange string
	// ImageURLBase is what nova puts before "/images/<image_ref>" in the
	// legacy payload's image_ref_url: [glance] api_servers[0] when set,
	// else the image endpoint from the catalog (see GlanceEndpointBase).
	// Empty means image_ref_url is the bare image_ref, as nova does when
	// it cannot find an endpoint for a token-less context.
	ImageURLBase string
	// InstanceNameTemplate is [DEFAULT] instance_name_template (empty =
	// "instance-%08x"), for InstanceCreatePayload.instance_name.
	InstanceNameTemplate string

	// QueueSize bounds the notifications waiting for the broker (default
	// 1000); beyond it new notifications are dropped.
	QueueSize int
	// FlushTimeout bounds how long Close keeps publishing what is queued
	// (default 5s).
	FlushTimeout time.Duration
	// PublishTimeout bounds one publish and its broker confirm (default
	// 10s).
	PublishTimeout time.Duration
}

// Stats are the notifier's counters.
type Stats struct {
	Sent    uint64 // published and confirmed by the broker
	Dropped uint64 // not queued (queue full, or notifier closed)
	Failed  uint64 // given up after publish attempts failed or at Close
	Queued  int    // waiting now
}

// Notifier sends instance notifications. A nil or disabled Notifier
// accepts every call and does nothing.
type Notifier struct {
	cfg       Config
	log       *slog.Logger
	legacy    []string // topics of the legacy notifier (nil = off)
	versioned []string // topics of the versioned notifier (nil = off)
	v1, v2    bool     // messaging / messagingv2 drivers
	logDriver bool

	queue     chan outMsg
	stop      chan struct{}
	done      chan struct{}
	runCtx    context.Context
	cancelRun context.CancelFunc
	pub       *publisher
	closeOnce sync.Once
	closed    atomic.Bool

	sent, dropped, failed atomic.Uint64
}

// outMsg is one AMQP publish.
type outMsg struct {
	key   string // routing key <topic>.<priority>
	body  []byte
	event string
}

// New returns a notifier for cfg; it is a no-op notifier (Enabled false)
// when the configuration sends nothing. It does not connect: a background
// publisher connects on demand and reconnects with backoff, so a broker
// that is down never delays the caller. ctx only supplies values for logs;
// the publisher runs until Close.
func New(ctx context.Context, cfg Config, tc rpc.TransportConfig, log *slog.Logger) (*Notifier, error) {
	n, err := configure(ctx, cfg, tc, log)
	if err != nil {
		return nil, err
	}
	if n.pub != nil {
		go n.run()
	}
	if n.Enabled() {
		n.log.InfoContext(ctx, "notifications enabled", "format", n.cfg.Format, "drivers", n.cfg.Driver,
			"legacy_topics", n.legacy, "versioned_topics", n.versioned, "exchange", n.cfg.Exchange)
	}
	return n, nil
}

// configure is New without starting the publisher.
func configure(ctx context.Context, cfg Config, tc rpc.TransportConfig, log *slog.Logger) (*Notifier, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "notify")
	switch cfg.Format {
	case "":
		cfg.Format = FormatUnversioned
	case FormatUnversioned, FormatVersioned, FormatBoth:
	default:
		return nil, fmt.Errorf("[notifications] notification_format %q: want unversioned, versioned or both", cfg.Format)
	}
	if len(cfg.Topics) == 0 {
		cfg.Topics = []string{"notifications"}
	}
	if len(cfg.VersionedTopics) == 0 {
		cfg.VersionedTopics = []string{"versioned_notifications"}
	}
	if cfg.Exchange == "" {
		cfg.Exchange = "nova"
	}
	if cfg.InstanceNameTemplate == "" {
		cfg.InstanceNameTemplate = "instance-%08x"
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1000
	}
	if cfg.FlushTimeout <= 0 {
		cfg.FlushTimeout = 5 * time.Second
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = 10 * time.Second
	}
	n := &Notifier{cfg: cfg, log: log}
	for _, d := range cfg.Driver {
		switch strings.TrimSpace(d) {
		case DriverMessaging:
			n.v1 = true
		case DriverMessagingV2:
			n.v2 = true
		case DriverLog:
			n.logDriver = true
		case DriverNoop, "":
		default:
			log.WarnContext(ctx, "notification driver not supported; ignored", "driver", d)
		}
	}
	if !n.v1 && !n.v2 && !n.logDriver {
		return n, nil
	}
	// nova/rpc.py init(): which of the two notifiers get the real drivers.
	if cfg.Format == FormatUnversioned || cfg.Format == FormatBoth {
		n.legacy = cfg.Topics
	}
	if cfg.Format == FormatVersioned || cfg.Format == FormatBoth {
		n.versioned = cfg.VersionedTopics
	}
	if n.v1 || n.v2 {
		if cfg.TransportURL != "" {
			tc.URL = cfg.TransportURL
		}
		p, err := newPublisher(tc, cfg.Exchange, log)
		if err != nil {
			return nil, fmt.Errorf("notification transport: %w", err)
		}
		n.pub = p
		n.queue = make(chan outMsg, cfg.QueueSize)
		n.stop = make(chan struct{})
		n.done = make(chan struct{})
		n.runCtx, n.cancelRun = context.WithCancel(context.WithoutCancel(ctx))
	}
	return n, nil
}

// Enabled reports whether notifications go anywhere.
func (n *Notifier) Enabled() bool {
	return n != nil && (n.v1 || n.v2 || n.logDriver) && (n.legacy != nil || n.versioned != nil)
}

// Stats returns the counters.
func (n *Notifier) Stats() Stats {
	if n == nil {
		return Stats{}
	}
	return Stats{Sent: n.sent.Load(), Dropped: n.dropped.Load(), Failed: n.failed.Load(), Queued: len(n.queue)}
}

// Option adds what some events carry besides the instance.
type Option func(*options)

type options struct {
	snapshotImage string
	bdms          []*novaobj.Object
	bdmsSet       bool
	networkInfo   novaobj.NetworkInfo
	networkSet    bool
	imageName     *string
	faultModule   string
	faultFunction string
}

// WithSnapshotImage sets snapshot_image_id (instance.snapshot.*: nova's
// InstanceActionSnapshotPayload requires it).
func WithSnapshotImage(imageID string) Option {
	return func(o *options) { o.snapshotImage = imageID }
}

// WithBDMs gives the instance's BlockDeviceMapping primitives; the
// versioned payload's block_devices lists those with a volume_id. Without
// it block_devices is [] for the events where nova passes the BDMs
// (create, delete, shutdown, reboot, resume, rebuild) and null otherwise
// (nova's default [notifications] bdms_in_notifications=false).
func WithBDMs(bdms []*novaobj.Object) Option {
	return func(o *options) { o.bdms, o.bdmsSet = bdms, true }
}

// WithNetworkInfo sets the network_info whose fixed IPs the legacy payload
// lists as fixed_ips (nova passes it for create.end and rebuild.end; by
// default those two use the instance's info_cache).
func WithNetworkInfo(nw novaobj.NetworkInfo) Option {
	return func(o *options) { o.networkInfo, o.networkSet = nw, true }
}

// WithImageName sets the legacy payload's image_name (create.start,
// rebuild.start and rebuild.end carry it, null when not given).
func WithImageName(name string) Option {
	return func(o *options) { o.imageName = &name }
}

// WithFaultOrigin sets the fault payload's module_name and function_name
// (nova: where the exception was raised).
func WithFaultOrigin(module, function string) Option {
	return func(o *options) { o.faultModule, o.faultFunction = module, function }
}

// InstanceAction sends what nova-compute sends for one phase of an instance
// action: the legacy compute.instance.<action>.<phase> and/or the versioned
// instance.<action>.<phase>, depending on the configuration. fault is the
// error of an "error" phase (nova: the exception); it makes the versioned
// notification ERROR priority and adds nova's fault fields to both.
// It never blocks and never fails: problems are logged and counted.
func (n *Notifier) InstanceAction(ctx context.Context, rctx *rpc.RequestContext, inst *novaobj.Instance, action, phase string, fault error, opts ...Option) {
	if !n.Enabled() || inst == nil {
		return
	}
	if n.closed.Load() {
		n.dropped.Add(1)
		n.log.DebugContext(ctx, "notifier closed; notification dropped", "action", action, "phase", phase)
		return
	}
	var o options
	for _, f := range opts {
		f(&o)
	}
	now := time.Now().UTC()
	c := newNotifContext(rctx, now)
	if n.legacy != nil {
		suffix := action + "." + phase
		priority := "INFO"
		if strings.HasSuffix(suffix, "error") {
			priority = "ERROR"
		}
		payload, err := n.legacyPayload(c, inst, action, phase, fault, &o)
		if err != nil {
			n.log.ErrorContext(ctx, "cannot build legacy notification", "event_type", "compute.instance."+suffix, "instance", inst.UUID, "error", err)
		} else {
			n.emit(ctx, n.legacy, notification{
				publisherID: "compute." + n.cfg.Host,
				eventType:   "compute.instance." + suffix,
				priority:    priority,
				payload:     payload,
			}, c, now)
		}
	}
	if n.versioned != nil {
		priority := "INFO"
		if fault != nil || phase == PhaseError {
			priority = "ERROR"
		}
		eventType := "instance." + action
		if phase != "" {
			eventType += "." + phase
		}
		payload, err := n.versionedPayload(c, inst, action, fault, &o)
		if err != nil {
			n.log.ErrorContext(ctx, "cannot build versioned notification", "event_type", eventType, "instance", inst.UUID, "error", err)
		} else {
			n.emit(ctx, n.versioned, notification{
				publisherID: "nova-compute:" + n.cfg.Host,
				eventType:   eventType,
				priority:    priority,
				payload:     payload,
			}, c, now)
		}
	}
}

// emit renders one notification for every topic and driver and queues it.
func (n *Notifier) emit(ctx context.Context, topics []string, nt notification, c *notifContext, now time.Time) {
	msgs, err := nt.render(topics, c, now, n.v1, n.v2)
	if err != nil {
		n.log.ErrorContext(ctx, "cannot encode notification", "event_type", nt.eventType, "error", err)
		n.failed.Add(1)
		return
	}
	if n.logDriver {
		n.logNotification(ctx, nt, now)
	}
	for _, m := range msgs {
		n.enqueue(ctx, m)
	}
}

func (n *Notifier) enqueue(ctx context.Context, m outMsg) {
	if n.queue == nil {
		return
	}
	select {
	case n.queue <- m:
	default:
		d := n.dropped.Add(1)
		if d == 1 || d%100 == 0 {
			n.log.WarnContext(ctx, "notification queue full; notification dropped",
				"event_type", m.event, "routing_key", m.key, "dropped_total", d, "queue_size", cap(n.queue))
		}
	}
}

// logNotification is oslo's "log" driver: the message as JSON at the
// notification's priority.
func (n *Notifier) logNotification(ctx context.Context, nt notification, now time.Time) {
	level := slog.LevelInfo
	switch nt.priority {
	case "ERROR", "CRITICAL":
		level = slog.LevelError
	case "WARN":
		level = slog.LevelWarn
	case "DEBUG":
		level = slog.LevelDebug
	}
	n.log.Log(ctx, level, "notification", "event_type", nt.eventType, "publisher_id", nt.publisherID,
		"priority", nt.priority, "timestamp", pyDatetimeStr(now), "payload", string(nt.payload))
}

// run publishes queued notifications until Close.
func (n *Notifier) run() {
	defer close(n.done)
	defer n.pub.close()
	for {
		select {
		case m := <-n.queue:
			n.deliver(m)
		case <-n.stop:
			for {
				select {
				case m := <-n.queue:
					if n.runCtx.Err() != nil {
						n.failed.Add(1)
						continue
					}
					n.deliver(m)
				default:
					return
				}
			}
		}
	}
}

// maxAttempts bounds publish attempts of one message on live connections;
// waiting for the broker to come back does not count.
const maxAttempts = 3

func (n *Notifier) deliver(m outMsg) {
	backoff := time.Second
	attempts := 0
	for {
		if n.runCtx.Err() != nil {
			n.failed.Add(1)
			return
		}
		if err := n.pub.connect(n.runCtx); err != nil {
			if n.runCtx.Err() != nil {
				n.failed.Add(1)
				return
			}
			n.log.Warn("notification broker unavailable; retrying", "error", err, "retry_in", backoff.String())
			select {
			case <-n.runCtx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		ctx, cancel := context.WithTimeout(n.runCtx, n.cfg.PublishTimeout)
		err := n.pub.publish(ctx, m.key, m.body)
		cancel()
		if err == nil {
			n.sent.Add(1)
			return
		}
		n.pub.reset()
		attempts++
		if attempts >= maxAttempts || errors.Is(err, context.Canceled) {
			n.failed.Add(1)
			n.log.Error("notification not sent", "event_type", m.event, "routing_key", m.key, "attempts", attempts, "error", err)
			return
		}
		n.log.Warn("notification publish failed; retrying", "event_type", m.event, "error", err)
	}
}

// Close publishes what is queued (up to FlushTimeout), then disconnects.
// Later calls of InstanceAction are dropped.
func (n *Notifier) Close() error {
	if n == nil || n.done == nil {
		return nil
	}
	n.closeOnce.Do(func() {
		n.closed.Store(true)
		close(n.stop)
		t := time.AfterFunc(n.cfg.FlushTimeout, n.cancelRun)
		<-n.done
		t.Stop()
		n.cancelRun()
		if q := n.Stats(); q.Failed > 0 || q.Dropped > 0 {
			n.log.Info("notifier closed", "sent", q.Sent, "dropped", q.Dropped, "failed", q.Failed)
		}
	})
	return nil
}

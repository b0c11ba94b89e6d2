package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"runtime/debug"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ServerConfig configures an RPC server for Target(topic, server).
type ServerConfig struct {
	Transport TransportConfig
	Exchange  string // control_exchange; "nova" for nova's services
	Topic     string // "compute"
	Server    string // the host name
	// Concurrency bounds handlers running at once (executor_thread_pool_size).
	Concurrency int
	// Journal, when set, makes casts durable before they are acknowledged.
	Journal *Journal
	// ShutdownGrace bounds how long in-flight handlers may run after Run's
	// context is cancelled.
	ShutdownGrace time.Duration
	Logger        *slog.Logger
	// Observe, if set, is called once per handled message (metrics).
	Observe func(method, result string, d time.Duration)
}

// Server consumes the topic, server and fanout queues the way an
// oslo.messaging RPC server does and dispatches to endpoints.
type Server struct {
	cfg  ServerConfig
	disp *Dispatcher
	log  *slog.Logger
	exec *executor
	seen *idCache

	fanoutQueue string
	ready       chan struct{}
	readyOnce   sync.Once

	pubMu   sync.Mutex
	pub     *amqp.Channel
	pubCond chan struct{} // closed and replaced whenever pub changes
}

// NewServer returns a server; Run starts it.
func NewServer(cfg ServerConfig, disp *Dispatcher) *Server {
	if cfg.Exchange == "" {
		cfg.Exchange = "nova"
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = 60 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		cfg: cfg, disp: disp, log: log.With("component", "rpc"),
		exec: newExecutor(cfg.Concurrency), seen: newIDCache(1024),
		fanoutQueue: cfg.Topic + "_fanout_" + newID(),
		ready:       make(chan struct{}), pubCond: make(chan struct{}),
	}
}

// Ready is closed once the consumers are up for the first time.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Run replays journaled casts, then consumes until ctx is cancelled,
// reconnecting with backoff whenever the broker goes away. On cancel it stops
// consuming, lets in-flight handlers finish (up to ShutdownGrace) and returns.
func (s *Server) Run(ctx context.Context) error {
	urls, err := s.cfg.Transport.brokerURLs()
	if err != nil {
		return err
	}
	// Handlers run on a context that outlives ctx by the shutdown grace.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	if err := s.replay(work); err != nil {
		return err
	}
	backoff := time.Second
	for attempt := 0; ctx.Err() == nil; attempt++ {
		u := urls[attempt%len(urls)]
		started := time.Now()
		err := s.session(ctx, work, u)
		if ctx.Err() != nil {
			break
		}
		if time.Since(started) > 30*time.Second {
			backoff = time.Second
		}
		s.log.Warn("broker connection lost; reconnecting", "error", err, "retry_in", backoff.String(), "broker", redact(u))
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
	s.drain()
	return nil
}

func (s *Server) drain() {
	timer := time.NewTimer(s.cfg.ShutdownGrace)
	defer timer.Stop()
	stop := make(chan struct{})
	go func() { <-timer.C; close(stop) }()
	if !s.exec.Wait(stop) {
		s.log.Warn("shutdown grace expired with handlers still running", "grace", s.cfg.ShutdownGrace.String())
	}
}

// replay re-runs casts that were recorded but not finished before a restart.
func (s *Server) replay(work context.Context) error {
	if s.cfg.Journal == nil {
		return nil
	}
	entries, err := s.cfg.Journal.Pending()
	if err != nil {
		return err
	}
	for _, e := range entries {
		m, err := ParseMessage(e.Body)
		if err != nil {
			s.log.Error("dropping unreadable journal entry", "id", e.ID, "error", err)
			_ = s.cfg.Journal.Done(e.ID)
			continue
		}
		meth, err := s.disp.Lookup(m)
		if err != nil {
			_ = s.cfg.Journal.Done(e.ID)
			continue
		}
		s.log.Info("replaying unfinished cast", "method", m.Method, "id", e.ID)
		id := e.ID
		s.seen.seen(m.UniqueID)
		s.exec.Submit(serializeKey(meth, m), func() { s.invokeJournaled(work, m, meth, id) })
	}
	return nil
}

// session runs one broker connection until it fails or ctx is cancelled.
func (s *Server) session(ctx, work context.Context, u string) error {
	conn, err := s.cfg.Transport.dial(u)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	pub, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	returns := pub.NotifyReturn(make(chan amqp.Return, 16))
	go func() {
		for r := range returns {
			s.log.Warn("reply undeliverable: reply queue is gone", "routing_key", r.RoutingKey, "reason", r.ReplyText)
		}
	}()
	queues, err := s.declare(ch)
	if err != nil {
		return err
	}
	cases := make([]<-chan amqp.Delivery, len(queues))
	tags := make([]string, len(queues))
	for i, q := range queues {
		tags[i] = fmt.Sprintf("%d", i+1)
		d, err := ch.Consume(q, tags[i], false, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("consume %s: %w", q, err)
		}
		cases[i] = d
	}
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	s.setPublisher(pub)
	defer s.setPublisher(nil)
	s.readyOnce.Do(func() { close(s.ready) })
	s.log.Info("consuming", "exchange", s.cfg.Exchange, "topic", s.cfg.Topic, "server", s.cfg.Server, "broker", redact(u))
	for {
		var d amqp.Delivery
		var ok bool
		select {
		case <-ctx.Done():
			for _, t := range tags {
				_ = ch.Cancel(t, false)
			}
			s.drain() // replies still need this connection
			return nil
		case e := <-closed:
			if e == nil {
				return errors.New("connection closed")
			}
			return e
		case d, ok = <-cases[0]:
		case d, ok = <-cases[1]:
		case d, ok = <-cases[2]:
		}
		if !ok {
			return errors.New("consumer cancelled by the broker")
		}
		s.handle(work, d)
	}
}

// declare creates exactly what oslo's rabbit driver declares for an RPC
// server: the control exchange, the topic and topic.server queues, and a
// fanout exchange with a per-process queue.
func (s *Server) declare(ch *amqp.Channel) ([]string, error) {
	tc := s.cfg.Transport
	if err := ch.ExchangeDeclare(s.cfg.Exchange, "topic", tc.DurableQueues, tc.AutoDelete, false, false, nil); err != nil {
		return nil, fmt.Errorf("declare exchange %s: %w", s.cfg.Exchange, err)
	}
	topicQueues := []string{s.cfg.Topic, s.cfg.Topic + "." + s.cfg.Server}
	for _, q := range topicQueues {
		if _, err := ch.QueueDeclare(q, tc.DurableQueues, tc.AutoDelete, false, false, nil); err != nil {
			return nil, fmt.Errorf("declare queue %s: %w", q, err)
		}
		if err := ch.QueueBind(q, q, s.cfg.Exchange, false, nil); err != nil {
			return nil, fmt.Errorf("bind queue %s: %w", q, err)
		}
	}
	fx := s.cfg.Topic + "_fanout"
	if err := ch.ExchangeDeclare(fx, "fanout", false, true, false, false, nil); err != nil {
		return nil, fmt.Errorf("declare exchange %s: %w", fx, err)
	}
	if _, err := ch.QueueDeclare(s.fanoutQueue, false, false, false, false, amqp.Table{"x-expires": int32(1800000)}); err != nil {
		return nil, fmt.Errorf("declare queue %s: %w", s.fanoutQueue, err)
	}
	if err := ch.QueueBind(s.fanoutQueue, s.cfg.Topic, fx, false, nil); err != nil {
		return nil, fmt.Errorf("bind queue %s: %w", s.fanoutQueue, err)
	}
	return append(topicQueues, s.fanoutQueue), nil
}

func (s *Server) handle(work context.Context, d amqp.Delivery) {
	m, err := ParseMessage(d.Body)
	if err != nil {
		s.log.Error("malformed message dropped", "error", err, "routing_key", d.RoutingKey, "body", truncate(d.Body, 512))
		s.observe("", "malformed", 0)
		if m == nil || !m.IsCall() {
			m = salvageReplyAddress(d.Body)
		}
		if m != nil && m.IsCall() {
			_ = d.Ack(false)
			s.reply(work, m, nil, err)
			return
		}
		_ = d.Reject(false)
		return
	}
	if m.UniqueID != "" && s.seen.seen(m.UniqueID) {
		s.log.Info("duplicate message ignored", "unique_id", m.UniqueID, "method", m.Method)
		_ = d.Ack(false)
		return
	}
	meth, lerr := s.disp.Lookup(m)
	if m.IsCall() {
		_ = d.Ack(false) // like oslo: a call's caller times out, it is never replayed
		if lerr != nil {
			s.log.Warn("rpc refused", "method", m.Method, "version", m.Version, "namespace", m.Namespace, "error", lerr)
			s.observe(m.Method, "error", 0)
			s.reply(work, m, nil, lerr)
			return
		}
		s.exec.Submit(serializeKey(meth, m), func() { s.invoke(work, m, meth) })
		return
	}
	if lerr != nil {
		s.log.Warn("cast dropped", "method", m.Method, "version", m.Version, "namespace", m.Namespace, "error", lerr)
		s.observe(m.Method, "error", 0)
		_ = d.Ack(false)
		return
	}
	id := m.UniqueID
	if !validJournalID(id) {
		id = newID()
	}
	if j := s.cfg.Journal; j != nil {
		if err := j.Record(id, d.Body); err != nil {
			// Not durable yet: give the message back rather than lose it.
			s.log.Error("cannot record cast; requeueing", "method", m.Method, "error", err)
			time.Sleep(time.Second)
			_ = d.Nack(false, true)
			return
		}
	}
	_ = d.Ack(false)
	s.exec.Submit(serializeKey(meth, m), func() { s.invokeJournaled(work, m, meth, id) })
}

// invokeJournaled runs a cast and forgets its journal entry, unless the
// agent is shutting down under it: then the entry stays and the next start
// runs the cast again.
func (s *Server) invokeJournaled(work context.Context, m *Message, meth Method, id string) {
	s.invoke(work, m, meth)
	j := s.cfg.Journal
	if j == nil {
		return
	}
	if work.Err() != nil {
		s.log.Warn("cast interrupted by shutdown; it will run again at the next start", "method", m.Method, "id", id)
		return
	}
	if err := j.Done(id); err != nil {
		s.log.Error("journal", "error", err)
	}
}

func (s *Server) invoke(ctx context.Context, m *Message, meth Method) {
	start := time.Now()
	req := &Request{Method: m.Method, Args: m.Args, Context: m.Context, Cast: !m.IsCall()}
	stopHB := make(chan struct{})
	if m.IsCall() && m.Timeout != nil && *m.Timeout > 0 {
		go s.heartbeat(ctx, m, time.Duration(*m.Timeout*float64(time.Second))/2, stopHB)
	}
	res, err := safeCall(ctx, meth.Handler, req)
	close(stopHB)
	if m.IsCall() {
		s.reply(ctx, m, res, err)
	}
	result := "success"
	if err != nil {
		result = "error"
		ex := ToException(err)
		s.log.Warn("rpc failed", "method", m.Method, "request_id", m.Context.RequestID,
			"exception", ex.Module+"."+ex.Class, "error", err)
	}
	s.observe(m.Method, result, time.Since(start))
}

func safeCall(ctx context.Context, h Handler, req *Request) (res any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler %s panicked: %v\n%s", req.Method, r, debug.Stack())
		}
	}()
	return h(ctx, req)
}

// heartbeat sends oslo's call-monitor keepalive replies (ending=false).
func (s *Server) heartbeat(ctx context.Context, m *Message, every time.Duration, stop <-chan struct{}) {
	if every < 100*time.Millisecond {
		every = 100 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
			body, _ := Wrap(map[string]any{"result": nil, "failure": nil, "ending": false,
				"_msg_id": m.MsgID, "_unique_id": newID()})
			if err := s.publish(ctx, m.ReplyQ, body); err != nil {
				s.log.Warn("call heartbeat not sent", "error", err)
			}
		}
	}
}

func (s *Server) reply(ctx context.Context, m *Message, res any, err error) {
	inner := map[string]any{"result": res, "failure": nil, "ending": true,
		"_msg_id": m.MsgID, "_unique_id": newID()}
	if err != nil {
		inner["result"] = nil
		inner["failure"] = serializeFailure(err)
	}
	body, werr := Wrap(inner)
	if werr != nil {
		inner["result"] = nil
		inner["failure"] = serializeFailure(fmt.Errorf("result of %s cannot be encoded: %w", m.Method, werr))
		body, _ = Wrap(inner)
	}
	if perr := s.publish(ctx, m.ReplyQ, body); perr != nil {
		s.log.Error("reply not sent", "method", m.Method, "reply_q", m.ReplyQ, "error", perr)
	}
}

func (s *Server) setPublisher(ch *amqp.Channel) {
	s.pubMu.Lock()
	s.pub = ch
	close(s.pubCond)
	s.pubCond = make(chan struct{})
	s.pubMu.Unlock()
}

// publish sends a reply through the default exchange, waiting up to a
// minute for a connection when the broker is away.
func (s *Server) publish(ctx context.Context, replyQ string, body []byte) error {
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for {
		s.pubMu.Lock()
		pub, changed := s.pub, s.pubCond
		if pub != nil {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := pub.PublishWithContext(pctx, "", replyQ, true, false, publishing(body))
			cancel()
			s.pubMu.Unlock()
			return err
		}
		s.pubMu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			return errors.New("no broker connection")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *Server) observe(method, result string, d time.Duration) {
	if s.cfg.Observe != nil {
		s.cfg.Observe(method, result, d)
	}
}

var (
	msgIDRE  = regexp.MustCompile(`\\?"_msg_id\\?"\s*:\s*\\?"([0-9a-fA-F-]{1,64})\\?"`)
	replyQRE = regexp.MustCompile(`\\?"_reply_q\\?"\s*:\s*\\?"(reply_[0-9a-zA-Z_.-]{1,128})\\?"`)
)

// salvageReplyAddress finds the reply address of a call whose body cannot be
// decoded, so that the caller gets a remote exception instead of a timeout.
func salvageReplyAddress(body []byte) *Message {
	id := msgIDRE.FindSubmatch(body)
	q := replyQRE.FindSubmatch(body)
	if id == nil || q == nil {
		return nil
	}
	return &Message{MsgID: string(id[1]), ReplyQ: string(q[1]), Context: NewRequestContext(nil)}
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// idCache remembers the last n message ids (oslo keeps 16).
type idCache struct {
	mu   sync.Mutex
	ids  map[string]struct{}
	ring []string
	next int
}

func newIDCache(n int) *idCache {
	return &idCache{ids: make(map[string]struct{}, n), ring: make([]string, n)}
}

// seen records id and reports whether it was already there.
func (c *idCache) seen(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.ids[id]; ok {
		return true
	}
	if old := c.ring[c.next]; old != "" {
		delete(c.ids, old)
	}
	c.ring[c.next] = id
	c.ids[id] = struct{}{}
	c.next = (c.next + 1) % len(c.ring)
	return false
}

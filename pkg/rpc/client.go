package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Target addresses RPCs like oslo_messaging.Target.
type Target struct {
	Topic     string
	Server    string // "" = any server of the topic
	Namespace string
	Version   string
	Fanout    bool // casts only
}

// ErrTimeout is returned when a call gets no reply in time (oslo's
// MessagingTimeout).
var ErrTimeout = errors.New("timed out waiting for a reply")

// ErrConnectionClosed is returned when the client's connection went away
// before a reply came.
var ErrConnectionClosed = errors.New("connection closed")

// Client casts and calls the way oslo's RPCClient does; lxc-agent's
// standalone commands, tests and benchmarks use it.
type Client struct {
	conn     *amqp.Connection
	ch       *amqp.Channel
	exchange string
	replyQ   string
	log      *slog.Logger

	pubMu   sync.Mutex
	mu      sync.Mutex
	waiters map[string]chan reply
	done    chan struct{}
}

type reply struct {
	result  json.RawMessage
	failure *RemoteError
}

// Dial connects and sets up the reply queue.
func Dial(ctx context.Context, tc TransportConfig, exchange string, logger *slog.Logger) (*Client, error) {
	if exchange == "" {
		exchange = "nova"
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	urls, err := tc.brokerURLs()
	if err != nil {
		return nil, err
	}
	var conn *amqp.Connection
	for _, u := range urls {
		if conn, err = tc.dial(u); err == nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	c := &Client{conn: conn, exchange: exchange, log: logger, waiters: map[string]chan reply{}, done: make(chan struct{})}
	if err := c.setup(); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) setup() error {
	var err error
	if c.ch, err = c.conn.Channel(); err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	c.replyQ = "reply_" + newID()
	if _, err := c.ch.QueueDeclare(c.replyQ, false, false, false, false, amqp.Table{"x-expires": int32(1800000)}); err != nil {
		return fmt.Errorf("declare reply queue: %w", err)
	}
	rch, err := c.conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	deliveries, err := rch.Consume(c.replyQ, "", true, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume reply queue: %w", err)
	}
	go c.readReplies(deliveries)
	return nil
}

func (c *Client) readReplies(deliveries <-chan amqp.Delivery) {
	defer close(c.done)
	for d := range deliveries {
		inner, err := Unwrap(d.Body)
		if err != nil {
			c.log.Warn("bad reply", "error", err)
			continue
		}
		var msgID string
		var ending bool
		_ = json.Unmarshal(inner["_msg_id"], &msgID)
		_ = json.Unmarshal(inner["ending"], &ending)
		var failure string
		_ = json.Unmarshal(inner["failure"], &failure)
		c.mu.Lock()
		w := c.waiters[msgID]
		c.mu.Unlock()
		if w == nil {
			continue
		}
		if !ending {
			continue // call-monitor heartbeat
		}
		r := reply{result: inner["result"]}
		if failure != "" {
			r.failure = parseFailure(failure)
		}
		select {
		case w <- r:
		default:
		}
	}
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Done is closed when the client's connection is gone; a long-lived user
// dials a new client then.
func (c *Client) Done() <-chan struct{} { return c.done }

func (c *Client) message(t Target, method string, args map[string]any, rctx *RequestContext) map[string]any {
	if args == nil {
		args = map[string]any{}
	}
	m := map[string]any{"method": method, "args": args, "_unique_id": newID()}
	if t.Version != "" {
		m["version"] = t.Version
	}
	if t.Namespace != "" {
		m["namespace"] = t.Namespace
	}
	for k, v := range rctx.Raw() {
		m["_context_"+k] = v
	}
	return m
}

func (c *Client) publish(ctx context.Context, exchange, key string, body []byte, expiration string) error {
	p := publishing(body)
	p.Expiration = expiration
	c.pubMu.Lock()
	defer c.pubMu.Unlock()
	return c.ch.PublishWithContext(ctx, exchange, key, false, false, p)
}

// Cast sends a one-way message.
func (c *Client) Cast(ctx context.Context, t Target, method string, args map[string]any, rctx *RequestContext) error {
	body, err := Wrap(c.message(t, method, args, rctx))
	if err != nil {
		return err
	}
	if t.Fanout {
		fx := t.Topic + "_fanout"
		c.pubMu.Lock()
		err := c.ch.ExchangeDeclare(fx, "fanout", false, true, false, false, nil)
		c.pubMu.Unlock()
		if err != nil {
			return fmt.Errorf("declare %s: %w", fx, err)
		}
		return c.publish(ctx, fx, "", body, "")
	}
	return c.publish(ctx, c.exchange, routingKey(t), body, "")
}

func routingKey(t Target) string {
	if t.Server != "" {
		return t.Topic + "." + t.Server
	}
	return t.Topic
}

// Call sends a request and waits for its final reply. A failure reply is
// returned as *RemoteError.
func (c *Client) Call(ctx context.Context, t Target, method string, args map[string]any, rctx *RequestContext, timeout time.Duration) (json.RawMessage, error) {
	if t.Fanout {
		return nil, errors.New("a call cannot be fanned out")
	}
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	m := c.message(t, method, args, rctx)
	msgID := newID()
	m["_msg_id"] = msgID
	m["_reply_q"] = c.replyQ
	m["_timeout"] = nil
	body, err := Wrap(m)
	if err != nil {
		return nil, err
	}
	w := make(chan reply, 1)
	c.mu.Lock()
	c.waiters[msgID] = w
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters, msgID)
		c.mu.Unlock()
	}()
	if err := c.publish(ctx, c.exchange, routingKey(t), body, fmt.Sprintf("%d", timeout.Milliseconds())); err != nil {
		return nil, err
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-w:
		if r.failure != nil {
			return nil, r.failure
		}
		return r.result, nil
	case <-timer.C:
		return nil, fmt.Errorf("%s: %w after %s", method, ErrTimeout, timeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.done:
		return nil, fmt.Errorf("%s: %w", method, ErrConnectionClosed)
	}
}

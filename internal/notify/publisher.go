package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// publisher is oslo's notify_send on one connection: it declares the
// control exchange (topic) and, once per routing key and channel, a queue
// named like the routing key bound to it
// (impl_rabbit._publish_and_creates_default_queue), so that notifications
// wait for consumers that bind later. Only the publishing goroutine uses it.
type publisher struct {
	tc       rpc.TransportConfig
	urls     []string
	exchange string
	log      *slog.Logger

	next     int // index of the next URL to try
	conn     *amqp.Connection
	ch       *amqp.Channel
	declared map[string]bool
}

func newPublisher(tc rpc.TransportConfig, exchange string, log *slog.Logger) (*publisher, error) {
	urls, err := tc.BrokerURLs()
	if err != nil {
		return nil, err
	}
	return &publisher{tc: tc, urls: urls, exchange: exchange, log: log}, nil
}

// connect makes sure there is a channel in confirm mode with the exchange
// declared, trying the broker URLs round-robin.
func (p *publisher) connect(ctx context.Context) error {
	if p.ch != nil && !p.ch.IsClosed() && p.conn != nil && !p.conn.IsClosed() {
		return nil
	}
	p.reset()
	u := p.urls[p.next%len(p.urls)]
	p.next++
	conn, err := p.tc.DialContext(ctx, u)
	if err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return fmt.Errorf("open channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		conn.Close()
		return fmt.Errorf("enable publisher confirms: %w", err)
	}
	if err := ch.ExchangeDeclare(p.exchange, "topic", p.tc.DurableQueues, p.tc.AutoDelete, false, false, nil); err != nil {
		conn.Close()
		return fmt.Errorf("declare exchange %s: %w", p.exchange, err)
	}
	p.conn, p.ch, p.declared = conn, ch, map[string]bool{}
	p.log.Info("connected to the notification broker", "broker", rpc.Redact(u), "exchange", p.exchange)
	return nil
}

// publish sends one body with routing key key and waits for the broker's
// confirm.
func (p *publisher) publish(ctx context.Context, key string, body []byte) error {
	if p.ch == nil {
		return errors.New("not connected")
	}
	if !p.declared[key] {
		if _, err := p.ch.QueueDeclare(key, p.tc.DurableQueues, p.tc.AutoDelete, false, false, amqp.Table{}); err != nil {
			return fmt.Errorf("declare queue %s: %w", key, err)
		}
		if err := p.ch.QueueBind(key, key, p.exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %s: %w", key, err)
		}
		p.declared[key] = true
	}
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, p.exchange, key, false, false, amqp.Publishing{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		DeliveryMode:    amqp.Persistent,
		Headers:         amqp.Table{},
		Body:            body,
	})
	if err != nil {
		return fmt.Errorf("publish %s: %w", key, err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return fmt.Errorf("publish %s: waiting for the broker's confirm: %w", key, err)
	}
	if !ok {
		return fmt.Errorf("publish %s: the broker did not accept the message", key)
	}
	return nil
}

// reset drops the connection (the next connect makes a new one).
func (p *publisher) reset() {
	if p.conn != nil {
		_ = p.conn.Close()
	}
	p.conn, p.ch, p.declared = nil, nil, nil
}

func (p *publisher) close() { p.reset() }

package rpc

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/url"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TransportConfig is how to reach the broker, from oslo's transport_url and
// [oslo_messaging_rabbit] options.
type TransportConfig struct {
	// URL is oslo's transport_url: rabbit://user:pass@host:port[,user:pass@host2:port]/vhost
	// (amqp:// and amqps:// URLs are accepted as is).
	URL string
	// Heartbeat is heartbeat_timeout_threshold; 0 disables AMQP heartbeats.
	Heartbeat time.Duration
	// TLS, when non-nil, connects with TLS (oslo's ssl = true).
	TLS *tls.Config
	// DurableQueues and AutoDelete mirror amqp_durable_queues / amqp_auto_delete;
	// they must match what the rest of the cloud declares.
	DurableQueues bool
	AutoDelete    bool
	// ConnectionName is shown by the broker (oslo: "<prog>:<pid>:<uuid>").
	ConnectionName string
}

// brokerURLs expands a transport_url into one AMQP URL per host.
func (t TransportConfig) brokerURLs() ([]string, error) {
	raw := t.URL
	if raw == "" {
		return nil, fmt.Errorf("no transport_url")
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil, fmt.Errorf("transport_url %q has no scheme", redact(raw))
	}
	switch scheme {
	case "rabbit", "amqp":
		scheme = "amqp"
		if t.TLS != nil {
			scheme = "amqps"
		}
	case "amqps":
	default:
		return nil, fmt.Errorf("transport_url scheme %q is not rabbit", scheme)
	}
	hosts, path, _ := strings.Cut(rest, "/")
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	var out []string
	for _, h := range strings.Split(hosts, ",") {
		if h == "" {
			continue
		}
		u := scheme + "://" + h + "/" + path
		if _, err := url.Parse(u); err != nil {
			return nil, fmt.Errorf("transport_url host %q: %w", redact(h), err)
		}
		out = append(out, u)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("transport_url %q names no host", redact(raw))
	}
	return out, nil
}

// redact hides the password of a URL for logs.
func redact(s string) string {
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return s
	}
	start := strings.Index(s, "://")
	if start < 0 {
		start = -3
	}
	userinfo := s[start+3 : at]
	if u, _, ok := strings.Cut(userinfo, ":"); ok {
		return s[:start+3] + u + ":***" + s[at:]
	}
	return s
}

func (t TransportConfig) dial(u string) (*amqp.Connection, error) {
	return t.dialTimeout(u, 10*time.Second)
}

func (t TransportConfig) dialTimeout(u string, timeout time.Duration) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	if t.ConnectionName != "" {
		props.SetClientConnectionName(t.ConnectionName)
	}
	props["capabilities"] = amqp.Table{
		"authentication_failure_close": true,
		"connection.blocked":           true,
		"consumer_cancel_notify":       true,
	}
	conn, err := amqp.DialConfig(u, amqp.Config{
		Heartbeat:       t.Heartbeat,
		TLSClientConfig: t.TLS,
		Properties:      props,
		Locale:          "en_US",
		Dial:            amqp.DefaultDial(timeout),
	})
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", redact(u), err)
	}
	return conn, nil
}

// publishing is the message property set oslo/kombu use for every message.
func publishing(body []byte) amqp.Publishing {
	return amqp.Publishing{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		DeliveryMode:    amqp.Persistent,
		Priority:        0,
		Headers:         amqp.Table{},
		Body:            body,
	}
}

// BrokerURLs expands the transport_url into one AMQP URL per broker host,
// in order (for other AMQP users of the same settings, e.g. notifications).
func (t TransportConfig) BrokerURLs() ([]string, error) { return t.brokerURLs() }

// DialContext connects to one broker URL (from BrokerURLs) like oslo's
// rabbit driver does: client properties, heartbeat, TLS; bounded by ctx.
func (t TransportConfig) DialContext(ctx context.Context, u string) (*amqp.Connection, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	return t.dialTimeout(u, timeout)
}

// Redact hides the password of a broker URL for logs.
func Redact(u string) string { return redact(u) }

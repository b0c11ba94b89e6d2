// Package rpc speaks oslo.messaging's rabbit driver wire format (14.x) so
// that nova's services can drive lxc-agent exactly as they drive nova-compute:
// the 2.0 envelope, the _context_* request context, oslo's dispatcher version
// rules, call replies with heartbeats, and remote exceptions that Python
// rebuilds as nova.exception classes.
package rpc

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
)

// EnvelopeVersion is the oslo.messaging message envelope version we speak.
const EnvelopeVersion = "2.0"

// ErrMalformed classifies a message that cannot be decoded.
var ErrMalformed = errors.New("malformed message")

type envelope struct {
	Version string `json:"oslo.version"`
	Message string `json:"oslo.message"`
}

// Wrap puts an inner message into the 2.0 envelope: the inner message is
// JSON-encoded and carried as a string.
func Wrap(inner any) ([]byte, error) {
	b, err := json.Marshal(inner)
	if err != nil {
		return nil, fmt.Errorf("encode message: %w", err)
	}
	return json.Marshal(envelope{Version: EnvelopeVersion, Message: string(b)})
}

// Unwrap returns the inner message of a body: the decoded oslo.message of a
// 2.0 envelope, or the body itself when it is a legacy (1.0) dict.
func Unwrap(body []byte) (map[string]json.RawMessage, error) {
	var outer map[string]json.RawMessage
	if err := json.Unmarshal(body, &outer); err != nil {
		return nil, fmt.Errorf("%w: body is not a JSON object: %v", ErrMalformed, err)
	}
	rawVer, hasVer := outer["oslo.version"]
	rawMsg, hasMsg := outer["oslo.message"]
	if !hasVer || !hasMsg {
		return outer, nil // legacy format: the dict is the message
	}
	var ver, msg string
	if err := json.Unmarshal(rawVer, &ver); err != nil {
		return nil, fmt.Errorf("%w: oslo.version is not a string", ErrMalformed)
	}
	if !envelopeCompatible(ver) {
		return nil, fmt.Errorf("%w: unsupported envelope version %q", ErrMalformed, ver)
	}
	if err := json.Unmarshal(rawMsg, &msg); err != nil {
		return nil, fmt.Errorf("%w: oslo.message is not a string", ErrMalformed)
	}
	var inner map[string]json.RawMessage
	if err := json.Unmarshal([]byte(msg), &inner); err != nil {
		return nil, fmt.Errorf("%w: oslo.message is not a JSON object: %v", ErrMalformed, err)
	}
	return inner, nil
}

// envelopeCompatible: same major as 2.0 and minor <= 0.
func envelopeCompatible(v string) bool {
	maj, min, _, ok := parseVersion(v)
	return ok && maj == 2 && min <= 0
}

// Message is a decoded RPC request.
type Message struct {
	Method    string
	Namespace string // "" when absent
	Version   string // "1.0" when absent
	Args      map[string]json.RawMessage
	MsgID     string   // calls only
	ReplyQ    string   // calls only
	Timeout   *float64 // call-monitor timeout in seconds (calls only, may be nil)
	UniqueID  string
	Context   *RequestContext
}

// IsCall reports whether the sender waits for a reply.
func (m *Message) IsCall() bool { return m.MsgID != "" && m.ReplyQ != "" }

// ParseMessage decodes a request body. On error the returned message may
// still carry MsgID/ReplyQ so that a call can be answered with a failure.
func ParseMessage(body []byte) (*Message, error) {
	inner, err := Unwrap(body)
	if err != nil {
		return nil, err
	}
	m := &Message{Version: "1.0"}
	str := func(key string, dst *string) error {
		raw, ok := inner[key]
		if !ok || string(raw) == "null" {
			return nil
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			return fmt.Errorf("%w: %s is not a string", ErrMalformed, key)
		}
		return nil
	}
	// Reply routing first, so that later errors can still be answered.
	if err := str("_msg_id", &m.MsgID); err != nil {
		return nil, err
	}
	if err := str("_reply_q", &m.ReplyQ); err != nil {
		return m, err
	}
	if raw, ok := inner["_timeout"]; ok && string(raw) != "null" {
		var t float64
		if err := json.Unmarshal(raw, &t); err != nil {
			return m, fmt.Errorf("%w: _timeout is not a number", ErrMalformed)
		}
		m.Timeout = &t
	}
	for _, f := range []struct {
		k string
		d *string
	}{{"_unique_id", &m.UniqueID}, {"method", &m.Method}, {"namespace", &m.Namespace}, {"version", &m.Version}} {
		if err := str(f.k, f.d); err != nil {
			return m, err
		}
	}
	if m.Method == "" {
		return m, fmt.Errorf("%w: no method", ErrMalformed)
	}
	if raw, ok := inner["args"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &m.Args); err != nil {
			return m, fmt.Errorf("%w: args is not an object", ErrMalformed)
		}
	}
	if m.Args == nil {
		m.Args = map[string]json.RawMessage{}
	}
	ctx := map[string]json.RawMessage{}
	for k, v := range inner {
		if name, ok := strings.CutPrefix(k, "_context_"); ok {
			ctx[name] = v
		}
	}
	m.Context = NewRequestContext(ctx)
	return m, nil
}

// newID returns a uuid4 in hex without dashes, as oslo's uuid.uuid4().hex.
func newID() string {
	u := uuid.New()
	return hex.EncodeToString(u[:])
}

// RequestContext is nova's RequestContext as it travels in _context_* keys.
// The raw map is kept so that a context can be passed on unchanged.
type RequestContext struct {
	raw map[string]json.RawMessage

	UserID          string
	ProjectID       string
	AuthToken       string
	RequestID       string
	GlobalRequestID string
	IsAdmin         bool
	Roles           []string
	ReadDeleted     string
}

// NewRequestContext builds a context from the _context_* values.
func NewRequestContext(raw map[string]json.RawMessage) *RequestContext {
	c := &RequestContext{raw: raw}
	get := func(dst any, keys ...string) {
		for _, k := range keys {
			if v, ok := raw[k]; ok && string(v) != "null" {
				if json.Unmarshal(v, dst) == nil {
					return
				}
			}
		}
	}
	get(&c.UserID, "user_id", "user")
	get(&c.ProjectID, "project_id", "project", "tenant")
	get(&c.AuthToken, "auth_token")
	get(&c.RequestID, "request_id")
	get(&c.GlobalRequestID, "global_request_id")
	get(&c.IsAdmin, "is_admin")
	get(&c.Roles, "roles")
	get(&c.ReadDeleted, "read_deleted")
	return c
}

// AdminContext returns a context like nova's get_admin_context().
func AdminContext() *RequestContext {
	rid := "req-" + uuid.NewString()
	c := &RequestContext{IsAdmin: true, RequestID: rid, ReadDeleted: "no", Roles: []string{}}
	c.raw = c.toRaw()
	return c
}

func (c *RequestContext) toRaw() map[string]json.RawMessage {
	m := map[string]any{
		"user": nilIfEmpty(c.UserID), "user_id": nilIfEmpty(c.UserID),
		"project": nilIfEmpty(c.ProjectID), "project_id": nilIfEmpty(c.ProjectID),
		"domain": nil, "user_domain": nil, "project_domain": nil, "system_scope": nil,
		"is_admin": c.IsAdmin, "read_only": false, "show_deleted": false,
		"auth_token": nilIfEmpty(c.AuthToken), "request_id": c.RequestID,
		"global_request_id": nilIfEmpty(c.GlobalRequestID), "resource_uuid": nil,
		"roles": c.Roles, "user_identity": userIdentity(c.UserID, c.ProjectID),
		"is_admin_project": true, "read_deleted": orDefault(c.ReadDeleted, "no"),
		"remote_address": nil, "timestamp": nowStrtime(), "quota_class": nil,
		"user_name": nil, "service_catalog": []any{}, "project_name": nil,
	}
	out := make(map[string]json.RawMessage, len(m))
	for k, v := range m {
		b, _ := json.Marshal(v)
		out[k] = b
	}
	return out
}

// Raw returns the context as the _context_ values to put on the wire.
func (c *RequestContext) Raw() map[string]json.RawMessage {
	if c == nil {
		return AdminContext().raw
	}
	if c.raw == nil {
		c.raw = c.toRaw()
	}
	return c.raw
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func userIdentity(user, project string) string {
	f := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	return f(user) + " " + f(project) + " - - -"
}

// nowStrtime formats now as nova's utils.strtime ("%Y-%m-%dT%H:%M:%S.%f").
func nowStrtime() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000000") }

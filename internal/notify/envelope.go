package notify

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// notification is oslo's Notifier._notify message before the transport
// adds _unique_id and the _context_* keys.
type notification struct {
	publisherID string
	eventType   string
	priority    string // INFO, ERROR, ...
	payload     json.RawMessage
}

// render builds the AMQP bodies of nt for every topic: routing key
// "<topic>.<priority lower>", one body per driver (1.0: the bare dict, 2.0:
// oslo's envelope). message_id is shared, _unique_id is fresh for every
// publish (oslo's amqpdriver._send adds it to the same dict each time).
func (nt notification) render(topics []string, c *notifContext, now time.Time, v1, v2 bool) ([]outMsg, error) {
	msg := map[string]any{
		"message_id":   uuid.NewString(),
		"publisher_id": nt.publisherID,
		"event_type":   nt.eventType,
		"priority":     nt.priority,
		"payload":      nt.payload,
		"timestamp":    pyDatetimeStr(now),
	}
	for k, v := range c.dict {
		msg["_context_"+k] = v
	}
	var out []outMsg
	key := func(t string) string { return t + "." + strings.ToLower(nt.priority) }
	add := func(wrap bool) error {
		for _, t := range topics {
			msg["_unique_id"] = newUniqueID()
			var body []byte
			var err error
			if wrap {
				body, err = rpc.Wrap(msg)
			} else {
				body, err = json.Marshal(msg)
			}
			if err != nil {
				return fmt.Errorf("encode %s: %w", nt.eventType, err)
			}
			out = append(out, outMsg{key: key(t), body: body, event: nt.eventType})
		}
		return nil
	}
	// oslo maps the drivers in configuration order; both orders are valid.
	if v1 {
		if err := add(false); err != nil {
			return nil, err
		}
	}
	if v2 {
		if err := add(true); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func newUniqueID() string {
	u := uuid.New()
	return hex.EncodeToString(u[:])
}

// notifContext is the request context as a notification carries it.
type notifContext struct {
	dict      map[string]any // the _context_* values
	userID    any            // the caller's context, for payload fields
	projectID any
	requestID any
}

// newNotifContext does what oslo's Notifier._notify does to nova's context:
// _sanitize_context keeps only oslo's safe keys and rebuilds a nova
// RequestContext from them (RequestContext.from_dict), whose to_dict() is
// then packed as _context_*: auth_token and service catalog are gone, the
// timestamp is the notification's, a missing request_id is regenerated.
// A nil rctx is nova's get_admin_context().
func newNotifContext(rctx *rpc.RequestContext, now time.Time) *notifContext {
	raw := rctx.Raw()
	get := func(k string) any {
		v, ok := raw[k]
		if !ok {
			return nil
		}
		var x any
		if json.Unmarshal(v, &x) != nil {
			return nil
		}
		return x
	}
	userID := get("user_id")
	projectID := get("project_id")
	domain, userDomain, projectDomain := get("domain"), get("user_domain"), get("project_domain")
	isAdmin, ok := get("is_admin").(bool)
	if !ok {
		isAdmin = false
	}
	requestID := get("request_id")
	if s, _ := requestID.(string); s == "" {
		requestID = "req-" + uuid.NewString()
	}
	roles := get("roles")
	if _, ok := roles.([]any); !ok {
		roles = []any{}
	}
	dash := func(v any) string {
		if s, ok := v.(string); ok && s != "" {
			return s
		}
		if v == nil || v == false || v == "" {
			return "-"
		}
		return pyStr(v)
	}
	d := map[string]any{
		"user":              userID,
		"project_id":        projectID,
		"system_scope":      get("system_scope"),
		"project":           projectID,
		"domain":            domain,
		"user_domain":       userDomain,
		"project_domain":    projectDomain,
		"is_admin":          isAdmin,
		"read_only":         false,
		"show_deleted":      false,
		"auth_token":        nil,
		"request_id":        requestID,
		"global_request_id": get("global_request_id"),
		"resource_uuid":     nil,
		"roles":             roles,
		"user_identity":     strings.Join([]string{dash(userID), dash(projectID), dash(domain), dash(userDomain), dash(projectDomain)}, " "),
		"is_admin_project":  true,
		"user_id":           userID,
		"read_deleted":      "no",
		"remote_address":    nil,
		"timestamp":         now.Format("2006-01-02T15:04:05.000000"),
		"quota_class":       nil,
		"user_name":         get("user_name"),
		"service_catalog":   []any{},
		"project_name":      get("project_name"),
	}
	return &notifContext{dict: d, userID: userID, projectID: projectID, requestID: get("request_id")}
}

// pyDatetimeStr is Python's str(datetime) of a naive UTC time
// ("2026-11-23 18:04:39.221430"; no fraction when it is zero).
func pyDatetimeStr(t time.Time) string {
	t = t.Truncate(time.Microsecond)
	if t.Nanosecond() == 0 {
		return t.Format("2006-01-02 15:04:05")
	}
	return t.Format("2006-01-02 15:04:05.000000")
}

// pyAwareDatetimeStr is str() of a timezone-aware datetime, as the legacy
// payload's created_at ("2026-11-23 18:04:39+00:00").
func pyAwareDatetimeStr(t time.Time) string {
	return pyDatetimeStr(t) + t.Format("-07:00")
}

// strtime is nova.utils.strtime ("%Y-%m-%dT%H:%M:%S.%f").
func strtime(t time.Time) string { return t.Format("2006-01-02T15:04:05.000000") }

// isotime is oslo.versionedobjects' DateTimeField primitive
// ("2026-11-23T18:04:39Z", seconds precision).
func isotime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999",
}

// parseNovaTime reads a DateTimeField primitive (with or without fraction
// and offset; no offset means UTC).
func parseNovaTime(s string) (time.Time, bool) {
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// pyStr is Python's str() of a JSON-decoded scalar.
func pyStr(v any) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case bool:
		if x {
			return "True"
		}
		return "False"
	case string:
		return x
	case float64:
		return pyFloat(x)
	case json.Number:
		return x.String()
	default:
		return fmt.Sprint(x)
	}
}

// pyFloat formats a float like Python's repr/str.
func pyFloat(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	case math.IsNaN(f):
		return "nan"
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if math.Abs(f) >= 1e16 || (f != 0 && math.Abs(f) < 1e-4) {
		s = strconv.FormatFloat(f, 'e', -1, 64)
		// Python writes at least two exponent digits: 1e+16, 1e-05.
		if i := strings.IndexAny(s, "e"); i >= 0 && len(s)-i == 3 {
			s = s[:i+2] + "0" + s[i+2:]
		}
		return s
	}
	if !strings.ContainsAny(s, ".e") {
		s += ".0"
	}
	return s
}

// pyRepr is Python's repr() of simple values (what str(dict) prints).
// Map keys are sorted, except "code" which goes last: nova's exceptions
// append it to the kwargs they were given.
func pyRepr(v any) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case bool:
		return pyStr(x)
	case string:
		return pyStrRepr(x)
	case float64:
		return pyFloat(x)
	case float32:
		return pyFloat(float64(x))
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return fmt.Sprint(x)
	case json.Number:
		return x.String()
	case []string:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = pyStrRepr(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = pyRepr(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			if (keys[i] == "code") != (keys[j] == "code") {
				return keys[j] == "code"
			}
			return keys[i] < keys[j]
		})
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = pyStrRepr(k) + ": " + pyRepr(x[k])
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case orderedDict:
		parts := make([]string, len(x))
		for i, kv := range x {
			parts[i] = pyStrRepr(kv.k) + ": " + pyRepr(kv.v)
		}
		return "{" + strings.Join(parts, ", ") + "}"
	default:
		return pyStrRepr(fmt.Sprint(x))
	}
}

// orderedDict is a dict whose repr keeps insertion order.
type orderedDict []struct {
	k string
	v any
}

// pyStrRepr is Python 3's repr() of a str.
func pyStrRepr(s string) string {
	quote := byte('\'')
	if strings.ContainsRune(s, '\'') && !strings.ContainsRune(s, '"') {
		quote = '"'
	}
	var b strings.Builder
	b.WriteByte(quote)
	for _, r := range s {
		switch {
		case r == rune(quote) || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r < 0x7f || unicode.IsPrint(r):
			b.WriteRune(r)
		case r <= 0xff:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
	}
	b.WriteByte(quote)
	return b.String()
}

// safeTruncate is nova.utils.safe_truncate: at most n bytes of UTF-8,
// never splitting a character.
func safeTruncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

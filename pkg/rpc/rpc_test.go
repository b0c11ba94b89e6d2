package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

func TestVersionIsCompatible(t *testing.T) {
	cases := []struct {
		imp, req string
		want     bool
	}{
		{"6.1", "6.0", true}, {"6.1", "6.1", true}, {"6.1", "6.2", false}, {"6.1", "5.0", false},
		{"6.1", "7.0", false}, {"1.1", "1.0", true}, {"6.1", "6.1.1", false}, {"6.1.2", "6.1.1", true},
		{"6.1", "6", true}, {"6.1", "x", false},
	}
	for _, c := range cases {
		if got := versionIsCompatible(c.imp, c.req); got != c.want {
			t.Errorf("versionIsCompatible(%q, %q) = %v, want %v", c.imp, c.req, got, c.want)
		}
	}
}

func testDispatcher() *Dispatcher {
	h := func(context.Context, *Request) (any, error) { return "ok", nil }
	return NewDispatcher(
		Endpoint{Version: "6.1", Methods: map[string]Method{"pause_instance": {Handler: h}}},
		BaseAPI("compute"),
	)
}

func TestDispatcherRules(t *testing.T) {
	d := testDispatcher()
	lookup := func(ns, ver, method string) error {
		_, err := d.Lookup(&Message{Namespace: ns, Version: ver, Method: method})
		return err
	}
	if err := lookup("", "6.0", "pause_instance"); err != nil {
		t.Fatalf("compatible method: %v", err)
	}
	if err := lookup("baseapi", "1.0", "ping"); err != nil {
		t.Fatalf("baseapi ping: %v", err)
	}
	var ex *Exception
	if err := lookup("", "6.0", "no_such"); !errors.As(err, &ex) || ex.Class != "NoSuchMethod" {
		t.Errorf("unknown method: %v", err)
	}
	if err := lookup("", "5.0", "pause_instance"); !errors.As(err, &ex) || ex.Class != "UnsupportedVersion" {
		t.Errorf("wrong major: %v", err)
	}
	if err := lookup("", "6.2", "pause_instance"); !errors.As(err, &ex) || ex.Class != "UnsupportedVersion" {
		t.Errorf("newer minor: %v", err)
	}
	if err := lookup("other", "6.0", "pause_instance"); !errors.As(err, &ex) || ex.Class != "UnsupportedVersion" {
		t.Errorf("unknown namespace: %v", err)
	}
	if err := lookup("", "6.0", "_private"); !errors.As(err, &ex) || ex.Class != "NoSuchMethod" {
		t.Errorf("private method: %v", err)
	}
}

func wrapped(t *testing.T, inner map[string]any) []byte {
	t.Helper()
	b, err := Wrap(inner)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseMessage(t *testing.T) {
	body := wrapped(t, map[string]any{
		"method": "get_console_output", "args": map[string]any{"tail_length": 10}, "version": "6.0",
		"_msg_id": "m1", "_reply_q": "reply_x", "_timeout": 30, "_unique_id": "u1",
		"_context_auth_token": "TOKEN", "_context_request_id": "req-1", "_context_user": "u", "_context_project_id": "p",
		"_context_roles": []string{"member"}, "_context_is_admin": true,
	})
	m, err := ParseMessage(body)
	if err != nil {
		t.Fatal(err)
	}
	if !m.IsCall() || m.MsgID != "m1" || m.ReplyQ != "reply_x" || m.Timeout == nil || *m.Timeout != 30 {
		t.Errorf("call fields: %+v", m)
	}
	if m.Context.AuthToken != "TOKEN" || m.Context.RequestID != "req-1" || m.Context.UserID != "u" ||
		m.Context.ProjectID != "p" || !m.Context.IsAdmin || len(m.Context.Roles) != 1 {
		t.Errorf("context: %+v", m.Context)
	}
	if string(m.Args["tail_length"]) != "10" {
		t.Errorf("args: %s", m.Args["tail_length"])
	}
	// legacy 1.0 (no envelope), no version → "1.0"
	m, err = ParseMessage([]byte(`{"method": "ping", "args": {}}`))
	if err != nil || m.Version != "1.0" || m.IsCall() {
		t.Errorf("legacy: %+v %v", m, err)
	}
}

func TestParseMalformed(t *testing.T) {
	cases := map[string][]byte{
		"not json":        []byte(`{{{`),
		"not object":      []byte(`[1,2]`),
		"inner not json":  []byte(`{"oslo.version": "2.0", "oslo.message": "{oops"}`),
		"bad envelope":    []byte(`{"oslo.version": "3.0", "oslo.message": "{}"}`),
		"no method":       wrapped(t, map[string]any{"args": map[string]any{}}),
		"args not object": wrapped(t, map[string]any{"method": "x", "args": []int{1}}),
	}
	for name, body := range cases {
		if _, err := ParseMessage(body); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
	// A call whose method is missing still yields its reply address.
	m, err := ParseMessage(wrapped(t, map[string]any{"_msg_id": "m", "_reply_q": "reply_q", "args": map[string]any{}}))
	if err == nil || m == nil || !m.IsCall() {
		t.Errorf("malformed call lost its reply address: %+v %v", m, err)
	}
}

func TestFailureShape(t *testing.T) {
	err := fmt.Errorf("console: %w", InstanceNotFound("8f1a", driver.ErrNotFound))
	var p failurePayload
	if e := json.Unmarshal([]byte(serializeFailure(err)), &p); e != nil {
		t.Fatal(e)
	}
	if p.Module != "nova.exception" || p.Class != "InstanceNotFound" || p.Kwargs["instance_id"] != "8f1a" ||
		p.Kwargs["code"] != float64(404) || len(p.Args) != 1 || p.Message != "Instance 8f1a could not be found." || len(p.TB) == 0 {
		t.Errorf("failure = %+v", p)
	}
	// table mapping of plain Go error classes
	for _, c := range []struct {
		err           error
		module, class string
	}{
		{fmt.Errorf("x: %w", driver.ErrUnsupported), "builtins", "NotImplementedError"},
		{fmt.Errorf("x: %w", driver.ErrNotFound), "nova.exception", "NotFound"},
		{errors.New("boom"), "nova.exception", "NovaException"},
	} {
		ex := ToException(c.err)
		if ex.Module != c.module || ex.Class != c.class {
			t.Errorf("%v → %s.%s, want %s.%s", c.err, ex.Module, ex.Class, c.module, c.class)
		}
	}
}

func TestExecutorSerializesPerKey(t *testing.T) {
	e := newExecutor(8)
	var mu sync.Mutex
	got := map[string][]int{}
	for i := 0; i < 50; i++ {
		for _, key := range []string{"a", "b"} {
			key, i := key, i
			e.Submit(key, func() {
				if i%7 == 0 {
					time.Sleep(time.Millisecond)
				}
				mu.Lock()
				got[key] = append(got[key], i)
				mu.Unlock()
			})
		}
	}
	if !e.Wait(make(chan struct{})) {
		t.Fatal("wait")
	}
	for _, key := range []string{"a", "b"} {
		for i, v := range got[key] {
			if v != i {
				t.Fatalf("key %s out of order: %v", key, got[key])
			}
		}
	}
}

func TestExecutorRunsKeysConcurrently(t *testing.T) {
	e := newExecutor(4)
	release := make(chan struct{})
	started := make(chan string, 2)
	for _, k := range []string{"a", "b"} {
		k := k
		e.Submit(k, func() { started <- k; <-release })
	}
	for i := 0; i < 2; i++ {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("distinct keys did not run concurrently")
		}
	}
	close(release)
	e.Wait(make(chan struct{}))
}

func TestJournal(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Record("a1", []byte("one")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if err := j.Record("b2", []byte("two")); err != nil {
		t.Fatal(err)
	}
	if err := j.Record("../evil", nil); err == nil {
		t.Error("path traversal id accepted")
	}
	_ = os.WriteFile(filepath.Join(dir, "torn.msg.123.tmp"), []byte("x"), 0o600)
	p, err := j.Pending()
	if err != nil || len(p) != 2 || p[0].ID != "a1" || string(p[1].Body) != "two" {
		t.Fatalf("pending = %+v, %v", p, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "torn.msg.123.tmp")); !os.IsNotExist(err) {
		t.Error("torn temporary record kept")
	}
	if err := j.Done("a1"); err != nil {
		t.Fatal(err)
	}
	if err := j.Done("a1"); err != nil {
		t.Errorf("done twice: %v", err)
	}
	p, _ = j.Pending()
	if len(p) != 1 {
		t.Errorf("pending after done = %d", len(p))
	}
}

func TestIDCache(t *testing.T) {
	c := newIDCache(3)
	for _, id := range []string{"a", "b", "c"} {
		if c.seen(id) {
			t.Fatalf("%s seen too early", id)
		}
	}
	if !c.seen("a") {
		t.Error("duplicate not detected")
	}
	c.seen("d") // evicts a
	if c.seen("a") {
		t.Error("evicted id still remembered")
	}
}

func TestTransportURLs(t *testing.T) {
	tc := TransportConfig{URL: "rabbit://u:p@h1:5672,u:p@h2:5673/vhost?ssl=1"}
	urls, err := tc.brokerURLs()
	if err != nil || len(urls) != 2 || urls[0] != "amqp://u:p@h1:5672/vhost" || urls[1] != "amqp://u:p@h2:5673/vhost" {
		t.Errorf("urls = %v, %v", urls, err)
	}
	if _, err := (TransportConfig{URL: "kafka://x"}).brokerURLs(); err == nil {
		t.Error("kafka accepted")
	}
	if r := redact("rabbit://u:secret@h:1/"); r != "rabbit://u:***@h:1/" {
		t.Errorf("redact = %q", r)
	}
}

func TestSalvageReplyAddress(t *testing.T) {
	inner := `{\"method\": \"x\", \"_msg_id\": \"abc123\", \"_reply_q\": \"reply_deadbeef\", \"args\": {oops`
	m := salvageReplyAddress([]byte(`{"oslo.version": "2.0", "oslo.message": "` + inner + `"}`))
	if m == nil || m.MsgID != "abc123" || m.ReplyQ != "reply_deadbeef" {
		t.Fatalf("salvage from broken envelope: %+v", m)
	}
	m = salvageReplyAddress([]byte(`{"_msg_id": "abc", "_reply_q": "reply_x", "method": `))
	if m == nil || m.ReplyQ != "reply_x" {
		t.Fatalf("salvage from broken legacy body: %+v", m)
	}
	if salvageReplyAddress([]byte(`garbage`)) != nil {
		t.Error("salvaged an address from garbage")
	}
}

package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// neutronCollections are the /v2.0 collections the stub answers with an
// empty list (the ones nova asks for when an instance has no ports, plus a
// few neighbours).
var neutronCollections = map[string]bool{
	"ports": true, "networks": true, "subnets": true, "extensions": true,
	"security-groups": true, "security-group-rules": true, "floatingips": true,
	"routers": true, "qos": true, "trunks": true, "segments": true,
	"network-ip-availabilities": true, "address-scopes": true,
}

// NeutronRequest is one request the stub received.
type NeutronRequest struct {
	Time   time.Time
	Method string
	Path   string // URL path, e.g. /v2.0/ports
	Query  string // raw query, e.g. device_id=...
	Status int    // status the stub answered with
}

func (r NeutronRequest) String() string {
	u := r.Path
	if r.Query != "" {
		u += "?" + r.Query
	}
	return fmt.Sprintf("%s %s %s -> %d", r.Time.Format("15:04:05.000"), r.Method, u, r.Status)
}

// NeutronStub is a minimal Neutron API on 127.0.0.1 for a nova without
// neutron (servers booted with "networks": "none"). Nova still asks neutron
// about an instance's ports (nova-api on GET /servers/{id}, nova-compute on
// delete); the stub answers every collection GET under /v2.0 with an empty
// list, GET / and GET /v2.0 with version documents, and everything else with
// 404. It records every request (Requests) and, if a log file was given,
// appends one line per request to it.
type NeutronStub struct {
	srv     *http.Server
	ln      net.Listener
	logPath string
	done    chan struct{}

	mu   sync.Mutex
	reqs []NeutronRequest
	logf *os.File
}

// StartNeutronStub starts the stub on a free port of 127.0.0.1. logPath ""
// means no log file.
func StartNeutronStub(logPath string) (*NeutronStub, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("neutron stub: %w", err)
	}
	s := &NeutronStub{ln: ln, logPath: logPath, done: make(chan struct{})}
	if logPath != "" {
		if s.logf, err = os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			ln.Close()
			return nil, fmt.Errorf("neutron stub: %w", err)
		}
	}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// URL returns the stub's endpoint, http://127.0.0.1:PORT.
func (s *NeutronStub) URL() string { return "http://" + s.ln.Addr().String() }

// Requests returns a copy of the requests received so far, oldest first.
func (s *NeutronStub) Requests() []NeutronRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]NeutronRequest(nil), s.reqs...)
}

// Stop closes the listener and every connection and waits for the server
// goroutine to end.
func (s *NeutronStub) Stop() error {
	if s == nil || s.srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	<-s.done
	s.mu.Lock()
	if s.logf != nil {
		if e := s.logf.Close(); err == nil {
			err = e
		}
		s.logf = nil
	}
	s.mu.Unlock()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func (s *NeutronStub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
	status, body := neutronAnswer(r.Method, r.URL.Path, "http://"+r.Host)
	rec := NeutronRequest{Time: time.Now(), Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Status: status}
	s.mu.Lock()
	s.reqs = append(s.reqs, rec)
	if s.logf != nil {
		fmt.Fprintln(s.logf, rec.String())
	}
	s.mu.Unlock()
	b, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func neutronAnswer(method, path, base string) (int, any) {
	notFound := map[string]any{"NeutronError": map[string]string{
		"type": "HTTPNotFound", "message": "stub: " + method + " " + path, "detail": ""}}
	if method != http.MethodGet {
		return http.StatusNotFound, notFound
	}
	path = strings.TrimRight(path, "/")
	switch path {
	case "":
		return http.StatusOK, map[string]any{"versions": []any{map[string]any{
			"id": "v2.0", "status": "CURRENT",
			"links": []any{map[string]string{"rel": "self", "href": base + "/v2.0/"}},
		}}}
	case "/v2.0":
		return http.StatusOK, map[string]any{"resources": []any{}}
	}
	if coll, ok := strings.CutPrefix(path, "/v2.0/"); ok {
		coll = strings.TrimSuffix(coll, ".json")
		if neutronCollections[coll] {
			return http.StatusOK, map[string]any{strings.ReplaceAll(coll, "-", "_"): []any{}}
		}
	}
	return http.StatusNotFound, notFound
}

// NeutronStubT starts a stub for the test and stops it with t.Cleanup.
func NeutronStubT(t testing.TB) *NeutronStub {
	t.Helper()
	s, err := StartNeutronStub("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop neutron stub: %v", err)
		}
	})
	return s
}

// Package placement is the part of nova's placement report client
// (nova/scheduler/client/report.py) that a compute node needs: ensure the
// node's resource provider, keep its inventories and traits in step with
// the host, and read or drop allocations.
//
// The client keeps no cache: every Set* call reads the provider's current
// state first and writes only when it differs, with the provider generation
// it read. A 409 generation conflict (another writer got in between) makes
// it read again and retry, up to MaxAttempts attempts in all, as nova's
// resource tracker does.
package placement

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
)

// Microversions, as nova's report client uses them.
const (
	mvBase         = "1.0"  // GET inventories/usages/allocations, DELETE allocations
	mvTraits       = "1.6"  // traits
	mvResClasses   = "1.7"  // PUT /resource_classes/CUSTOM_* (idempotent)
	mvInTree       = "1.14" // GET /resource_providers?in_tree=
	mvCreateReturn = "1.20" // POST /resource_providers returns the provider
	mvInventories  = "1.26" // PUT inventories (reserved may equal total)
)

// MaxAttempts bounds the read-compare-write loop of SetInventories and
// SetTraits on generation conflicts (nova retries _update_to_placement 4
// times in all).
const MaxAttempts = 4

// Placement error codes (placement/errors.py).
const (
	CodeConcurrentUpdate = "placement.concurrent_update"
	CodeInventoryInUse   = "placement.inventory.inuse"
	CodeDuplicateName    = "placement.duplicate_name"
	CodeProviderInUse    = "placement.resource_provider.inuse"
	CodeCannotDelParent  = "placement.resource_provider.cannot_delete_parent"
	CodeUndefined        = "placement.undefined_code"
)

// Error classes for errors.Is. Every non-2xx answer is an *Error, which
// matches at most one of these.
var (
	// ErrNotFound: 404 (no such provider, consumer, trait, …).
	ErrNotFound = errors.New("placement: not found")
	// ErrConflict: a 409 that means "someone else changed it first"
	// (placement.concurrent_update, or a 409 without a specific code such
	// as a stale generation on PUT traits). Read again and retry.
	ErrConflict = errors.New("placement: generation conflict")
	// ErrInventoryInUse: an inventory update would remove or shrink a
	// resource class below what allocations use (nova: InventoryInUse).
	ErrInventoryInUse = errors.New("placement: inventory in use")
	// ErrNameConflict: another resource provider already has the name
	// (nova: ResourceProviderCreationFailed).
	ErrNameConflict = errors.New("placement: resource provider name already in use")
	// ErrUnknownTrait: a standard (non-CUSTOM_) trait that this placement
	// does not know; only CUSTOM_ traits can be created.
	ErrUnknownTrait = errors.New("placement: unknown trait")
)

// Error is a placement answer with an unexpected status.
type Error struct {
	Method     string
	URL        string
	StatusCode int
	// Code and Detail come from the first entry of placement's JSON error
	// body ({"errors": [{"code": …, "detail": …}]}) when there is one.
	Code   string
	Detail string
	// RequestID is placement's own request id (x-openstack-request-id).
	RequestID string

	err error // gophercloud's ErrUnexpectedResponseCode
}

func (e *Error) Error() string {
	msg := e.Detail
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	s := fmt.Sprintf("placement: %s %s: %d", e.Method, e.URL, e.StatusCode)
	if e.Code != "" && e.Code != CodeUndefined {
		s += " " + e.Code
	}
	if e.RequestID != "" {
		s += " [" + e.RequestID + "]"
	}
	return s + ": " + strings.TrimSpace(msg)
}

// Unwrap returns gophercloud's error.
func (e *Error) Unwrap() error { return e.err }

// Is matches the error classes above.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound
	case ErrInventoryInUse:
		return e.StatusCode == http.StatusConflict && e.Code == CodeInventoryInUse
	case ErrConflict:
		if e.StatusCode != http.StatusConflict {
			return false
		}
		switch e.Code {
		case CodeInventoryInUse, CodeDuplicateName, CodeProviderInUse, CodeCannotDelParent:
			return false
		}
		return true
	}
	return false
}

type ctxKey struct{}

// WithGlobalRequestID returns a context whose placement requests carry
// X-Openstack-Request-Id: id (nova passes context.global_id, "req-<uuid>").
func WithGlobalRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// GlobalRequestID returns the id set by WithGlobalRequestID, or "".
func GlobalRequestID(ctx context.Context) string {
	id, _ := ctx.Value(ctxKey{}).(string)
	return id
}

// Client talks to placement through a gophercloud service client (see
// internal/keystone). It holds no mutable state and is safe for concurrent
// use.
type Client struct {
	sc  *gophercloud.ServiceClient
	log *slog.Logger
}

// New returns a client. sc.Endpoint is placement's root URL ending in "/"
// (e.g. "http://127.0.0.1:8778/"); a nil log discards.
func New(sc *gophercloud.ServiceClient, log *slog.Logger) *Client {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{sc: sc, log: log.With("component", "placement")}
}

// request is one placement call.
type request struct {
	method string
	path   string // relative to the endpoint, already escaped
	mv     string
	body   any
	out    any
	ok     []int
}

// do sends r and turns unexpected statuses into *Error.
func (c *Client) do(ctx context.Context, r request) (*http.Response, error) {
	hdr := map[string]string{"OpenStack-API-Version": "placement " + r.mv}
	if id := GlobalRequestID(ctx); id != "" {
		hdr["X-Openstack-Request-Id"] = id
	}
	opts := &gophercloud.RequestOpts{MoreHeaders: hdr, OkCodes: r.ok}
	url := c.sc.ServiceURL(r.path)
	var (
		resp *http.Response
		err  error
	)
	switch r.method {
	case http.MethodGet:
		resp, err = c.sc.Get(ctx, url, r.out, opts)
	case http.MethodPost:
		resp, err = c.sc.Post(ctx, url, r.body, r.out, opts)
	case http.MethodPut:
		resp, err = c.sc.Put(ctx, url, r.body, r.out, opts)
	case http.MethodDelete:
		resp, err = c.sc.Delete(ctx, url, opts)
	default:
		return nil, fmt.Errorf("placement: unsupported method %s", r.method)
	}
	if err != nil {
		return resp, wrapError(r.method, "/"+r.path, err)
	}
	return resp, nil
}

// cleanDetail drops webob's boilerplate first paragraph ("There was a
// conflict when trying to complete your request.\n\n <the detail>  ").
func cleanDetail(s string) string {
	if i := strings.LastIndex(s, "\n\n"); i >= 0 {
		s = s[i+2:]
	}
	return strings.TrimSpace(s)
}

// wrapError converts gophercloud's status error into *Error; other errors
// (transport, context, decoding) are wrapped with the request.
func wrapError(method, path string, err error) error {
	var ue gophercloud.ErrUnexpectedResponseCode
	if !errors.As(err, &ue) {
		return fmt.Errorf("placement: %s %s: %w", method, path, err)
	}
	e := &Error{Method: method, URL: path, StatusCode: ue.Actual, err: err}
	var body struct {
		Errors []struct {
			Code      string `json:"code"`
			Detail    string `json:"detail"`
			Title     string `json:"title"`
			RequestID string `json:"request_id"`
		} `json:"errors"`
	}
	if json.Unmarshal(ue.Body, &body) == nil && len(body.Errors) > 0 {
		b := body.Errors[0]
		e.Code = b.Code
		e.Detail = cleanDetail(b.Detail)
		if e.Detail == "" {
			e.Detail = b.Title
		}
		e.RequestID = b.RequestID
	} else {
		e.Detail = strings.TrimSpace(string(ue.Body))
	}
	if e.RequestID == "" && ue.ResponseHeader != nil {
		// Placement answers x-openstack-request-id.
		e.RequestID = ue.ResponseHeader.Get("X-Openstack-Request-Id")
	}
	return e
}

func isConflict(err error) bool { return errors.Is(err, ErrConflict) }
func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

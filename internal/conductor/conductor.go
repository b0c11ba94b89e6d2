// Package conductor is nova-compute's side of nova-conductor: the object RPC
// (object_action, object_class_action_versions) through which a compute
// host, which has no database access, reads and writes nova's objects.
//
// Objects travel as novaobj primitives; only the fields the agent reads or
// writes are given Go types by the callers.
package conductor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// Caller makes oslo calls; *rpc.Client and *Redialer satisfy it.
type Caller interface {
	Call(ctx context.Context, t rpc.Target, method string, args map[string]any, rctx *rpc.RequestContext, timeout time.Duration) (json.RawMessage, error)
}

// Caster sends one-way messages; *rpc.Client and *Redialer satisfy it.
type Caster interface {
	Cast(ctx context.Context, t rpc.Target, method string, args map[string]any, rctx *rpc.RequestContext) error
}

// Target is nova's conductor RPC target (nova/conductor/rpcapi.py).
var target = rpc.Target{Topic: "conductor", Version: "3.0"}

// computeTaskTarget is conductor's compute_task namespace at the version
// nova 26 sends build_instances with.
var computeTaskTarget = rpc.Target{Topic: "conductor", Namespace: "compute_task", Version: "1.19"}

// BuildInstances casts compute_task build_instances: a failed build handed
// back to conductor, which tries the next alternate host. args are the
// build_and_run_instance arguments, passed on as nova-compute does.
func (a *API) BuildInstances(ctx context.Context, rctx *rpc.RequestContext, instance any, args map[string]json.RawMessage) error {
	c, ok := a.c.(Caster)
	if !ok {
		return errors.New("build_instances: the conductor client cannot cast")
	}
	get := func(k string) any {
		if v, ok := args[k]; ok {
			return v
		}
		return nil
	}
	hostLists := []any{}
	if hl, ok := args["host_list"]; ok && string(hl) != "null" {
		hostLists = append(hostLists, hl)
	}
	kwargs := map[string]any{
		"instances": []any{instance}, "image": get("image"), "filter_properties": get("filter_properties"),
		"admin_password": get("admin_password"), "injected_files": get("injected_files"),
		"requested_networks": get("requested_networks"), "security_groups": get("security_groups"),
		"request_spec": get("request_spec"), "host_lists": hostLists,
	}
	if err := c.Cast(ctx, computeTaskTarget, "build_instances", kwargs, rctx); err != nil {
		return fmt.Errorf("build_instances: %w", err)
	}
	return nil
}

// pingArg is what nova's baseapi ping carries, and what conductor echoes.
const pingArg = "1.21 GigaWatts"

// API calls conductor the way nova-compute does.
type API struct {
	c       Caller
	timeout time.Duration
	log     *slog.Logger
}

// New returns a conductor API over c. timeout is oslo's rpc_response_timeout
// (60 s when 0).
func New(c Caller, timeout time.Duration, log *slog.Logger) *API {
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &API{c: c, timeout: timeout, log: log.With("component", "conductor")}
}

// Ping is nova's baseapi ping to conductor.
func (a *API) Ping(ctx context.Context, timeout time.Duration) error {
	raw, err := a.c.Call(ctx, rpc.Target{Topic: "conductor", Namespace: "baseapi", Version: "1.0"},
		"ping", map[string]any{"arg": pingArg}, rpc.AdminContext(), timeout)
	if err != nil {
		return err
	}
	var r struct {
		Service string `json:"service"`
		Arg     string `json:"arg"`
	}
	if err := json.Unmarshal(raw, &r); err != nil || r.Arg != pingArg {
		return fmt.Errorf("conductor ping: unexpected reply %s", raw)
	}
	return nil
}

// WaitUntilReady pings conductor until it answers, as nova's
// conductor.API.wait_until_ready does: ten tries of 10 s, then the default
// timeout, until ctx ends.
func (a *API) WaitUntilReady(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		timeout := 10 * time.Second
		if attempt > 10 {
			timeout = a.timeout
		}
		start := time.Now()
		err := a.Ping(ctx, timeout)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for nova-conductor: %w", ctx.Err())
		}
		a.log.Warn("timed out waiting for nova-conductor; is it running?", "attempt", attempt, "error", err)
		// A connection error returns at once: do not spin.
		if wait := time.Second - time.Since(start); wait > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for nova-conductor: %w", ctx.Err())
			case <-time.After(wait):
			}
		}
	}
}

// ClassAction is object_class_action_versions: a remotable classmethod.
// versions is the object tree manifest of objname (obj_tree_get_versions).
func (a *API) ClassAction(ctx context.Context, rctx *rpc.RequestContext, objname, method string, versions map[string]string, args []any, kwargs map[string]any) (json.RawMessage, error) {
	if args == nil {
		args = []any{}
	}
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	raw, err := a.c.Call(ctx, target, "object_class_action_versions", map[string]any{
		"objname": objname, "objmethod": method, "object_versions": versions, "args": args, "kwargs": kwargs,
	}, rctx, a.timeout)
	if err != nil {
		return nil, fmt.Errorf("%s.%s: %w", objname, method, err)
	}
	return raw, nil
}

// ObjectAction is object_action: a remotable method on obj. The updates
// conductor returns are applied to obj and its change list reset to what
// conductor reports, as oslo's remotable does.
func (a *API) ObjectAction(ctx context.Context, rctx *rpc.RequestContext, obj *novaobj.Object, method string, args []any, kwargs map[string]any) (json.RawMessage, error) {
	if args == nil {
		args = []any{}
	}
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	raw, err := a.c.Call(ctx, target, "object_action", map[string]any{
		"objinst": obj, "objmethod": method, "args": args, "kwargs": kwargs,
	}, rctx, a.timeout)
	if err != nil {
		return nil, fmt.Errorf("%s.%s: %w", obj.Name, method, err)
	}
	var pair []json.RawMessage
	if err := json.Unmarshal(raw, &pair); err != nil || len(pair) != 2 {
		return nil, fmt.Errorf("%s.%s: %w: reply is not [updates, result]: %.200s", obj.Name, method, ErrBadReply, raw)
	}
	var updates map[string]json.RawMessage
	if err := json.Unmarshal(pair[0], &updates); err != nil {
		return nil, fmt.Errorf("%s.%s: %w: updates: %v", obj.Name, method, ErrBadReply, err)
	}
	changed := []string{}
	for k, v := range updates {
		if k == "obj_what_changed" {
			_ = json.Unmarshal(v, &changed)
			continue
		}
		obj.Data[k] = v
	}
	obj.Changes = changed
	return pair[1], nil
}

// ErrBadReply is a conductor reply that is not what the method returns.
var ErrBadReply = errors.New("unexpected conductor reply")

// RemoteClass reports whether err is a remote exception of class (for
// example "InstanceNotFound", "UnexpectedTaskStateError").
func RemoteClass(err error, classes ...string) bool {
	var re *rpc.RemoteError
	if !errors.As(err, &re) {
		return false
	}
	for _, c := range classes {
		if re.Class == c {
			return true
		}
	}
	return false
}

// Redialer is a Caller over one AMQP connection that is dialed again, at the
// next call, once it has gone away.
type Redialer struct {
	dial func(ctx context.Context) (*rpc.Client, error)

	mu sync.Mutex
	c  *rpc.Client
}

// NewRedialer returns a Redialer; nothing is dialed until the first call.
func NewRedialer(dial func(ctx context.Context) (*rpc.Client, error)) *Redialer {
	return &Redialer{dial: dial}
}

func (r *Redialer) client(ctx context.Context) (*rpc.Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c != nil {
		select {
		case <-r.c.Done():
			_ = r.c.Close()
			r.c = nil
		default:
			return r.c, nil
		}
	}
	c, err := r.dial(ctx)
	if err != nil {
		return nil, err
	}
	r.c = c
	return c, nil
}

// Call implements Caller.
func (r *Redialer) Call(ctx context.Context, t rpc.Target, method string, args map[string]any, rctx *rpc.RequestContext, timeout time.Duration) (json.RawMessage, error) {
	c, err := r.client(ctx)
	if err != nil {
		return nil, err
	}
	return c.Call(ctx, t, method, args, rctx, timeout)
}

// Cast sends a one-way message.
func (r *Redialer) Cast(ctx context.Context, t rpc.Target, method string, args map[string]any, rctx *rpc.RequestContext) error {
	c, err := r.client(ctx)
	if err != nil {
		return err
	}
	return c.Cast(ctx, t, method, args, rctx)
}

// Close closes the current connection, if any.
func (r *Redialer) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c == nil {
		return nil
	}
	err := r.c.Close()
	r.c = nil
	return err
}

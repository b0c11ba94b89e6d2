package rpc

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// Exception is an error that crosses the wire as an oslo remote exception:
// Python rebuilds it as Module.Class(*Args, **Kwargs). Handlers return it (or
// wrap it) when they know the nova.exception nova-compute would raise.
type Exception struct {
	Module string
	Class  string
	Msg    string
	Kwargs map[string]any
	// Args are the positional constructor args; nil means [Msg].
	Args []any
	// Err is the underlying cause, kept for errors.Is/As and logs.
	Err error
}

func (e *Exception) Error() string {
	if e.Err != nil && !strings.Contains(e.Msg, e.Err.Error()) {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Exception) Unwrap() error { return e.Err }

// NovaException builds an Exception of class nova.exception.<class>. code is
// nova's HTTP-ish code kwarg that every NovaException carries.
func NovaException(class string, code int, msg string, kwargs map[string]any) *Exception {
	kw := map[string]any{}
	for k, v := range kwargs {
		kw[k] = v
	}
	kw["code"] = code
	return &Exception{Module: "nova.exception", Class: class, Msg: msg, Kwargs: kw}
}

// Errors nova callers act on, built with nova's own message formats.

// InstanceNotFound is nova.exception.InstanceNotFound.
func InstanceNotFound(uuid string, cause error) *Exception {
	e := NovaException("InstanceNotFound", 404, fmt.Sprintf("Instance %s could not be found.", uuid),
		map[string]any{"instance_id": uuid})
	e.Err = cause
	return e
}

// InstanceInvalidState is nova.exception.InstanceInvalidState.
func InstanceInvalidState(uuid, attr, state, method string) *Exception {
	return NovaException("InstanceInvalidState", 409,
		fmt.Sprintf("Instance %s in %s %s. Cannot %s while the instance is in this state.", uuid, attr, state, method),
		map[string]any{"instance_uuid": uuid, "attr": attr, "state": state, "method": method})
}

// remoteTable maps Go error classes to exceptions when a handler returned a
// plain wrapped error. The first match wins; unmatched errors become
// nova.exception.NovaException with the error text as message.
var remoteTable = []struct {
	is     error
	module string
	class  string
	code   int
}{
	{driver.ErrNotFound, "nova.exception", "NotFound", 404},
	{driver.ErrAlreadyExists, "nova.exception", "InstanceExists", 400},
	{driver.ErrInvalidState, "nova.exception", "InvalidRequest", 400},
	{driver.ErrUnsupported, "builtins", "NotImplementedError", 0},
	{driver.ErrUnavailable, "nova.exception", "HypervisorUnavailable", 500},
	{ErrMalformed, "nova.exception", "Invalid", 400},
}

// ToException converts any handler error to the exception put on the wire.
func ToException(err error) *Exception {
	var ex *Exception
	if errors.As(err, &ex) {
		return ex
	}
	for _, r := range remoteTable {
		if errors.Is(err, r.is) {
			if r.module == "builtins" {
				return &Exception{Module: "builtins", Class: r.class, Msg: err.Error(), Err: err}
			}
			e := NovaException(r.class, r.code, err.Error(), nil)
			e.Err = err
			return e
		}
	}
	e := NovaException("NovaException", 500, err.Error(), nil)
	e.Err = err
	return e
}

// failurePayload is oslo's serialize_remote_exception dict.
type failurePayload struct {
	Class   string         `json:"class"`
	Module  string         `json:"module"`
	Message string         `json:"message"`
	TB      []string       `json:"tb"`
	Args    []any          `json:"args"`
	Kwargs  map[string]any `json:"kwargs"`
}

// serializeFailure renders err as the JSON string oslo puts in "failure".
func serializeFailure(err error) string {
	ex := ToException(err)
	args := ex.Args
	if args == nil {
		args = []any{ex.Msg}
	}
	kw := ex.Kwargs
	if kw == nil {
		kw = map[string]any{}
	}
	tb := []string{"Traceback (most recent call last):\n", fmt.Sprintf("  lxc-agent: %s\n", err.Error())}
	b, jerr := json.Marshal(failurePayload{Class: ex.Class, Module: ex.Module, Message: ex.Msg, TB: tb, Args: args, Kwargs: kw})
	if jerr != nil { // a kwarg that cannot be encoded: send the class and message only
		b, _ = json.Marshal(failurePayload{Class: ex.Class, Module: ex.Module, Message: ex.Msg, TB: tb, Args: []any{ex.Msg}, Kwargs: map[string]any{}})
	}
	return string(b)
}

// RemoteError is a failure received from a peer (client side).
type RemoteError struct {
	Module  string
	Class   string
	Message string
	Kwargs  map[string]any
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("remote %s.%s: %s", e.Module, e.Class, e.Message)
}

func parseFailure(s string) *RemoteError {
	var p failurePayload
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		return &RemoteError{Class: "RemoteError", Message: s}
	}
	return &RemoteError{Module: p.Module, Class: p.Class, Message: p.Message, Kwargs: p.Kwargs}
}

// Dispatcher errors, as oslo_messaging.rpc.dispatcher raises them.

func noSuchMethod(method string) *Exception {
	return &Exception{Module: "oslo_messaging.rpc.dispatcher", Class: "NoSuchMethod",
		Msg: "Endpoint does not support RPC method " + method, Kwargs: map[string]any{}}
}

func unsupportedVersion(version, method string) *Exception {
	return &Exception{Module: "oslo_messaging.rpc.dispatcher", Class: "UnsupportedVersion",
		Msg: fmt.Sprintf("Endpoint does not support RPC version %s. Attempted method: %s", version, method), Kwargs: map[string]any{}}
}

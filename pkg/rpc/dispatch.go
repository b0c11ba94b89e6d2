package rpc

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// Request is one decoded RPC handed to a handler.
type Request struct {
	Method  string
	Args    map[string]json.RawMessage
	Context *RequestContext
	// Cast is true when nobody waits for the result.
	Cast bool
}

// Arg decodes argument name into dst. It reports whether the argument was
// present and not null. A value of the wrong type is a malformed request.
func (r *Request) Arg(name string, dst any) (bool, error) {
	raw, ok := r.Args[name]
	if !ok || string(raw) == "null" {
		return false, nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return true, fmt.Errorf("%w: argument %s: %v", ErrMalformed, name, err)
	}
	return true, nil
}

// Handler runs one RPC method. The result is JSON-encoded into the reply.
type Handler func(ctx context.Context, req *Request) (any, error)

// Method describes one endpoint method.
type Method struct {
	Handler Handler
	// SerializeOn names the argument whose nova_object uuid serializes this
	// method with every other serialized method on the same instance, in
	// arrival order. Empty: runs concurrently with everything.
	SerializeOn string
}

// Endpoint is a set of methods behind one (namespace, version) target, like
// an oslo endpoint object.
type Endpoint struct {
	Namespace string // "" = the default namespace
	Version   string // the highest version implemented, e.g. "6.1"
	Methods   map[string]Method
}

// Dispatcher applies oslo's RPCDispatcher rules over a list of endpoints.
type Dispatcher struct {
	endpoints []Endpoint
}

// NewDispatcher returns a dispatcher; earlier endpoints win.
func NewDispatcher(endpoints ...Endpoint) *Dispatcher {
	return &Dispatcher{endpoints: endpoints}
}

// Lookup finds the method for a message, or returns the oslo dispatcher
// exception (NoSuchMethod, UnsupportedVersion).
func (d *Dispatcher) Lookup(m *Message) (Method, error) {
	compatible := false
	if !strings.HasPrefix(m.Method, "_") {
		for _, ep := range d.endpoints {
			if ep.Namespace != m.Namespace || !versionIsCompatible(ep.Version, m.Version) {
				continue
			}
			compatible = true
			if meth, ok := ep.Methods[m.Method]; ok {
				return meth, nil
			}
		}
	} else {
		compatible = true
	}
	if compatible {
		return Method{}, noSuchMethod(m.Method)
	}
	return Method{}, unsupportedVersion(m.Version, m.Method)
}

// serializeKey returns the instance uuid that orders this message, or "".
func serializeKey(meth Method, m *Message) string {
	if meth.SerializeOn == "" {
		return ""
	}
	raw, ok := m.Args[meth.SerializeOn]
	if !ok {
		return ""
	}
	var obj struct {
		Data struct {
			UUID string `json:"uuid"`
		} `json:"nova_object.data"`
	}
	if json.Unmarshal(raw, &obj) != nil {
		return ""
	}
	return obj.Data.UUID
}

// BaseAPI is nova's baseapi endpoint (namespace "baseapi", version 1.1).
func BaseAPI(service string) Endpoint {
	return Endpoint{Namespace: "baseapi", Version: "1.1", Methods: map[string]Method{
		"ping": {Handler: func(_ context.Context, req *Request) (any, error) {
			var arg any
			if _, err := req.Arg("arg", &arg); err != nil {
				return nil, err
			}
			return map[string]any{"service": service, "arg": arg}, nil
		}},
		"get_backdoor_port": {Handler: func(context.Context, *Request) (any, error) { return nil, nil }},
	}}
}

package driver

import "errors"

// Error classes. Backends wrap them with %w; pkg/rpc maps them once, at the
// RPC edge, to nova.exception names.
var (
	// ErrNotFound: the container (or instance) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a container with that id is already defined.
	ErrAlreadyExists = errors.New("already exists")
	// ErrInvalidState: the operation is not allowed in the current state.
	ErrInvalidState = errors.New("invalid state")
	// ErrUnsupported: the backend cannot do this at all.
	ErrUnsupported = errors.New("not supported")
	// ErrUnavailable: a transient failure; the caller may retry.
	ErrUnavailable = errors.New("unavailable")
)

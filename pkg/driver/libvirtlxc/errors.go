package libvirtlxc

import (
	"errors"
	"fmt"
	"strings"

	"libvirt.org/go/libvirt"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// virtError shows a libvirt error as libvirt's own message; the
// libvirt.Error stays reachable with errors.As / errors.Is(err,
// libvirt.ERR_…).
type virtError struct{ e libvirt.Error }

func (v virtError) Error() string {
	if v.e.Message != "" {
		return v.e.Message
	}
	return v.e.Error()
}

func (v virtError) Unwrap() error { return v.e }

// asVirt returns the libvirt error inside err, if any.
func asVirt(err error) (libvirt.Error, bool) {
	var e libvirt.Error
	if errors.As(err, &e) {
		return e, true
	}
	var p *libvirt.Error
	if errors.As(err, &p) && p != nil {
		return *p, true
	}
	return libvirt.Error{}, false
}

// classOf maps a libvirt error to the driver's error classes (nil: no
// class, a plain failure).
func classOf(e libvirt.Error) error {
	switch e.Code {
	case libvirt.ERR_NO_DOMAIN:
		return driver.ErrNotFound
	case libvirt.ERR_OPERATION_INVALID:
		return driver.ErrInvalidState
	case libvirt.ERR_NO_SUPPORT, libvirt.ERR_OPERATION_UNSUPPORTED, libvirt.ERR_ARGUMENT_UNSUPPORTED:
		return driver.ErrUnsupported
	case libvirt.ERR_DOM_EXIST:
		return driver.ErrAlreadyExists
	case libvirt.ERR_NO_CONNECT, libvirt.ERR_INVALID_CONN, libvirt.ERR_OPERATION_TIMEOUT:
		return driver.ErrUnavailable
	case libvirt.ERR_OPERATION_FAILED:
		// defining a second domain with a used name:
		// "domain 'x' already exists with uuid …"
		if strings.Contains(e.Message, "already exists") {
			return driver.ErrAlreadyExists
		}
	}
	if e.Domain == libvirt.FROM_RPC {
		return driver.ErrUnavailable
	}
	return nil
}

// fail wraps err (usually from libvirt) with the operation and the
// instance, and with its driver error class.
func fail(op, id string, err error) error {
	if err == nil {
		return nil
	}
	var class error
	if e, ok := asVirt(err); ok {
		class = classOf(e)
		err = lv(err)
	}
	if class != nil && !errors.Is(err, class) {
		return fmt.Errorf("libvirt-lxc: %s %s: %w (%w)", op, id, err, class)
	}
	return fmt.Errorf("libvirt-lxc: %s %s: %w", op, id, err)
}

// lv shows a bare libvirt error by its message (see virtError); other
// errors are returned as they are.
func lv(err error) error {
	switch e := err.(type) {
	case libvirt.Error:
		return virtError{e}
	case *libvirt.Error:
		if e != nil {
			return virtError{*e}
		}
	}
	return err
}

// isCode reports whether err is a libvirt error with that code.
func isCode(err error, code libvirt.ErrorNumber) bool {
	e, ok := asVirt(err)
	return ok && e.Code == code
}

// refusedToDie: libvirt-lxc's destroy gives up on processes that do not die
// within its wait ("Some processes refused to die"; or a SIGKILL that
// fails with EBUSY). nova retries; so does Destroy.
func refusedToDie(err error) bool {
	e, ok := asVirt(err)
	if !ok {
		return false
	}
	return strings.Contains(e.Message, "refused to die") ||
		(e.Code == libvirt.ERR_SYSTEM_ERROR && strings.Contains(e.Message, "Failed to terminate process"))
}

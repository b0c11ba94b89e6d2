package compute

import (
	"context"
	"errors"
	"time"
)

// undo is a stack of cleanup steps for a multi-step operation: each step
// registers how to reverse itself; on failure they run in reverse order on a
// context that is not cancelled with the request.
type undo struct {
	steps []func(context.Context) error
}

func (u *undo) push(fn func(context.Context) error) { u.steps = append(u.steps, fn) }

// run reverses every registered step and returns the joined errors.
func (u *undo) run(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	var errs []error
	for i := len(u.steps) - 1; i >= 0; i-- {
		if err := u.steps[i](ctx); err != nil {
			errs = append(errs, err)
		}
	}
	u.steps = nil
	return errors.Join(errs...)
}

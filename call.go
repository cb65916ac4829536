package herd

import (
	"context"
	"fmt"
)

// Caller makes calls: a *Node, or a process's *Context.
type Caller interface {
	Call(ctx context.Context, to Target, msg any) (any, error)
}

var (
	_ Caller = (*Node)(nil)
	_ Caller = (*Context)(nil)
)

// Call calls the target through c and returns the reply as an R. A reply of
// another type is an error matching ErrBadReply; a nil reply is R's zero
// value. When the call fails, the reply is still returned if it is an R
// (HandleCall may return both). WaitForName makes a call to a name ride
// through a failover.
//
//	state, err := herd.Call[GameState](ctx, node, herd.Name("game:42"), GetGame{})
func Call[R any](ctx context.Context, c Caller, to Target, msg any, opts ...CallOption) (R, error) {
	var zero R
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	var v any
	var err error
	if o.waitName {
		v, err = withName(ctx, nodeOfCaller(c), to, func(pid PID) (any, error) { return c.Call(ctx, pid, msg) })
	} else {
		v, err = c.Call(ctx, to, msg)
	}
	if v == nil {
		return zero, err
	}
	r, ok := v.(R)
	if !ok {
		if err != nil {
			return zero, err
		}
		return zero, fmt.Errorf("herd: call %T: reply is %T, want %T: %w", msg, v, zero, ErrBadReply)
	}
	return r, err
}

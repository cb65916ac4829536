package proc

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// A process holds no goroutine while its mailbox is empty. The first message
// into an empty mailbox starts a goroutine, which drains the mailbox a batch at
// a time and ends when it finds it empty. An idle process is a few hundred
// bytes of heap and nothing else.

type status uint8

const (
	stInit    status = iota // Init is running; messages wait in the mailbox
	stIdle                  // no goroutine; the mailbox is empty
	stRunning               // a goroutine is draining the mailbox
	stDead
)

// flags the running goroutine checks before each message.
const (
	flagDead uint32 = 1 << iota
	flagExit        // an exit signal asked the process to stop
)

type kind uint8

const (
	kindInfo kind = iota
	kindCast
	kindCall
	kindDown
)

type envelope struct {
	msg  any
	w    *waiter // for calls: where the reply goes
	seq  uint32  // for calls: which call of w this is
	kind kind
}

// waiter receives the replies of one caller's calls, one call at a time. It
// is reused: a process owns one, other callers take one from the runtime's
// pool. state holds the current call's sequence number and whether that
// call is done; exactly one party completes a call (the replier, or the
// caller giving up) by setting done, and only a replier that did so writes
// to ch. A late reply to an earlier call finds another sequence number and
// is dropped, so reuse never mixes replies.
type waiter struct {
	from  PID
	ch    chan callResult
	state atomic.Uint64 // seq<<1 | done
}

type callResult struct {
	val any
	err error
}

func newWaiter(from PID) *waiter {
	return &waiter{from: from, ch: make(chan callResult, 1)}
}

// begin starts the next call on w and returns its sequence number.
func (w *waiter) begin() uint32 {
	seq := uint32(w.state.Load()>>1) + 1
	w.state.Store(uint64(seq) << 1)
	return seq
}

// complete delivers the reply of call seq, if that call is still waiting.
func (w *waiter) complete(seq uint32, val any, err error) bool {
	if !w.state.CompareAndSwap(uint64(seq)<<1, uint64(seq)<<1|1) {
		return false
	}
	w.ch <- callResult{val, err}
	return true
}

// wait waits for the reply to call seq made to p, the death of p (dead),
// or the end of ctx, whichever comes first.
func (w *waiter) wait(ctx context.Context, seq uint32, dead <-chan struct{}, p *process) (any, error) {
	var r callResult
	select {
	case r = <-w.ch:
	case <-dead:
		if w.abandon(seq) {
			r.err = &ExitError{PID: p.pid, Reason: p.exitReason()}
		} else {
			r = <-w.ch // the reply won the race; it is on its way
		}
	case <-ctx.Done():
		if w.abandon(seq) {
			r.err = ctx.Err()
		} else {
			r = <-w.ch
		}
	}
	return r.val, r.err
}

// abandon ends call seq without a reply. It reports false if a reply won the
// race and is in (or on its way to) ch, where the caller must take it.
func (w *waiter) abandon(seq uint32) bool {
	return w.state.CompareAndSwap(uint64(seq)<<1, uint64(seq)<<1|1)
}

// watcher is a monitor on a process: a process to send Down to, or (for the
// layers above proc) a function to call during the exit. A hook releases
// what the process held (its names) and runs before anything that observes
// the exit.
type watcher struct {
	pid  PID
	fn   func(PID, error)
	hook bool
}

// The mailbox is a list of fixed-size chunks taken from the runtime's pool.
// A busy process recycles chunks instead of growing and copying a slice; an
// idle one holds none.
const chunkCap = 32

type chunk struct {
	next *chunk
	n    int
	buf  [chunkCap]envelope
}

type mailbox struct {
	head, tail *chunk
	n          int
}

func (m *mailbox) push(e envelope, pool *sync.Pool) {
	if m.tail == nil || m.tail.n == chunkCap {
		c := pool.Get().(*chunk)
		if m.tail == nil {
			m.head = c
		} else {
			m.tail.next = c
		}
		m.tail = c
	}
	m.tail.buf[m.tail.n] = e
	m.tail.n++
	m.n++
}

// takeAll detaches every queued chunk.
func (m *mailbox) takeAll() *chunk {
	h := m.head
	*m = mailbox{}
	return h
}

// release returns a detached list of chunks to the pool, dropping what is in
// them from index i of the first chunk on.
func release(c *chunk, i int, pool *sync.Pool) {
	for c != nil {
		clear(c.buf[i:c.n])
		next := c.next
		c.next, c.n = nil, 0
		pool.Put(c)
		c, i = next, 0
	}
}

var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

type process struct {
	rt     *Runtime
	pid    PID
	b      Process
	kind   string
	parent PID
	root   bool // spawned by the node, not by a process
	ctx    Context
	flags  atomic.Uint32
	trap   atomic.Bool
	// inflight counts the messages of the batch taken from the mailbox and
	// not yet handled, to chunk granularity, for Info.
	inflight atomic.Int64

	mu       sync.Mutex
	st       status
	mbox     mailbox
	warned   bool  // the long-mailbox warning was logged in this busy spell
	exitReq  error // set by an exit signal: stop with this reason
	reason   error // the exit reason, once dead
	deadCh   chan struct{}
	links    map[PID]struct{}
	watching map[Ref]PID     // monitors this process holds
	watchers map[Ref]watcher // monitors on this process

	// Owned by whichever goroutine runs the process's callbacks.
	cur      *envelope // the call being handled
	deferred bool
	calls    *waiter     // this process's own calls, made on first use
	callsUse atomic.Bool // claimed by the call in progress through calls

	runFn   func() // p.run as a func value, made on first use: "go p.runFn()" allocates nothing
	stopReq error
	// stash, if set, asks terminate to call Stash first (StashAndStop).
	stash atomic.Pointer[stashReq]
	log   atomic.Pointer[slog.Logger]
}

// enqueue appends e to the mailbox and starts a goroutine if none runs. For
// a call it also returns the channel closed when the process dies, so the
// caller can stop waiting. If the process is dead it appends nothing and
// returns an *ExitError.
func (p *process) enqueue(e envelope) (dead <-chan struct{}, err error) {
	p.mu.Lock()
	if p.st == stDead {
		reason := p.reason
		p.mu.Unlock()
		return nil, &ExitError{PID: p.pid, Reason: reason}
	}
	if e.kind == kindCall {
		if p.deadCh == nil {
			p.deadCh = make(chan struct{})
		}
		dead = p.deadCh
	}
	p.mbox.push(e, &p.rt.chunks)
	warn := p.mbox.n == p.rt.mailboxWarn && !p.warned
	if warn {
		p.warned = true
	}
	start := p.st == stIdle
	if start {
		p.st = stRunning
	}
	p.mu.Unlock()
	if start {
		go p.runner()()
	}
	if warn {
		p.rt.log.Warn("mailbox is long", "pid", p.pid.String(), "kind", p.kind, "messages", p.rt.mailboxWarn)
	}
	return dead, nil
}

// runner returns p.run as a func value. It is called with st just set to
// stRunning, so by the one goroutine allowed to start a runner.
func (p *process) runner() func() {
	if p.runFn == nil {
		p.runFn = p.run
	}
	return p.runFn
}

// run drains the mailbox, then returns.
func (p *process) run() {
	pool := &p.rt.chunks
	for {
		p.mu.Lock()
		if p.st == stDead {
			p.mu.Unlock()
			return
		}
		if p.exitReq != nil {
			reason := p.exitReq
			p.mu.Unlock()
			p.terminate(reason)
			return
		}
		if p.mbox.n == 0 {
			p.st = stIdle
			p.warned = false
			p.mu.Unlock()
			return
		}
		p.inflight.Store(int64(p.mbox.n))
		c := p.mbox.takeAll()
		p.mu.Unlock()

		for c != nil {
			for i := 0; i < c.n; i++ {
				if p.flags.Load() != 0 { // dead or stopping: the rest is dropped
					release(c, i, pool)
					p.inflight.Store(0)
					c = nil
					break
				}
				reason := p.invoke(&c.buf[i])
				c.buf[i] = envelope{}
				if reason != nil {
					release(c, i+1, pool)
					p.inflight.Store(0)
					p.terminate(reason)
					return
				}
			}
			if c != nil {
				p.inflight.Add(-int64(c.n))
				next := c.next
				c.next, c.n = nil, 0
				pool.Put(c)
				c = next
			}
		}
	}
}

// invoke runs one callback. It returns the reason to stop with, if the
// callback panicked or asked to stop.
func (p *process) invoke(e *envelope) (stop error) {
	defer func() {
		if v := recover(); v != nil {
			stop = &CrashError{Value: v, Stack: stack()}
		}
	}()
	switch e.kind {
	case kindCall:
		p.cur, p.deferred = e, false
		val, err := p.b.HandleCall(&p.ctx, e.msg)
		if !p.deferred {
			e.w.complete(e.seq, val, err)
		}
		p.cur = nil
	case kindCast:
		p.b.HandleCast(&p.ctx, e.msg)
	case kindInfo:
		p.b.HandleInfo(&p.ctx, e.msg)
	case kindDown:
		d := e.msg.(Down)
		if p.takeMonitor(d.Ref) {
			p.b.HandleInfo(&p.ctx, d)
		}
	}
	return p.stopReq
}

// terminate runs Terminate, unless the process was killed meanwhile, then
// ends the process.
func (p *process) terminate(reason error) {
	p.cur = nil
	if p.flags.Load()&flagDead == 0 {
		if req := p.stash.Load(); req != nil {
			req.state, req.err = p.callStash()
			req.done.Store(true)
		}
		p.callTerminate(reason)
	}
	if crash, ok := reason.(*CrashError); ok {
		p.ctx.Logger().Error("process crashed", "reason", crash.Error(), "stack", string(crash.Stack))
	}
	p.die(reason)
}

// stashReq carries a Stash result from the process's goroutine to
// StashAndStop, which reads it after the process's death channel closes.
type stashReq struct {
	state []byte
	err   error
	done  atomic.Bool // state and err are written
}

func (p *process) callStash() (state []byte, err error) {
	s, ok := p.b.(interface{ Stash() ([]byte, error) })
	if !ok {
		return nil, ErrNoStash
	}
	defer func() {
		if v := recover(); v != nil {
			err = &CrashError{Value: v, Stack: stack()}
		}
	}()
	return s.Stash()
}

func (p *process) callTerminate(reason error) {
	defer func() {
		if v := recover(); v != nil {
			p.ctx.Logger().Error("Terminate panicked", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	p.b.Terminate(&p.ctx, reason)
}

// die ends the process with reason, once. It may run on any goroutine: on
// Kill, it runs on the killer's while a callback may still be running on the
// process's own; that callback is abandoned. It reports whether this call
// ended the process.
func (p *process) die(reason error) bool {
	p.mu.Lock()
	if p.st == stDead {
		p.mu.Unlock()
		return false
	}
	p.st = stDead
	p.flags.Store(flagDead)
	p.reason = reason
	links, watching, watchers := p.links, p.watching, p.watchers
	p.links, p.watching, p.watchers = nil, nil, nil
	queued := p.mbox.takeAll()
	deadCh := p.deadCh
	p.deadCh = closedCh
	p.mu.Unlock()

	rt := p.rt
	release(queued, 0, &rt.chunks)
	rt.table.Remove(p.pid.ID)
	for ref, target := range watching {
		if _, remote, _ := rt.route(target); remote != nil {
			remote.Demonitor(p.pid, ref, target)
		} else if t := rt.local(target); t != nil {
			t.removeWatcher(ref)
		}
	}
	// Hooks first: the layers above release what the process held (its
	// names) before any watcher, caller or process hears of the exit.
	for _, w := range watchers {
		if w.hook {
			w.fn(p.pid, reason)
		}
	}
	if deadCh != nil {
		close(deadCh)
	}
	for _, w := range watchers {
		if w.fn != nil && !w.hook {
			w.fn(p.pid, reason)
		}
	}
	for ref, w := range watchers {
		if w.fn == nil {
			rt.deliverDown(w.pid, ref, p.pid, reason)
		}
	}
	for l := range links {
		if _, remote, _ := rt.route(l); remote != nil {
			remote.LinkExit(p.pid, l, reason)
		} else if t := rt.local(l); t != nil {
			t.signal(p.pid, reason, sigLink)
		}
	}
	rt.released(p.root)
	return true
}

// How an exit signal reaches a process.
type sigMode uint8

const (
	sigExit sigMode = iota // from Exit: Kill is immediate; trappable otherwise
	sigLink                // from a linked process that exited
	sigStop                // from the node shutting down: stops the process, trapping or not
)

// signal delivers an exit signal.
func (p *process) signal(from PID, reason error, mode sigMode) {
	p.mu.Lock()
	if p.st == stDead {
		p.mu.Unlock()
		return
	}
	switch mode {
	case sigLink:
		if _, ok := p.links[from]; !ok {
			p.mu.Unlock() // unlinked meanwhile
			return
		}
		delete(p.links, from)
	case sigExit:
		if reason == Kill {
			p.mu.Unlock()
			p.die(Killed)
			return
		}
	}
	var start bool
	switch {
	case mode == sigStop || (from == p.parent && from != p.pid):
		// From the node, or from the owner (the spawning process, or the
		// node for processes it spawned): stop, trapping or not, as a
		// gen_server does for its parent. Only a non-trapping process
		// ignores its parent's Normal.
		if mode != sigStop && reason == Normal && !p.trap.Load() {
			break
		}
		if p.exitReq == nil {
			p.exitReq = reason
			p.flags.Or(flagExit)
		}
		start = p.st == stIdle
	case p.trap.Load():
		p.mbox.push(envelope{kind: kindInfo, msg: Exit{From: from, Reason: reason}}, &p.rt.chunks)
		start = p.st == stIdle
	case reason == Normal:
		// Ignored by a process that does not trap exits.
	default:
		if p.exitReq == nil {
			p.exitReq = reason
			p.flags.Or(flagExit)
		}
		start = p.st == stIdle
	}
	if start {
		p.st = stRunning
	}
	p.mu.Unlock()
	if start {
		go p.runner()()
	}
}

func (p *process) addWatcher(ref Ref, w watcher) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.st == stDead {
		return false
	}
	if p.watchers == nil {
		p.watchers = make(map[Ref]watcher)
	}
	p.watchers[ref] = w
	return true
}

func (p *process) removeWatcher(ref Ref) {
	p.mu.Lock()
	delete(p.watchers, ref)
	p.mu.Unlock()
}

// takeMonitor consumes the monitor ref when its Down is about to be handled;
// false means it was demonitored and the Down must be dropped.
func (p *process) takeMonitor(ref Ref) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.watching[ref]; !ok {
		return false
	}
	delete(p.watching, ref)
	return true
}

func (p *process) doneChan() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.deadCh == nil {
		p.deadCh = make(chan struct{})
	}
	return p.deadCh
}

func (p *process) exitReason() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reason
}

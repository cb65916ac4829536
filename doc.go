// Package herd is a process runtime for Go in the manner of Erlang/OTP:
// named, supervised processes that handle one message at a time, are
// found by name, and are restarted by their supervisors when they fail.
//
// Today herd runs on one node: processes, local supervision, the local
// registry and the wire codec. The cluster (membership, mTLS transport,
// remote processes), replicated state, the distributed registry and
// supervisor, and the agent are built on this foundation next; see the
// README for what works now.
//
// # Processes
//
// A process is a Process value (embed Base and write the callbacks you
// need) started with Node.Spawn (by registered kind) or Node.SpawnProcess.
// It has an unbounded FIFO mailbox and holds a goroutine only while it has
// messages. Messages are plain Go values: Send and Cast are asynchronous,
// Call waits for the reply, the context's end, or the callee's exit.
//
//	type Counter struct {
//		herd.Base
//		n int
//	}
//
//	func (c *Counter) HandleCall(ctx *herd.Context, msg any) (any, error) {
//		switch m := msg.(type) {
//		case Add:
//			c.n += m.N
//			return c.n, nil
//		}
//		return c.Base.HandleCall(ctx, msg)
//	}
//
//	pid, _ := node.SpawnProcess(ctx, &Counter{}, nil, herd.WithName("counter"))
//	n, err := herd.Call[int](ctx, node, herd.Name("counter"), Add{N: 2})
//
// A panic in a callback ends that process with a *CrashError and touches
// nothing else. Monitors deliver exactly one Down; links propagate abnormal
// exits; a process that traps exits receives them as Exit messages.
//
// # Supervision
//
// StartSupervisor starts a supervisor with one_for_one, one_for_all or
// rest_for_one strategy, permanent, transient or temporary children,
// shutdown budgets, and a restart intensity that, once exceeded, stops the
// supervisor so its own supervisor decides. A dynamic supervisor takes
// children at run time.
//
// # Shutdown
//
// Node.Stop signals every process the node spawned directly, at once; a
// supervisor stops its children newest first, each within its budget,
// before it exits. Processes left behind by their parents are then
// signalled too, and whatever is alive when the deadline passes is killed.
package herd

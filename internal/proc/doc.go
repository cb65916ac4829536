// Package proc is a node's local process runtime: PIDs, mailboxes, spawn,
// send, cast and call, monitors, links, exit signals and timers. It knows
// nothing of other nodes, names or supervision policy; the layers above reach
// it through Runtime and the hooks it offers (SetResolver, MonitorFunc,
// BeforeInit). It depends only on internal/idtable.
//
// A process handles one message at a time from an unbounded FIFO mailbox and
// holds a goroutine only while it has messages. Local messages are Go values,
// never encoded.
package proc

// Package hooks holds what herd's Start lets a test harness replace: the
// network a node uses. Only code inside the herd module can build these
// options (herdtest does, to inject faults); users cannot. It depends on
// memberlist only.
package hooks

import (
	"context"
	"net"

	"github.com/hashicorp/memberlist"
)

// Options are the replaceable parts of a node.
type Options struct {
	// Gossip, if set, carries memberlist's traffic (already bound).
	Gossip memberlist.NodeAwareTransport
	// Dial, if set, opens the node's outbound transport connections.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Listener, if set, accepts the node's inbound transport connections.
	Listener net.Listener
}

package membership

import (
	"fmt"
	"time"

	"github.com/hashicorp/memberlist"
)

// Profile names a set of failure-detection timings.
//
// Detection of a node that stops answering (a crashed host, a silent
// network) takes, roughly: the wait until some member probes it (up to one
// ProbeInterval), the probe round (ProbeTimeout, then indirect probes
// through IndirectChecks other members until the interval ends), and the
// suspicion timeout: SuspicionMult × max(1, log10(N)) × ProbeInterval, or
// up to SuspicionMaxTimeoutMult times that until another member confirms
// the suspicion. The death then spreads by gossip every GossipInterval.
//
// A killed process is usually found much sooner by the fast path: its
// connections are refused, a direct probe goes unanswered, and it is
// declared dead at once (see Membership.Confirm).
type Profile string

const (
	// LAN is the default, for hosts on one network: a silent failure is
	// declared in about 2–2.5 s (0.4 s probes, a fixed suspicion of 3
	// intervals, so the worst case is bounded). Built from memberlist's
	// DefaultLANConfig with shorter intervals.
	LAN Profile = "lan"
	// Local is for tests on one machine: about 0.5 s to declare a silent
	// failure. It keeps LAN's retransmits and indirect checks (not
	// memberlist's DefaultLocalConfig, whose reduced retransmits lose
	// broadcasts), only with shorter intervals.
	Local Profile = "local"
)

// Timings are the knobs a profile sets; see Profile for how they combine.
type Timings struct {
	// ProbeInterval is how often each member probes another.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a direct probe waits before indirect
	// probes are tried. It should exceed a round trip on a loaded network.
	ProbeTimeout time.Duration
	// IndirectChecks is how many members probe on behalf of a prober that
	// got no answer, so one bad link does not condemn a node.
	IndirectChecks int
	// SuspicionMult scales the suspicion timeout (in probe intervals).
	SuspicionMult int
	// SuspicionMaxTimeoutMult is how much longer a suspicion may last
	// while no other member confirms it.
	SuspicionMaxTimeoutMult int
	// GossipInterval is how often state changes are gossiped, to
	// GossipNodes members each time.
	GossipInterval time.Duration
	GossipNodes    int
	// GossipToTheDeadTime is how long dead members still get gossip, so
	// one wrongly declared dead can refute it.
	GossipToTheDeadTime time.Duration
	// PushPullInterval is how often two members exchange their full state
	// (anti-entropy of the member list).
	PushPullInterval time.Duration
	// TCPTimeout bounds push/pull and other stream exchanges.
	TCPTimeout time.Duration
	// RetransmitMult scales how many times a change is gossiped:
	// RetransmitMult × log10(N+1).
	RetransmitMult int
}

// Timings returns the profile's timings.
func (p Profile) Timings() (Timings, error) {
	switch p {
	case LAN, "":
		return Timings{
			ProbeInterval: 400 * time.Millisecond, ProbeTimeout: 250 * time.Millisecond, IndirectChecks: 3,
			SuspicionMult: 3, SuspicionMaxTimeoutMult: 1,
			GossipInterval: 100 * time.Millisecond, GossipNodes: 3, GossipToTheDeadTime: 15 * time.Second,
			PushPullInterval: 15 * time.Second, TCPTimeout: 5 * time.Second, RetransmitMult: 4,
		}, nil
	case Local:
		return Timings{
			ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 60 * time.Millisecond, IndirectChecks: 3,
			SuspicionMult: 3, SuspicionMaxTimeoutMult: 2,
			GossipInterval: 20 * time.Millisecond, GossipNodes: 3, GossipToTheDeadTime: 3 * time.Second,
			PushPullInterval: 3 * time.Second, TCPTimeout: 2 * time.Second, RetransmitMult: 4,
		}, nil
	}
	return Timings{}, fmt.Errorf("membership: unknown profile %q (use %q or %q)", p, LAN, Local)
}

// apply sets the timings on a memberlist configuration built from its LAN
// defaults.
func (t Timings) apply(c *memberlist.Config) {
	c.ProbeInterval = t.ProbeInterval
	c.ProbeTimeout = t.ProbeTimeout
	c.IndirectChecks = t.IndirectChecks
	c.SuspicionMult = t.SuspicionMult
	c.SuspicionMaxTimeoutMult = t.SuspicionMaxTimeoutMult
	c.GossipInterval = t.GossipInterval
	c.GossipNodes = t.GossipNodes
	c.GossipToTheDeadTime = t.GossipToTheDeadTime
	c.PushPullInterval = t.PushPullInterval
	c.TCPTimeout = t.TCPTimeout
	c.RetransmitMult = t.RetransmitMult
}

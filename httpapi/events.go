package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/herdkit/herd"
)

// Event is one server-sent event of GET /api/events. Its SSE event name
// is Kind: "registry", "member" or "child".
type Event struct {
	Kind string    `json:"kind"`
	Type string    `json:"type"`
	At   time.Time `json:"at"`
	// Registry events: the entry, and for a conflict the winner's PID.
	Entry  *Entry `json:"entry,omitempty"`
	Winner string `json:"winner,omitempty"`
	// Member events: the member after the change, its status before, and
	// why it changed.
	Member *Node  `json:"member,omitempty"`
	From   string `json:"from,omitempty"`
	Cause  string `json:"cause,omitempty"`
	// Child events: the child after the change (as it was, for removed).
	Child *Child `json:"child,omitempty"`
}

// childPoll is how often the events stream compares the supervisor's
// children with what it last sent.
const childPoll = 200 * time.Millisecond

var registryEventNames = map[herd.RegistryEventType]string{
	herd.Registered: "registered", herd.Unregistered: "unregistered", herd.Updated: "updated", herd.Conflict: "conflict",
}

// events streams registry changes in the request's environment, membership
// changes and children's changes, until the client goes away. The first
// events describe the present: every member and every child.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	a, err := s.authorize(r, read)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	env, err := s.envOf(r, a)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		s.fail(w, r, errorf(http.StatusInternalServerError, "internal", "streaming unsupported"))
		return
	}
	watch := s.n.Registry().Watch(herd.Query{Env: env, Kind: herd.Unique}, herd.WatchOptions{})
	defer watch.Close()
	var members <-chan []herd.MemberChange
	if s.n.Clustered() {
		sub, err := s.n.SubscribeMembers()
		if err == nil {
			defer sub.Close()
			members = sub.C()
		}
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(e Event) bool {
		e.At = s.cfg.Now().UTC()
		b, err := json.Marshal(e)
		if err != nil {
			return false
		}
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.Kind, b); err != nil {
			return false
		}
		return true
	}
	if !s.n.Clustered() {
		m, _ := s.n.Member(s.n.ID())
		node := s.nodeOf(m)
		send(Event{Kind: "member", Type: m.Status.String(), Member: &node, Cause: "known"})
	}
	seen := map[string]Child{}
	sendChildren := func() bool {
		now := map[string]Child{}
		for _, c := range s.n.Supervisor().WhichChildren() {
			if !a.env(childEnv(c)) {
				continue
			}
			cur := childOf(c)
			now[c.ID] = cur
			prev, had := seen[c.ID]
			var typ string
			switch {
			case !had:
				typ = "added"
			case cur.Failed != "" && prev.Failed == "":
				typ = "failed"
			case cur.Node != prev.Node:
				typ = "moved"
			case cur.PID != prev.PID && cur.PID != "":
				typ = "started"
			case cur.PID == "" && prev.PID != "":
				typ = "stopped"
			default:
				continue
			}
			if !send(Event{Kind: "child", Type: typ, Child: &cur}) {
				return false
			}
		}
		for id, prev := range seen {
			if _, ok := now[id]; !ok {
				if !send(Event{Kind: "child", Type: "removed", Child: &prev}) {
					return false
				}
			}
		}
		seen = now
		return true
	}
	if !sendChildren() {
		return
	}
	flusher.Flush()
	poll := time.NewTicker(childPoll)
	defer poll.Stop()
	beat := time.NewTicker(15 * time.Second)
	defer beat.Stop()
	for {
		ok := true
		select {
		case <-r.Context().Done():
			return
		case e := <-watch.Events():
			entry := entryOf(e.Entry)
			ev := Event{Kind: "registry", Type: registryEventNames[e.Type], Entry: &entry}
			if e.Type == herd.Conflict {
				ev.Winner = e.Winner.String()
			}
			ok = send(ev)
		case batch := <-members:
			for _, ch := range batch {
				node := s.nodeOf(ch.Member)
				if ok = send(Event{Kind: "member", Type: ch.Member.Status.String(), Member: &node, From: ch.From.String(), Cause: ch.Cause}); !ok {
					break
				}
			}
		case <-poll.C:
			ok = sendChildren()
		case <-beat.C:
			_, err := fmt.Fprint(w, ": keep-alive\n\n")
			ok = err == nil
		}
		if !ok {
			return
		}
		flusher.Flush()
	}
}

func (s *Server) nodeOf(m herd.Member) Node {
	return Node{
		ID: m.ID.String(), Name: m.ID.Name, Incarnation: m.ID.Incarnation, Status: m.Status.String(),
		Addr: m.Addr, GossipAddr: m.GossipAddr, Version: m.Version, Tags: m.Tags, Self: m.ID == s.n.ID(),
	}
}

// Package replica drives package crdt over the cluster: named replicated
// maps whose writes apply to the local replica before they return, whose
// deltas go to every live peer in batches a few milliseconds apart, and
// whose losses anti-entropy repairs (digests of causal contexts, then the
// missed deltas from a log, or the whole state in chunks when the log no
// longer reaches back far enough). It follows membership to hide what a
// dead node life owned and to retire what a departed one owned, and
// optionally keeps each map in a bbolt file so that a cluster powered off
// as a whole comes back with its data.
//
// It must not depend on the root package or on anything that uses it
// (registry backends, the distributed supervisor).
package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdkit/herd/internal/crdt"
	"github.com/herdkit/herd/internal/membership"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/transport"
	"github.com/herdkit/herd/internal/unbounded"
)

// Network sends payloads to peers; *transport.Transport is one.
type Network interface {
	Send(ctx context.Context, to transport.Peer, payload []byte) error
}

// Config configures a node's replicas.
type Config struct {
	// Self is this node life; its dots and owned entries carry it.
	Self proc.NodeID
	// Store, if set, keeps durable maps; Replicas closes it.
	Store *Store
	// BatchDelay is how long a write's delta waits for others to share a
	// frame with. Default 1ms.
	BatchDelay time.Duration
	// AntiEntropy is how often the node compares its maps with one peer
	// (the peers taken in turn). Default 1s.
	AntiEntropy time.Duration
	// RetireAfter is how long a node life may stay dead (or unknown) before
	// what it owned is dropped for good; until then it is only hidden, and
	// comes back if the life does (a partition heals). Default 10m.
	RetireAfter time.Duration
	// LogSize is how many recent deltas each map keeps to repair peers
	// with; a peer further behind gets the whole state. Default 8192.
	LogSize int
	// ChunkBytes bounds one frame of deltas or of a state transfer.
	// Default 1 MiB.
	ChunkBytes int
	// FlushInterval is how often durable maps' changes are written to the
	// store (one transaction for all). Default 10ms.
	FlushInterval time.Duration
	// Now reads the wall clock; default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Errors. Test for them with errors.Is.
var (
	// ErrClosed: the node's replicas are closed.
	ErrClosed = errors.New("replica: closed")
	// ErrNotDurable: a map asked to be durable on a node without a store.
	ErrNotDurable = errors.New("replica: durable map needs a data directory")
)

// Replicas is one node's replicated maps. All methods are safe for
// concurrent use.
type Replicas struct {
	cfg  Config
	log  *slog.Logger
	self proc.NodeID

	clockMu sync.Mutex
	clock   crdt.Clock

	mu      sync.Mutex
	maps    map[string]*Map
	closed  bool
	net     Network
	mem     *membership.Membership
	peers   map[proc.NodeID]transport.Peer // live peers deltas go to
	order   []proc.NodeID                  // anti-entropy turn order
	turn    int
	owners  map[proc.NodeID]ownerState
	pending map[xferKey]*incoming // state transfers being received
	sent    map[xferKey]time.Time // when a whole state last went to a peer
	// streamFrom is, per peer and map, the last of this node's own dots
	// written before its delta stream to the peer (re)started; later ones
	// are on that stream.
	streamFrom map[xferKey]uint64
	xfer       uint64

	sendMu   sync.Mutex // one sendQueued at a time, so batches keep their order
	outMu    sync.Mutex
	out      map[string][]crdt.Delta // deltas waiting to be sent, by map
	outOrder []string
	kick     chan struct{}
	urgent   chan proc.NodeID // peers to send a digest to now

	stats Stats
	done  chan struct{}
	wg    sync.WaitGroup
}

type xferKey struct {
	from proc.NodeID // the peer
	name string
}

// incoming is a state transfer being received.
type incoming struct {
	xfer  uint64
	next  uint32
	state crdt.Delta
}

// ownerState is how this node sees a node life that owns entries.
type ownerState struct {
	down    bool
	since   time.Time // when it was first seen down
	retired bool
}

// Stats counts replica traffic.
type Stats struct {
	DeltasSent, DeltasReceived uint64
	DeltaBytes                 uint64 // bytes of delta frames sent
	DigestsSent, DigestBytes   uint64
	StateTransfers             uint64 // whole states sent
	StateBytes                 uint64
}

// New returns a node's replicas, with the durable maps its store holds
// already loaded. They work alone until Attach connects them to a cluster.
func New(cfg Config) (*Replicas, error) {
	if cfg.BatchDelay <= 0 {
		cfg.BatchDelay = time.Millisecond
	}
	if cfg.AntiEntropy <= 0 {
		cfg.AntiEntropy = time.Second
	}
	if cfg.RetireAfter <= 0 {
		cfg.RetireAfter = 10 * time.Minute
	}
	if cfg.LogSize == 0 {
		cfg.LogSize = 8192
	}
	if cfg.ChunkBytes <= 0 {
		cfg.ChunkBytes = 1 << 20
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = 10 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Replicas{
		cfg: cfg, log: cfg.Logger, self: cfg.Self, maps: make(map[string]*Map),
		peers: make(map[proc.NodeID]transport.Peer), owners: make(map[proc.NodeID]ownerState),
		pending: make(map[xferKey]*incoming), sent: make(map[xferKey]time.Time), streamFrom: make(map[xferKey]uint64), out: make(map[string][]crdt.Delta),
		kick: make(chan struct{}, 1), urgent: make(chan proc.NodeID, 64), done: make(chan struct{}),
	}
	if cfg.Store != nil {
		if err := r.load(); err != nil {
			return nil, err
		}
	}
	r.wg.Add(2)
	go r.sender()
	go r.ticker()
	return r, nil
}

func (r *Replicas) load() error {
	last, err := r.cfg.Store.Clock()
	if err != nil {
		return err
	}
	r.clock.Observe(last)
	names, err := r.cfg.Store.Maps()
	if err != nil {
		return err
	}
	for _, name := range names {
		state, err := r.cfg.Store.Load(name)
		if err != nil {
			return err
		}
		mp := r.newMap(name, nil)
		mp.durable = true
		mp.m.Join(&state)
		r.maps[name] = mp
		r.reconcileMap(mp, r.cfg.Now())
	}
	return nil
}

// Attach connects the replicas to the cluster: deltas go to the live
// members of mem over net, and membership changes hide and retire what
// node lives owned. Payloads from peers must be passed to Message.
func (r *Replicas) Attach(net Network, mem *membership.Membership) {
	r.mu.Lock()
	r.net, r.mem = net, mem
	r.mu.Unlock()
	sub := mem.Subscribe()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer sub.Close()
		for {
			select {
			case <-r.done:
				return
			case batch, ok := <-sub.C():
				if !ok {
					return
				}
				r.members(batch)
			}
		}
	}()
}

// members applies a batch of membership changes.
func (r *Replicas) members(batch []membership.Change) {
	var fresh []proc.NodeID
	r.mu.Lock()
	for _, ch := range batch {
		m := ch.Member
		if m.ID == r.self {
			continue
		}
		if m.Status.Ended() {
			if _, ok := r.peers[m.ID]; ok {
				delete(r.peers, m.ID)
				r.reorder()
			}
			r.forgetTransfers(m.ID)
		} else {
			if _, ok := r.peers[m.ID]; !ok {
				fresh = append(fresh, m.ID)
				r.restream(m.ID)
			}
			r.peers[m.ID] = transport.Peer{ID: m.ID, Addr: m.Addr}
			r.reorder()
		}
	}
	maps := r.mapList()
	r.mu.Unlock()
	now := r.cfg.Now()
	for _, mp := range maps {
		r.reconcileMap(mp, now)
	}
	// A peer new to this node (joined, or back from the dead) is brought
	// up to date, and brings this node up to date, at once.
	for _, id := range fresh {
		r.digestTo(id, false)
	}
}

func (r *Replicas) reorder() {
	r.order = r.order[:0]
	for id := range r.peers {
		r.order = append(r.order, id)
	}
	rand.Shuffle(len(r.order), func(i, j int) { r.order[i], r.order[j] = r.order[j], r.order[i] })
}

func (r *Replicas) mapList() []*Map {
	out := make([]*Map, 0, len(r.maps))
	for _, mp := range r.maps {
		out = append(out, mp)
	}
	return out
}

// ownerStatus says whether node life o's entries are to be hidden or
// retired, as membership sees o now. Called with r.mu held.
func (r *Replicas) ownerStatus(o proc.NodeID, now time.Time) ownerState {
	st := r.owners[o]
	if st.retired || o == r.self {
		return st
	}
	if o.Name == r.self.Name && o.Incarnation < r.self.Incarnation {
		st.retired = true // an earlier life of this node
		return st
	}
	alive := false
	if r.mem != nil {
		if latest, ok := r.mem.Latest(o.Name); ok && latest.ID.Incarnation > o.Incarnation {
			st.retired = true // superseded by a later life
			return st
		}
		if m, ok := r.mem.Member(o); ok {
			if m.Status == membership.Left {
				st.retired = true
				return st
			}
			alive = !m.Status.Ended()
		}
	}
	if alive {
		return ownerState{}
	}
	if !st.down {
		st.down, st.since = true, now
	}
	if now.Sub(st.since) >= r.cfg.RetireAfter {
		st.retired = true
	}
	return st
}

// reconcileMap brings the map's view of its owners in line with
// membership: hides the entries of lives that are down, shows those that
// came back, and retires those gone for good.
func (r *Replicas) reconcileMap(mp *Map, now time.Time) {
	mp.mu.Lock()
	owners := mp.m.Owners()
	var deltas []crdt.Delta
	r.mu.Lock()
	for _, o := range owners {
		st := r.ownerStatus(o, now)
		r.owners[o] = st
		switch {
		case st.retired:
			if d, ok := mp.m.Retire(o); ok {
				mp.logged(d)
				deltas = append(deltas, d)
			}
		default:
			mp.m.SetDown(o, st.down)
		}
	}
	r.mu.Unlock()
	mp.mu.Unlock()
	for _, d := range deltas {
		r.enqueue(mp.name, d)
	}
}

// Now returns a reading of the node's hybrid logical clock: later than
// every timestamp this node has made or seen.
func (r *Replicas) Now() crdt.Timestamp { return r.now() }

func (r *Replicas) now() crdt.Timestamp {
	r.clockMu.Lock()
	defer r.clockMu.Unlock()
	return r.clock.Now(r.cfg.Now().UnixMilli())
}

func (r *Replicas) observe(t crdt.Timestamp) {
	r.clockMu.Lock()
	r.clock.Observe(t)
	r.clockMu.Unlock()
}

// Open returns the map called name, creating it if this node has none.
// A map exists on a node as soon as a peer's delta for it arrives, so
// Open may find data already there. resolve (nil for last writer wins)
// decides what a key written concurrently reads as; every node must give
// the same. durable keeps the map in the store.
func (r *Replicas) Open(name string, resolve crdt.Resolver, durable bool) (*Map, error) {
	if durable && r.cfg.Store == nil {
		return nil, fmt.Errorf("map %q: %w", name, ErrNotDurable)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, ErrClosed
	}
	mp, found := r.maps[name]
	if !found {
		mp = r.newMap(name, resolve)
		r.maps[name] = mp
	}
	r.mu.Unlock()
	mp.mu.Lock()
	defer mp.mu.Unlock()
	if found && resolve != nil {
		mp.m.SetResolver(resolve)
	}
	if durable && !mp.durable {
		mp.durable = true
		for _, key := range mp.m.Keys() {
			mp.dirty[key] = struct{}{}
		}
		mp.metaDirty = true
	}
	return mp, nil
}

// mapFor returns the map called name, creating it for a peer's delta.
func (r *Replicas) mapFor(name string) *Map {
	r.mu.Lock()
	defer r.mu.Unlock()
	mp := r.maps[name]
	if mp == nil && !r.closed {
		mp = r.newMap(name, nil)
		r.maps[name] = mp
	}
	return mp
}

func (r *Replicas) newMap(name string, resolve crdt.Resolver) *Map {
	mp := &Map{r: r, name: name, m: crdt.NewMap(r.self, resolve), log: newDeltaLog(r.cfg.LogSize), dirty: make(map[string]struct{})}
	mp.m.OnChange(mp.changed)
	mp.m.OnStore(func(key string) {
		if mp.durable {
			mp.dirty[key] = struct{}{}
		}
	})
	return mp
}

// Stats returns the traffic counters so far.
func (r *Replicas) Stats() Stats {
	r.outMu.Lock()
	defer r.outMu.Unlock()
	return r.stats
}

// Close stops replication, writes what durable maps have not yet written,
// and closes the store. Maps answer reads afterwards; writes fail.
func (r *Replicas) Close() error {
	if !r.stop() || r.cfg.Store == nil {
		return nil
	}
	err := r.flush()
	return errors.Join(err, r.cfg.Store.Close())
}

// Halt stops replication as a crash would: durable changes not yet
// written are lost (they are at most FlushInterval old).
func (r *Replicas) Halt() {
	if r.stop() && r.cfg.Store != nil {
		r.cfg.Store.Close()
	}
}

// stop ends the goroutines and watches; false if already stopped.
func (r *Replicas) stop() bool {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return false
	}
	r.closed = true
	maps := r.mapList()
	r.mu.Unlock()
	close(r.done)
	r.wg.Wait()
	for _, mp := range maps {
		mp.closeWatches()
	}
	return true
}

// ---- sending ----

// enqueue queues a local delta for every live peer.
func (r *Replicas) enqueue(name string, d crdt.Delta) {
	r.outMu.Lock()
	if _, ok := r.out[name]; !ok {
		r.outOrder = append(r.outOrder, name)
	}
	r.out[name] = append(r.out[name], d)
	r.outMu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// sender ships queued deltas: it waits BatchDelay after the first, so a
// burst of writes shares frames, then sends everything queued.
func (r *Replicas) sender() {
	defer r.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-r.kick:
		}
		timer.Reset(r.cfg.BatchDelay)
		select {
		case <-r.done:
			return
		case <-timer.C:
		}
		r.sendMu.Lock()
		r.sendQueued()
		r.sendMu.Unlock()
	}
}

// sendQueued sends every queued delta to every live peer.
func (r *Replicas) sendQueued() {
	r.outMu.Lock()
	out, order := r.out, r.outOrder
	r.out, r.outOrder = make(map[string][]crdt.Delta, len(out)), nil
	r.outMu.Unlock()
	r.mu.Lock()
	peers := make([]transport.Peer, 0, len(r.peers))
	for _, p := range r.peers {
		peers = append(peers, p)
	}
	net := r.net
	r.mu.Unlock()
	if net == nil || len(peers) == 0 || len(order) == 0 {
		return
	}
	frames := r.deltaFrames(order, out)
	for _, p := range peers {
		for _, f := range frames {
			r.send(p, f.payload, time.Second)
		}
	}
	r.outMu.Lock()
	for _, f := range frames {
		r.stats.DeltaBytes += uint64(len(f.payload) * len(peers))
		r.stats.DeltasSent += uint64(f.count * len(peers))
	}
	r.outMu.Unlock()
}

// Flush sends the deltas still waiting for their batch, now; a node that
// stops calls it before its transport's last flush.
func (r *Replicas) Flush() {
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	r.sendQueued()
}

type frame struct {
	payload []byte
	count   int
}

// deltaFrames encodes deltas of several maps into frames of at most
// ChunkBytes (a single larger delta gets a frame of its own).
func (r *Replicas) deltaFrames(order []string, out map[string][]crdt.Delta) []frame {
	var frames []frame
	var msg deltasMsg
	size, count := 0, 0
	flush := func() {
		if count == 0 {
			return
		}
		b, err := encode(kindDeltas, &msg)
		if err != nil {
			r.log.Error("replica: encoding deltas", "err", err)
		} else {
			frames = append(frames, frame{b, count})
		}
		msg, size, count = deltasMsg{}, 0, 0
	}
	for _, name := range order {
		for _, d := range out[name] {
			n := deltaSize(&d)
			if size+n > r.cfg.ChunkBytes {
				flush()
			}
			if len(msg.Maps) == 0 || msg.Maps[len(msg.Maps)-1].Map != name {
				msg.Maps = append(msg.Maps, mapDeltas{Map: name})
			}
			md := &msg.Maps[len(msg.Maps)-1]
			md.Deltas = append(md.Deltas, d)
			size += n
			count++
		}
	}
	flush()
	return frames
}

// deltaSize estimates a delta's encoded size.
func deltaSize(d *crdt.Delta) int {
	n := 48 + 40*d.Context.Len() + 24*len(d.Retired)
	for _, e := range d.Entries {
		n += 80 + len(e.Key) + len(e.Version.Value) + len(e.Version.Owner.Node.Name)
	}
	for _, k := range d.Drop {
		n += 4 + len(k)
	}
	return n
}

func (r *Replicas) send(p transport.Peer, payload []byte, wait time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := r.net.Send(ctx, p, payload); err != nil {
		// Anti-entropy repairs what did not go.
		r.mu.Lock()
		r.restream(p.ID)
		r.mu.Unlock()
		r.log.Debug("replica: send failed", "peer", p.ID, "err", err)
	}
}

// ticker runs anti-entropy, owner timeouts and durable writes.
func (r *Replicas) ticker() {
	defer r.wg.Done()
	ae := time.NewTicker(r.cfg.AntiEntropy)
	defer ae.Stop()
	var flush <-chan time.Time
	if r.cfg.Store != nil {
		t := time.NewTicker(r.cfg.FlushInterval)
		defer t.Stop()
		flush = t.C
	}
	for {
		select {
		case <-r.done:
			return
		case id := <-r.urgent:
			r.digestTo(id, false)
		case <-ae.C:
			r.mu.Lock()
			var to proc.NodeID
			if len(r.order) > 0 {
				r.turn = (r.turn + 1) % len(r.order)
				to = r.order[r.turn]
			}
			maps := r.mapList()
			r.mu.Unlock()
			now := r.cfg.Now()
			for _, mp := range maps {
				r.reconcileMap(mp, now)
				mp.mu.Lock()
				if len(mp.rounds) == settleLive {
					mp.rounds = append(mp.rounds[:0], mp.rounds[1:]...)
				}
				mp.rounds = append(mp.rounds, mp.m.Applied().Clone())
				mp.mu.Unlock()
			}
			if !to.IsZero() {
				r.digestTo(to, false)
			}
		case <-flush:
			if err := r.flush(); err != nil {
				r.log.Error("replica: writing durable maps", "err", err)
			}
		}
	}
}

// digestTo sends peer what this node has seen of every map.
func (r *Replicas) digestTo(id proc.NodeID, reply bool) {
	r.mu.Lock()
	p, ok := r.peers[id]
	maps := r.mapList()
	net := r.net
	r.mu.Unlock()
	if !ok || net == nil {
		return
	}
	msg := digestMsg{Reply: reply, Maps: make([]mapDigest, 0, len(maps))}
	for _, mp := range maps {
		mp.mu.RLock()
		msg.Maps = append(msg.Maps, mapDigest{Map: mp.name, Context: mp.m.Applied().Clone()})
		mp.mu.RUnlock()
	}
	b, err := encode(kindDigest, &msg)
	if err != nil {
		r.log.Error("replica: encoding digest", "err", err)
		return
	}
	r.outMu.Lock()
	r.stats.DigestsSent++
	r.stats.DigestBytes += uint64(len(b))
	r.outMu.Unlock()
	r.send(p, b, time.Second)
}

// ---- receiving ----

// Message handles a payload from a peer (Channel already stripped).
func (r *Replicas) Message(from proc.NodeID, payload []byte) {
	k, v, err := decode(payload)
	if err != nil {
		r.log.Warn("replica: dropping a malformed message", "peer", from, "err", err)
		return
	}
	switch k {
	case kindDeltas:
		r.onDeltas(from, v.(*deltasMsg))
	case kindDigest:
		r.onDigest(from, v.(*digestMsg))
	case kindState:
		r.onState(from, v.(*stateMsg))
	}
}

// SessionDown says the session with peer broke: deltas in flight may be
// lost, so the peer gets a digest soon.
func (r *Replicas) SessionDown(peer proc.NodeID) {
	r.mu.Lock()
	r.forgetTransfers(peer)
	r.restream(peer)
	r.mu.Unlock()
	select {
	case r.urgent <- peer:
	default:
	}
}

// forgetTransfers drops state transfers from and to peer. Called with r.mu
// held.
func (r *Replicas) forgetTransfers(peer proc.NodeID) {
	for k := range r.pending {
		if k.from == peer {
			delete(r.pending, k)
		}
	}
	for k := range r.sent {
		if k.from == peer {
			delete(r.sent, k)
		}
	}
}

func (r *Replicas) onDeltas(from proc.NodeID, msg *deltasMsg) {
	n := 0
	for _, md := range msg.Maps {
		mp := r.mapFor(md.Map)
		if mp == nil {
			return
		}
		mp.joinDeltas(md.Deltas)
		n += len(md.Deltas)
	}
	r.outMu.Lock()
	r.stats.DeltasReceived += uint64(n)
	r.outMu.Unlock()
}

func (r *Replicas) onDigest(from proc.NodeID, msg *digestMsg) {
	r.mu.Lock()
	p, ok := r.peers[from]
	net := r.net
	r.mu.Unlock()
	if !ok || net == nil {
		return // not (yet) a live member here; its turn comes
	}
	theirs := make(map[string]*crdt.Context, len(msg.Maps))
	for i := range msg.Maps {
		theirs[msg.Maps[i].Map] = &msg.Maps[i].Context
		r.mapFor(msg.Maps[i].Map) // a map the peer has is one this node keeps too
	}
	r.mu.Lock()
	maps := r.mapList()
	r.mu.Unlock()
	behind := false
	var out map[string][]crdt.Delta
	var order []string
	for _, mp := range maps {
		peer := theirs[mp.name]
		if peer == nil {
			peer = &crdt.Context{}
		}
		mp.mu.RLock()
		if !mp.m.Applied().Covers(peer) {
			behind = true
		}
		must, extra := r.lacks(mp, from, peer)
		if len(must) == 0 && len(extra) == 0 {
			mp.mu.RUnlock()
			continue
		}
		deltas, ok := mp.log.get(must)
		deltas = append(deltas, mp.log.present(extra)...)
		if !ok {
			// One whole state at a time per peer and map: a transfer
			// still on its way would answer this digest too.
			key := xferKey{from, mp.name}
			r.mu.Lock()
			recent := time.Since(r.sent[key]) < settleLive*r.cfg.AntiEntropy
			if !recent {
				r.sent[key] = time.Now()
			}
			r.mu.Unlock()
			if recent {
				mp.mu.RUnlock()
				continue
			}
			state := mp.m.State()
			mp.mu.RUnlock()
			r.sendState(p, mp.name, &state)
			continue
		}
		mp.mu.RUnlock()
		if out == nil {
			out = make(map[string][]crdt.Delta)
		}
		out[mp.name] = deltas
		order = append(order, mp.name)
	}
	for _, f := range r.deltaFrames(order, out) {
		r.send(p, f.payload, 5*time.Second)
		r.outMu.Lock()
		r.stats.DeltasSent += uint64(f.count)
		r.stats.DeltaBytes += uint64(len(f.payload))
		r.outMu.Unlock()
	}
	if behind && !msg.Reply {
		r.digestTo(from, true)
	}
}

// A peer's delta may take a while to arrive when the cluster is busy, and
// anti-entropy must not send again what is merely on its way: a dot of a
// live writer is left to that writer's stream for settleLive rounds, a dot
// of a writer that is gone (dead, left, unknown) for settleGone rounds.
const (
	settleLive = 10
	settleGone = 2
)

// lacks returns the dots of mp that peer lacks and that no delta stream is
// still bringing it. must are this node's own dots written before its
// stream to the peer last (re)started, and dots of writers that are gone
// (dead, left, unknown) seen settleGone rounds ago: nobody else will send
// them. extra are dots of live writers seen settleLive rounds ago: their
// writers repair them, and this node only helps from its log. Called with
// mp.mu read-locked.
func (r *Replicas) lacks(mp *Map, from proc.NodeID, peer *crdt.Context) (must, extra []crdt.Dot) {
	r.mu.Lock()
	streamed := r.streamFrom[xferKey{from, mp.name}]
	live := make(map[proc.NodeID]bool, len(r.peers))
	for id := range r.peers {
		live[id] = true
	}
	r.mu.Unlock()
	horizon := func(rounds int) *crdt.Context {
		if len(mp.rounds) < rounds {
			return nil
		}
		return &mp.rounds[len(mp.rounds)-rounds]
	}
	liveH, goneH := horizon(settleLive), horizon(settleGone)
	mp.m.Applied().Missing(peer, func(d crdt.Dot) bool {
		switch {
		case d.Node == r.self:
			if d.Seq <= streamed {
				must = append(must, d)
			}
		case live[d.Node]:
			if liveH != nil && liveH.Contains(d) {
				extra = append(extra, d)
			}
		case goneH != nil && goneH.Contains(d):
			must = append(must, d)
		}
		return true
	})
	return must, extra
}

// restream marks every dot this node has written so far as possibly lost
// on the way to peer: its session broke, a send failed, or it is new.
// Called with r.mu held.
func (r *Replicas) restream(peer proc.NodeID) {
	for name, mp := range r.maps {
		r.streamFrom[xferKey{peer, name}] = mp.ownSeq.Load()
	}
}

// sendState sends a map's whole state to p in chunks.
func (r *Replicas) sendState(p transport.Peer, name string, state *crdt.Delta) {
	r.mu.Lock()
	r.xfer++
	xfer := r.xfer
	r.mu.Unlock()
	var seq uint32
	bytes := 0
	send := func(part crdt.Delta, last bool) {
		b, err := encode(kindState, &stateMsg{Map: name, Xfer: xfer, Seq: seq, Last: last, Part: part})
		if err != nil {
			r.log.Error("replica: encoding state", "map", name, "err", err)
			return
		}
		seq++
		bytes += len(b)
		r.send(p, b, 5*time.Second)
	}
	entries := state.Entries
	for len(entries) > 0 {
		size, n := 0, 0
		for n < len(entries) && (n == 0 || size < r.cfg.ChunkBytes) {
			e := &entries[n]
			size += 80 + len(e.Key) + len(e.Version.Value)
			n++
		}
		if n == len(entries) {
			break // the rest goes with the context
		}
		send(crdt.Delta{Full: true, Entries: entries[:n]}, false)
		entries = entries[n:]
	}
	send(crdt.Delta{Full: true, Entries: entries, Context: state.Context, Retired: state.Retired, Applied: state.Applied}, true)
	r.outMu.Lock()
	r.stats.StateTransfers++
	r.stats.StateBytes += uint64(bytes)
	r.outMu.Unlock()
	r.log.Debug("replica: sent whole state", "map", name, "peer", p.ID, "entries", len(state.Entries), "bytes", bytes)
}

func (r *Replicas) onState(from proc.NodeID, msg *stateMsg) {
	key := xferKey{from, msg.Map}
	r.mu.Lock()
	in := r.pending[key]
	if msg.Seq == 0 {
		// A new transfer replaces one that broke off.
		in = &incoming{xfer: msg.Xfer, state: crdt.Delta{Full: true}}
		r.pending[key] = in
	}
	if in == nil || in.xfer != msg.Xfer || in.next != msg.Seq || !msg.Part.Full {
		r.mu.Unlock()
		r.log.Warn("replica: dropping a state chunk out of order", "peer", from, "map", msg.Map, "xfer", msg.Xfer, "seq", msg.Seq)
		return
	}
	in.next++
	in.state.Entries = append(in.state.Entries, msg.Part.Entries...)
	if !msg.Last {
		r.mu.Unlock()
		return
	}
	delete(r.pending, key)
	r.mu.Unlock()
	acc := &in.state
	acc.Context, acc.Retired, acc.Applied = msg.Part.Context, msg.Part.Retired, msg.Part.Applied
	if err := acc.Validate(); err != nil {
		r.log.Warn("replica: dropping a malformed state", "peer", from, "map", msg.Map, "err", err)
		return
	}
	if mp := r.mapFor(msg.Map); mp != nil {
		mp.joinState(acc)
	}
}

// ---- durability ----

// flush writes every durable map's changed keys, in one transaction.
func (r *Replicas) flush() error {
	r.mu.Lock()
	maps := r.mapList()
	r.mu.Unlock()
	var batch []mapWrite
	for _, mp := range maps {
		mp.mu.Lock()
		if mp.durable && (len(mp.dirty) > 0 || mp.metaDirty) {
			w := mapWrite{name: mp.name, keys: make(map[string][]crdt.Version, len(mp.dirty))}
			for k := range mp.dirty {
				w.keys[k] = mp.m.Stored(k)
			}
			w.ctx = mp.m.Context().Clone()
			w.applied = mp.m.Applied().Clone()
			w.retired = mp.m.RetiredLives()
			mp.dirty = make(map[string]struct{})
			mp.metaDirty = false
			batch = append(batch, w)
		}
		mp.mu.Unlock()
	}
	if len(batch) == 0 {
		return nil
	}
	r.clockMu.Lock()
	last := r.clock.Last()
	r.clockMu.Unlock()
	return r.cfg.Store.write(batch, last)
}

// ---- maps ----

// Map is one replicated map on this node. All methods are safe for
// concurrent use.
type Map struct {
	r    *Replicas
	name string

	mu        sync.RWMutex
	m         *crdt.Map
	rounds    []crdt.Context // the map's context at the last few anti-entropy rounds, oldest first
	ownSeq    atomic.Uint64  // the last of this node's own dots
	log       *deltaLog
	durable   bool
	dirty     map[string]struct{}
	metaDirty bool
	watches   []*Watch
	observers []func(crdt.Change)
}

// Name returns the map's name.
func (mp *Map) Name() string { return mp.name }

// Get returns what key reads as on this node.
func (mp *Map) Get(key string) (crdt.Version, bool) {
	mp.mu.RLock()
	defer mp.mu.RUnlock()
	return mp.m.Get(key)
}

// Versions returns the visible versions of key (more than one after
// concurrent writes), ordered by (time, dot).
func (mp *Map) Versions(key string) []crdt.Version {
	mp.mu.RLock()
	defer mp.mu.RUnlock()
	return mp.m.Versions(key)
}

// Range calls fn for each key present, in no set order, until fn returns
// false. fn runs with the map locked for reading: it must not write to it.
func (mp *Map) Range(fn func(key string, v crdt.Version) bool) {
	mp.mu.RLock()
	defer mp.mu.RUnlock()
	mp.m.Range(fn)
}

// Len returns the number of keys present.
func (mp *Map) Len() int {
	n := 0
	mp.Range(func(string, crdt.Version) bool { n++; return true })
	return n
}

// Put writes value under key; the write is visible here when Put returns
// and goes to every live peer within BatchDelay. A non-zero owner ties the
// entry to a node life or a process of it.
func (mp *Map) Put(key string, value []byte, owner crdt.Owner) error {
	_, err := mp.put(key, value, owner)
	return err
}

func (mp *Map) put(key string, value []byte, owner crdt.Owner) (crdt.Delta, error) {
	if mp.r.isClosed() {
		return crdt.Delta{}, ErrClosed
	}
	now := mp.r.now()
	mp.mu.Lock()
	d, err := mp.m.Put(key, value, owner, now)
	if err == nil {
		mp.logged(d)
	}
	mp.mu.Unlock()
	if err != nil {
		return crdt.Delta{}, fmt.Errorf("map %q: %w", mp.name, err)
	}
	mp.r.enqueue(mp.name, d)
	return d, nil
}

// PutShared is Put that also returns the write, encoded, for a writer
// that must know it reached a given node before going on: it sends the
// bytes there itself, and that node's replica joins them with JoinShared.
// The write goes to every live peer as Put's do, too.
func (mp *Map) PutShared(key string, value []byte, owner crdt.Owner) ([]byte, error) {
	d, err := mp.put(key, value, owner)
	if err != nil {
		return nil, err
	}
	b, err := encode(kindDeltas, &deltasMsg{Maps: []mapDeltas{{Map: mp.name, Deltas: []crdt.Delta{d}}}})
	if err != nil {
		return nil, fmt.Errorf("map %q: %w", mp.name, err)
	}
	return b[1:], nil // without Channel, as Message takes payloads
}

// JoinShared joins a write that another node's PutShared of this map
// returned. Anything else is refused with an error and changes nothing.
func (mp *Map) JoinShared(b []byte) error {
	if mp.r.isClosed() {
		return ErrClosed
	}
	k, v, err := decode(b)
	if err != nil {
		return fmt.Errorf("map %q: shared write: %w", mp.name, err)
	}
	msg, ok := v.(*deltasMsg)
	if k != kindDeltas || !ok {
		return fmt.Errorf("map %q: shared write: %w: not deltas", mp.name, errMalformed)
	}
	for _, md := range msg.Maps {
		if md.Map != mp.name {
			return fmt.Errorf("map %q: shared write of map %q: %w", mp.name, md.Map, errMalformed)
		}
	}
	for _, md := range msg.Maps {
		mp.joinDeltas(md.Deltas)
	}
	return nil
}

// Delete removes key; it reports whether the key was present.
func (mp *Map) Delete(key string) (bool, error) {
	if mp.r.isClosed() {
		return false, ErrClosed
	}
	mp.mu.Lock()
	d, ok := mp.m.Delete(key)
	if ok {
		mp.logged(d)
	}
	mp.mu.Unlock()
	if ok {
		mp.r.enqueue(mp.name, d)
	}
	return ok, nil
}

// RemoveOwner removes every entry owner holds; it reports whether there
// were any.
func (mp *Map) RemoveOwner(owner crdt.Owner) bool {
	if mp.r.isClosed() {
		return false
	}
	mp.mu.Lock()
	d, ok := mp.m.RemoveOwner(owner)
	if ok {
		mp.logged(d)
	}
	mp.mu.Unlock()
	if ok {
		mp.r.enqueue(mp.name, d)
	}
	return ok
}

// logged records a delta in the log. Called with mp.mu held.
func (mp *Map) logged(d crdt.Delta) {
	mp.log.add(d)
	if d.Op.Node == mp.r.self {
		mp.ownSeq.Store(d.Op.Seq)
	}
	if mp.durable {
		mp.metaDirty = true
	}
}

func (mp *Map) joinDeltas(ds []crdt.Delta) {
	var latest crdt.Timestamp
	mp.mu.Lock()
	for i := range ds {
		mp.m.Join(&ds[i])
		mp.logged(ds[i])
		for _, e := range ds[i].Entries {
			latest = max(latest, e.Version.Time)
		}
	}
	unknown := mp.unknownOwners(ds)
	mp.mu.Unlock()
	mp.r.observe(latest)
	if unknown {
		mp.r.reconcileMap(mp, mp.r.cfg.Now())
	}
}

func (mp *Map) joinState(d *crdt.Delta) {
	var latest crdt.Timestamp
	mp.mu.Lock()
	mp.m.Join(d)
	if mp.durable {
		mp.metaDirty = true
	}
	for _, e := range d.Entries {
		latest = max(latest, e.Version.Time)
	}
	unknown := mp.unknownOwners([]crdt.Delta{*d})
	mp.mu.Unlock()
	mp.r.observe(latest)
	if unknown {
		mp.r.reconcileMap(mp, mp.r.cfg.Now())
	}
}

// unknownOwners reports whether the deltas carry entries of an owner this
// node has not yet judged. Called with mp.mu held.
func (mp *Map) unknownOwners(ds []crdt.Delta) bool {
	mp.r.mu.Lock()
	defer mp.r.mu.Unlock()
	for i := range ds {
		for _, e := range ds[i].Entries {
			o := e.Version.Owner.Node
			if o.IsZero() || o == mp.r.self {
				continue
			}
			if _, ok := mp.r.owners[o]; !ok {
				return true
			}
		}
	}
	return false
}

func (r *Replicas) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// ---- watches ----

// Watch delivers a map's changes on this node: local writes, peers'
// writes as they arrive, and entries hidden or dropped as their owners go.
type Watch struct {
	mp *Map
	q  *unbounded.Queue[crdt.Change]
}

// Watch starts delivering changes of the map. Events are queued without
// bound; close the watch when done.
func (mp *Map) Watch() *Watch {
	w := &Watch{mp: mp, q: unbounded.New[crdt.Change]()}
	mp.mu.Lock()
	mp.watches = append(mp.watches, w)
	mp.mu.Unlock()
	return w
}

// C returns the channel events arrive on; it is closed when the watch is.
func (w *Watch) C() <-chan crdt.Change { return w.q.Out() }

// Close stops the watch.
func (w *Watch) Close() {
	mp := w.mp
	mp.mu.Lock()
	for i, x := range mp.watches {
		if x == w {
			mp.watches = append(mp.watches[:i], mp.watches[i+1:]...)
			break
		}
	}
	mp.mu.Unlock()
	w.q.Close()
}

// Observe makes fn see the map's contents and then every change of a key's
// reading on this node, as it is made: first each key present, as a change
// from nothing, then each change, synchronously, in order, with the map
// locked. fn must be quick and must not call the map's methods; a write's
// changes have all been observed when the write returns. It is how derived
// indexes stay exact.
func (mp *Map) Observe(fn func(crdt.Change)) {
	mp.mu.Lock()
	defer mp.mu.Unlock()
	mp.m.Range(func(key string, v crdt.Version) bool {
		fn(crdt.Change{Key: key, New: &v})
		return true
	})
	mp.observers = append(mp.observers, fn)
}

func (mp *Map) changed(c crdt.Change) {
	for _, fn := range mp.observers {
		fn(c)
	}
	for _, w := range mp.watches {
		w.q.Push(c)
	}
}

func (mp *Map) closeWatches() {
	mp.mu.Lock()
	ws := mp.watches
	mp.watches = nil
	mp.mu.Unlock()
	for _, w := range ws {
		w.q.Close()
	}
}

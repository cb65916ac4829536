package crdt

import (
	"cmp"
	"slices"

	"github.com/fxamacker/cbor/v2"

	"github.com/herdkit/herd/internal/proc"
)

// Dot names one operation: the replica (a node life) that made it and that
// replica's sequence number for it, counted from 1. Every write, delete and
// retirement a replica makes takes the next dot, so a replica's dots
// without gaps say exactly which of its operations another has seen.
type Dot struct {
	_    struct{} `cbor:",toarray"`
	Node proc.NodeID
	Seq  uint64
}

// IsZero reports whether d is the zero Dot.
func (d Dot) IsZero() bool { return d.Seq == 0 && d.Node.IsZero() }

func compareDots(a, b Dot) int {
	if c := cmp.Compare(a.Node.Name, b.Node.Name); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Node.Incarnation, b.Node.Incarnation); c != 0 {
		return c
	}
	return cmp.Compare(a.Seq, b.Seq)
}

// Context is a causal context: the set of dots a replica has seen, kept as a
// version vector (every dot of a replica up to a sequence number) plus a
// cloud of dots seen beyond it. The zero Context is empty and ready.
type Context struct {
	vv    map[proc.NodeID]uint64
	cloud map[Dot]struct{}
}

// Contains reports whether d was seen.
func (c *Context) Contains(d Dot) bool {
	if d.Seq <= c.vv[d.Node] {
		return true
	}
	_, ok := c.cloud[d]
	return ok
}

// Add records d as seen.
func (c *Context) Add(d Dot) {
	if d.Seq == 0 || c.Contains(d) {
		return
	}
	if c.vv == nil {
		c.vv = make(map[proc.NodeID]uint64)
	}
	if d.Seq == c.vv[d.Node]+1 {
		c.vv[d.Node] = d.Seq
		c.compact(d.Node)
		return
	}
	if c.cloud == nil {
		c.cloud = make(map[Dot]struct{})
	}
	c.cloud[d] = struct{}{}
}

// compact moves cloud dots that now follow node's version into it.
func (c *Context) compact(node proc.NodeID) {
	if len(c.cloud) == 0 {
		return
	}
	for {
		next := Dot{Node: node, Seq: c.vv[node] + 1}
		if _, ok := c.cloud[next]; !ok {
			return
		}
		delete(c.cloud, next)
		c.vv[node] = next.Seq
	}
}

// Merge adds every dot of o.
func (c *Context) Merge(o *Context) {
	grown := false
	for n, s := range o.vv {
		if s > c.vv[n] {
			if c.vv == nil {
				c.vv = make(map[proc.NodeID]uint64, len(o.vv))
			}
			c.vv[n] = s
			grown = true
		}
	}
	if grown && len(c.cloud) > 0 {
		for d := range c.cloud {
			if d.Seq <= c.vv[d.Node] {
				delete(c.cloud, d)
			}
		}
		for n := range o.vv {
			c.compact(n)
		}
	}
	for d := range o.cloud {
		c.Add(d)
	}
}

// Max returns the highest sequence number seen from node, in the version
// vector or the cloud.
func (c *Context) Max(node proc.NodeID) uint64 {
	m := c.vv[node]
	for d := range c.cloud {
		if d.Node == node && d.Seq > m {
			m = d.Seq
		}
	}
	return m
}

func (c *Context) maxSeq() uint64 {
	var m uint64
	for _, s := range c.vv {
		m = max(m, s)
	}
	for d := range c.cloud {
		m = max(m, d.Seq)
	}
	return m
}

// Upto returns the sequence number up to which every dot of node was seen.
func (c *Context) Upto(node proc.NodeID) uint64 { return c.vv[node] }

// Nodes returns every replica with a dot in c, sorted.
func (c *Context) Nodes() []proc.NodeID {
	set := make(map[proc.NodeID]struct{}, len(c.vv))
	for n := range c.vv {
		set[n] = struct{}{}
	}
	for d := range c.cloud {
		set[d.Node] = struct{}{}
	}
	out := make([]proc.NodeID, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b proc.NodeID) int {
		return compareDots(Dot{Node: a}, Dot{Node: b})
	})
	return out
}

// Missing calls fn for every dot of c that o has not seen, until fn
// returns false.
func (c *Context) Missing(o *Context, fn func(Dot) bool) {
	for n, s := range c.vv {
		for q := o.vv[n] + 1; q <= s && q != 0; q++ { // q wraps to 0 past MaxUint64
			if d := (Dot{Node: n, Seq: q}); !o.Contains(d) && !fn(d) {
				return
			}
		}
	}
	for d := range c.cloud {
		if !o.Contains(d) && !fn(d) {
			return
		}
	}
}

// Covers reports whether c has seen every dot o has.
func (c *Context) Covers(o *Context) bool {
	covered := true
	o.Missing(c, func(Dot) bool { covered = false; return false })
	return covered
}

// Equal reports whether c and o hold the same dots.
func (c *Context) Equal(o *Context) bool { return c.Covers(o) && o.Covers(c) }

// Clone returns a copy of c.
func (c *Context) Clone() Context {
	var out Context
	out.Merge(c)
	return out
}

// Len returns the number of entries the context takes: version-vector
// entries plus cloud dots.
func (c *Context) Len() int { return len(c.vv) + len(c.cloud) }

// wireContext is a Context on the wire, sorted so equal contexts encode
// alike.
type wireContext struct {
	_     struct{} `cbor:",toarray"`
	VV    []Dot
	Cloud []Dot
}

// MarshalCBOR implements cbor.Marshaler.
func (c Context) MarshalCBOR() ([]byte, error) {
	w := wireContext{VV: make([]Dot, 0, len(c.vv)), Cloud: make([]Dot, 0, len(c.cloud))}
	for n, s := range c.vv {
		w.VV = append(w.VV, Dot{Node: n, Seq: s})
	}
	for d := range c.cloud {
		w.Cloud = append(w.Cloud, d)
	}
	slices.SortFunc(w.VV, compareDots)
	slices.SortFunc(w.Cloud, compareDots)
	return cbor.Marshal(w)
}

// UnmarshalCBOR implements cbor.Unmarshaler.
func (c *Context) UnmarshalCBOR(data []byte) error {
	var w wireContext
	if err := cborDec.Unmarshal(data, &w); err != nil {
		return err
	}
	*c = Context{}
	for _, d := range w.VV {
		if d.Seq > c.vv[d.Node] {
			if c.vv == nil {
				c.vv = make(map[proc.NodeID]uint64, len(w.VV))
			}
			c.vv[d.Node] = d.Seq
		}
	}
	for _, d := range w.Cloud {
		c.Add(d)
	}
	return nil
}

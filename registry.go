package herd

import (
	"context"

	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/registry"
)

// The registry: unique names and process groups, scoped by environment, with
// metadata, queries and watches. Lookups read local state only. Names go
// when their process exits, before anyone hears of the exit.
type (
	// Registry is the contract every registry backend keeps.
	Registry = registry.Registry
	// Key is a name within an environment (Env "" is the default).
	Key = registry.Key
	// Meta is what an entry says about its process: labels and a
	// capability set. A Meta read from a registry must not be modified.
	Meta = registry.Meta
	// Entry is a unique name held by a process, or a group membership.
	Entry = registry.Entry
	// EntryKind tells unique names from group memberships.
	EntryKind = registry.Kind
	// Query selects entries by environment, kind, name pattern, labels,
	// capabilities and PID.
	Query = registry.Query
	// RegistryEvent is one change reported by a Watch.
	RegistryEvent = registry.Event
	// RegistryEventType says what changed.
	RegistryEventType = registry.EventType
	// Watch delivers registry changes in order; Close it when done.
	Watch = registry.Watch
	// WatchOptions adjust a watch (Replay).
	WatchOptions = registry.WatchOptions
	// TakenError says who holds a name that could not be registered.
	TakenError = registry.TakenError
)

// Entry kinds.
const (
	AnyKind = registry.AnyKind
	Unique  = registry.Unique
	Group   = registry.Group
)

// Registry event types.
const (
	Registered   = registry.Registered
	Unregistered = registry.Unregistered
	Updated      = registry.Updated
	Conflict     = registry.Conflict
)

// Registry errors.
var (
	ErrTaken         = registry.ErrTaken
	ErrNotRegistered = registry.ErrNotRegistered
	ErrInvalid       = registry.ErrInvalid
)

// Match reports whether a registry name matches a Query pattern ('*', '?',
// '\' escapes).
func Match(pattern, name string) bool { return registry.Match(pattern, name) }

// WithName registers the new process under a unique name in the default
// environment before its Init runs; the spawn fails (ErrTaken) if the name
// is held. The name goes when the process exits.
func WithName(name string) SpawnOption {
	return WithKey(Key{Name: name}, Meta{})
}

// WithKey registers the new process under key, with meta, before its Init
// runs; see WithName.
func WithKey(key Key, meta Meta) SpawnOption {
	return proc.BeforeInit(func(c *Context) error {
		n := NodeOf(c)
		return n.reg.Register(context.Background(), key, c.Self(), meta)
	})
}

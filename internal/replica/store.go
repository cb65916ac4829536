package replica

import (
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herdkit/herd/internal/crdt"
	"github.com/herdkit/herd/internal/proc"
)

// Store keeps durable maps in one bbolt file per node. Layout: bucket
// "maps" holds a bucket per map, each with an "entries" bucket (key ->
// CBOR of its stored versions) and the keys "context", "applied" and
// "retired"; bucket
// "node" holds "clock", the latest hybrid-clock reading, so a restarted
// node never stamps earlier than what it wrote before.
type Store struct {
	db *bolt.DB
}

var (
	bucketMaps    = []byte("maps")
	bucketNode    = []byte("node")
	bucketEntries = []byte("entries")
	keyContext    = []byte("context")
	keyRetired    = []byte("retired")
	keyApplied    = []byte("applied")
	keyClock      = []byte("clock")
)

// OpenStore opens (or creates) the store at path. Only one node may have
// it open at a time; a second waits up to a second, then fails.
func OpenStore(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("replica: open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketMaps); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(bucketNode)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("replica: store %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Clock returns the latest clock reading stored.
func (s *Store) Clock() (crdt.Timestamp, error) {
	var t crdt.Timestamp
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketNode).Get(keyClock); len(b) == 8 {
			t = crdt.Timestamp(binary.BigEndian.Uint64(b))
		}
		return nil
	})
	return t, err
}

// Maps returns the names of the maps stored.
func (s *Store) Maps() ([]string, error) {
	var names []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMaps).ForEachBucket(func(k []byte) error {
			names = append(names, string(k))
			return nil
		})
	})
	return names, err
}

// Load returns a stored map as a whole state.
func (s *Store) Load(name string) (crdt.Delta, error) {
	d := crdt.Delta{Full: true}
	err := s.db.View(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bucketMaps).Bucket([]byte(name))
		if mb == nil {
			return nil
		}
		if b := mb.Get(keyContext); b != nil {
			if err := crdt.DecMode.Unmarshal(b, &d.Context); err != nil {
				return fmt.Errorf("context: %w", err)
			}
		}
		if b := mb.Get(keyApplied); b != nil {
			if err := crdt.DecMode.Unmarshal(b, &d.Applied); err != nil {
				return fmt.Errorf("applied: %w", err)
			}
		}
		if b := mb.Get(keyRetired); b != nil {
			if err := crdt.DecMode.Unmarshal(b, &d.Retired); err != nil {
				return fmt.Errorf("retired: %w", err)
			}
		}
		eb := mb.Bucket(bucketEntries)
		if eb == nil {
			return nil
		}
		return eb.ForEach(func(k, v []byte) error {
			var vs []crdt.Version
			if err := crdt.DecMode.Unmarshal(v, &vs); err != nil {
				return fmt.Errorf("key %q: %w", k, err)
			}
			for _, x := range vs {
				d.Entries = append(d.Entries, crdt.Entry{Key: string(k), Version: x})
			}
			return nil
		})
	})
	if err == nil {
		err = d.Validate()
	}
	if err != nil {
		return crdt.Delta{}, fmt.Errorf("replica: load map %q from %s: %w", name, s.db.Path(), err)
	}
	return d, nil
}

// mapWrite is what one flush writes of a map: changed keys (nil versions
// delete the key), its context and retired lives.
type mapWrite struct {
	name    string
	keys    map[string][]crdt.Version
	ctx     crdt.Context
	applied crdt.Context
	retired []proc.NodeID
}

func (s *Store) write(batch []mapWrite, clock crdt.Timestamp) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, w := range batch {
			mb, err := tx.Bucket(bucketMaps).CreateBucketIfNotExists([]byte(w.name))
			if err != nil {
				return err
			}
			eb, err := mb.CreateBucketIfNotExists(bucketEntries)
			if err != nil {
				return err
			}
			for k, vs := range w.keys {
				if len(vs) == 0 {
					if err := eb.Delete([]byte(k)); err != nil {
						return err
					}
					continue
				}
				b, err := encMode.Marshal(vs)
				if err != nil {
					return err
				}
				if err := eb.Put([]byte(k), b); err != nil {
					return err
				}
			}
			b, err := encMode.Marshal(w.ctx)
			if err != nil {
				return err
			}
			if err := mb.Put(keyContext, b); err != nil {
				return err
			}
			if b, err = encMode.Marshal(w.applied); err != nil {
				return err
			}
			if err := mb.Put(keyApplied, b); err != nil {
				return err
			}
			if b, err = encMode.Marshal(w.retired); err != nil {
				return err
			}
			if err := mb.Put(keyRetired, b); err != nil {
				return err
			}
		}
		var c [8]byte
		binary.BigEndian.PutUint64(c[:], uint64(clock))
		return tx.Bucket(bucketNode).Put(keyClock, c[:])
	})
}

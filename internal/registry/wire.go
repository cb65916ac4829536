package registry

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"

	"github.com/herdkit/herd/internal/crdt"
	"github.com/herdkit/herd/internal/proc"
)

// How the cluster backend stores an entry in its replicated map. Each entry
// is a key of its own, written only by the node its process runs on:
//
//	key:   kind ('u' or 'g'), then the environment and the name, each as
//	       its length in decimal, ':' and its bytes, then the PID's text
//	       ("node@incarnation.id"); all of it UTF-8, as map keys must be
//	value: format byte (1), registration time (8 bytes, big endian, the
//	       hybrid clock's reading), then the metadata in CBOR, or nothing
//	       for empty metadata
//
// Two processes registering one unique name are two keys, so nothing a
// node writes ever supersedes what another node wrote: a conflict is two
// keys, and the loser's node removes its own.

const (
	keyUnique = 'u'
	keyGroup  = 'g'

	valueFormat = 1
	valueHeader = 9
)

// errBadEntry: a replicated key or value that does not parse. It can only
// come from a peer that is broken or hostile; the entry is ignored.
var errBadEntry = errors.New("registry: malformed replicated entry")

// wireMeta is Meta as stored.
type wireMeta struct {
	_            struct{} `cbor:",toarray"`
	Labels       map[string]string
	Capabilities []string
}

var (
	metaEnc, _ = cbor.CoreDetEncOptions().EncMode()
	metaDec, _ = cbor.DecOptions{
		MaxNestedLevels: 4, MaxArrayElements: MaxCapabilities, MaxMapPairs: MaxLabels,
		DupMapKey: cbor.DupMapKeyEnforcedAPF, IndefLength: cbor.IndefLengthForbidden, TagsMd: cbor.TagsForbidden,
	}.DecMode()
)

func appendString(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	return append(append(b, ':'), s...)
}

// entryKey is the replicated key of an entry.
func entryKey(kind Kind, key Key, pid proc.PID) string {
	b := make([]byte, 0, 48+len(key.Env)+len(key.Name)+len(pid.Node.Name))
	if kind == Unique {
		b = append(b, keyUnique)
	} else {
		b = append(b, keyGroup)
	}
	b = appendString(b, key.Env)
	b = appendString(b, key.Name)
	b, _ = pid.AppendText(b)
	return string(b)
}

// readString reads what appendString wrote, and the rest.
func readString(s string) (string, string, bool) {
	colon := strings.IndexByte(s, ':')
	if colon <= 0 || colon > 7 || (colon > 1 && s[0] == '0') {
		return "", "", false
	}
	n, err := strconv.Atoi(s[:colon])
	if err != nil || n < 0 || n > len(s)-colon-1 {
		return "", "", false
	}
	s = s[colon+1:]
	return s[:n], s[n:], true
}

// parseEntryKey reads a replicated key back, checking it as a write would.
func parseEntryKey(s string) (kind Kind, key Key, pid proc.PID, err error) {
	bad := func(what string) (Kind, Key, proc.PID, error) {
		return 0, Key{}, proc.PID{}, fmt.Errorf("%w: key: %s", errBadEntry, what)
	}
	if s == "" {
		return bad("empty")
	}
	switch s[0] {
	case keyUnique:
		kind = Unique
	case keyGroup:
		kind = Group
	default:
		return bad("unknown kind")
	}
	rest := s[1:]
	var ok bool
	if key.Env, rest, ok = readString(rest); !ok {
		return bad("environment")
	}
	if key.Name, rest, ok = readString(rest); !ok {
		return bad("name")
	}
	if pid, err = proc.ParsePID(rest); err != nil || pid.IsZero() || !utf8.ValidString(pid.Node.Name) {
		return bad("process")
	}
	if err := key.Validate(); err != nil {
		return 0, Key{}, proc.PID{}, fmt.Errorf("%w: %w", errBadEntry, err)
	}
	return kind, key, pid, nil
}

// entryValue is the replicated value of an entry registered at.
func entryValue(at crdt.Timestamp, meta *Meta) ([]byte, error) {
	b := make([]byte, valueHeader, 64)
	b[0] = valueFormat
	binary.BigEndian.PutUint64(b[1:], uint64(at))
	if len(meta.Labels) == 0 && len(meta.Capabilities) == 0 {
		return b, nil
	}
	m, err := metaEnc.Marshal(wireMeta{Labels: meta.Labels, Capabilities: meta.Capabilities})
	if err != nil {
		return nil, err
	}
	return append(b, m...), nil
}

// parseEntryValue reads a replicated value back, checking its metadata as
// a write would.
func parseEntryValue(b []byte) (crdt.Timestamp, Meta, error) {
	if len(b) < valueHeader || b[0] != valueFormat {
		return 0, Meta{}, fmt.Errorf("%w: value header", errBadEntry)
	}
	at := crdt.Timestamp(binary.BigEndian.Uint64(b[1:]))
	if len(b) == valueHeader {
		return at, Meta{}, nil
	}
	var w wireMeta
	if err := metaDec.Unmarshal(b[valueHeader:], &w); err != nil {
		return 0, Meta{}, fmt.Errorf("%w: metadata: %v", errBadEntry, err)
	}
	m := Meta{Labels: w.Labels, Capabilities: w.Capabilities}
	if err := m.Validate(); err != nil {
		return 0, Meta{}, fmt.Errorf("%w: %w", errBadEntry, err)
	}
	// Stored sorted and deduplicated; a peer that sent otherwise is made
	// to agree with every other replica.
	return at, m.Clone(), nil
}

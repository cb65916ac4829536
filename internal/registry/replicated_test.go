package registry_test

import (
	"io"
	"log/slog"
	"testing"

	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/registry"
	"github.com/herdkit/herd/internal/registry/registrytest"
	"github.com/herdkit/herd/internal/replica"
)

// newReplicated returns the cluster backend of rt's node over a replica of
// its own: one node, no peers. The cluster tests (package herd) run the
// same suite across nodes.
func newReplicated(t testing.TB, rt *proc.Runtime) *registry.Replicated {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reps, err := replica.New(replica.Config{Self: rt.Node(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	mp, err := reps.Open("herd.registry", nil, false)
	if err != nil {
		t.Fatal(err)
	}
	r := registry.NewReplicated(registry.ReplicatedConfig{Runtime: rt, Map: mp, Clock: reps.Now, Logger: log})
	t.Cleanup(func() {
		r.Close()
		reps.Close()
	})
	return r
}

func replicatedHarness(t *testing.T) (registrytest.Harness, *proc.Runtime) {
	h, rt := localHarness(t)
	h.Registry = newReplicated(t, rt)
	return h, rt
}

func TestReplicatedContract(t *testing.T) {
	registrytest.Run(t, func(t *testing.T) registrytest.Harness {
		h, _ := replicatedHarness(t)
		return h
	})
}

package httpapi

import (
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/herdkit/herd"
)

// collector reads the node's state and counters at scrape time.
type collector struct {
	n         *herd.Node
	conflicts *atomic.Uint64

	members, processes, names, children             *prometheus.Desc
	failovers, handoffs, restarts, dropped, givenUp *prometheus.Desc
	conflictsD                                      *prometheus.Desc
	transportBytes, replicaBytes                    *prometheus.Desc
	deltas                                          *prometheus.Desc
}

func newCollector(n *herd.Node, conflicts *atomic.Uint64) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("herd_"+name, help, labels, nil)
	}
	return &collector{
		n: n, conflicts: conflicts,
		members:        d("members", "Members of the cluster by status, as this node sees them.", "status"),
		processes:      d("processes", "Processes running on this node."),
		names:          d("names", "Unique names registered in the cluster, in every environment, from this node's replica."),
		children:       d("children", "Distributed-supervisor children, from this node's replica, by state.", "state"),
		failovers:      d("supervisor_failovers_total", "Children this node took over from a lost node."),
		handoffs:       d("supervisor_handoffs_total", "Children this node handed to another node (graceful stop, moves)."),
		restarts:       d("supervisor_restarts_total", "Children this node restarted after they exited."),
		dropped:        d("supervisor_duplicates_stopped_total", "Duplicate children this node stopped after a partition healed."),
		givenUp:        d("supervisor_given_up_total", "Children this node marked failed (restart intensity exceeded)."),
		conflictsD:     d("registry_conflicts_total", "Name conflicts this node saw resolved since its API started."),
		transportBytes: d("transport_bytes_total", "Bytes of node-to-node traffic.", "direction"),
		replicaBytes:   d("replication_bytes_total", "Bytes of replication traffic this node sent, by kind.", "kind"),
		deltas:         d("replication_deltas_total", "Replicated-map deltas.", "direction"),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.members, c.processes, c.names, c.children, c.failovers, c.handoffs, c.restarts, c.dropped, c.givenUp,
		c.conflictsD, c.transportBytes, c.replicaBytes, c.deltas,
	} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	byStatus := map[string]int{}
	for _, st := range []herd.MemberStatus{herd.MemberAlive, herd.MemberSuspect, herd.MemberLeaving, herd.MemberDead, herd.MemberLeft} {
		byStatus[st.String()] = 0
	}
	for _, m := range c.n.Members() {
		byStatus[m.Status.String()]++
	}
	for st, k := range byStatus {
		gauge(c.members, float64(k), st)
	}
	gauge(c.processes, float64(c.n.CountProcesses()))
	gauge(c.names, float64(c.n.Registry().Count(herd.Query{Kind: herd.Unique, AllEnvs: true})))
	cc := c.n.Supervisor().CountChildren()
	gauge(c.children, float64(cc.Running), "running")
	gauge(c.children, float64(cc.Failed), "failed")
	gauge(c.children, float64(cc.Specs-cc.Running-cc.Failed), "pending")
	st := c.n.Supervisor().Stats()
	counter(c.failovers, st.Claimed)
	counter(c.handoffs, st.HandedOff)
	counter(c.restarts, st.Restarted)
	counter(c.dropped, st.Dropped)
	counter(c.givenUp, st.GivenUp)
	counter(c.conflictsD, c.conflicts.Load())
	if c.n.Clustered() {
		ts := c.n.TransportStats()
		counter(c.transportBytes, ts.BytesSent, "sent")
		counter(c.transportBytes, ts.BytesReceived, "received")
	}
	ms := c.n.MapStats()
	counter(c.replicaBytes, ms.DeltaBytes, "delta")
	counter(c.replicaBytes, ms.DigestBytes, "digest")
	counter(c.replicaBytes, ms.StateBytes, "state")
	counter(c.deltas, ms.DeltasSent, "sent")
	counter(c.deltas, ms.DeltasReceived, "received")
}

// metricsHandler serves /metrics for the server's node, behind the
// server's tokens (any token that reads).
func (s *Server) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(s.n, &s.conflicts))
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: nil})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := s.authorize(r, read); err != nil {
			s.fail(w, r, err)
			return
		}
		h.ServeHTTP(w, r)
	})
}

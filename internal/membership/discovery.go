package membership

import (
	"context"
	"net"
	"slices"
	"strconv"
	"time"
)

// discovery reports whether any way to find other members is configured.
func (m *Membership) discovery() bool {
	return len(m.cfg.Seeds) > 0 || m.cfg.DNSName != "" || m.cfg.DNSSRV != ""
}

// targets returns the seeds and what DNS says now, without this node.
func (m *Membership) targets(ctx context.Context) []string {
	out := slices.Clone(m.cfg.Seeds)
	if m.cfg.DNSName != "" {
		ips, err := m.cfg.Resolver.LookupHost(ctx, m.cfg.DNSName)
		if err != nil {
			m.log.Debug("membership: DNS lookup failed", "name", m.cfg.DNSName, "err", err)
		}
		port := m.cfg.DNSPort
		if port == 0 {
			_, ps, _ := net.SplitHostPort(m.GossipAddr())
			port, _ = strconv.Atoi(ps)
		}
		for _, ip := range ips {
			out = append(out, net.JoinHostPort(ip, strconv.Itoa(port)))
		}
	}
	if m.cfg.DNSSRV != "" {
		_, srvs, err := m.cfg.Resolver.LookupSRV(ctx, "", "", m.cfg.DNSSRV)
		if err != nil {
			m.log.Debug("membership: DNS SRV lookup failed", "name", m.cfg.DNSSRV, "err", err)
		}
		for _, s := range srvs {
			host := s.Target
			if len(host) > 1 && host[len(host)-1] == '.' {
				host = host[:len(host)-1]
			}
			out = append(out, net.JoinHostPort(host, strconv.Itoa(int(s.Port))))
		}
	}
	self := m.GossipAddr()
	out = slices.DeleteFunc(out, func(a string) bool { return a == self })
	slices.Sort(out)
	return slices.Compact(out)
}

// joinOnce tries every target once and reports whether this node now knows
// another member.
func (m *Membership) joinOnce(ctx context.Context) bool {
	targets := m.targets(ctx)
	if len(targets) == 0 {
		return m.ml.NumMembers() > 1
	}
	n, err := m.ml.Join(targets)
	if n > 0 && m.ml.NumMembers() > 1 {
		m.log.Info("membership: joined", "contacted", n, "members", m.ml.NumMembers())
		return true
	}
	m.log.Debug("membership: no seed answered", "targets", targets, "err", err)
	return m.ml.NumMembers() > 1
}

// joinLoop keeps trying to join, with backoff, until this node knows
// another member (it may also be joined by another node meanwhile).
func (m *Membership) joinLoop() {
	defer m.wg.Done()
	backoff := 100 * time.Millisecond
	warned := false
	for {
		select {
		case <-time.After(backoff):
		case <-m.done:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), m.timed.TCPTimeout)
		joined := m.joinOnce(ctx)
		cancel()
		if joined {
			return
		}
		if !warned && backoff >= 2*time.Second {
			m.log.Warn("membership: no seed answers yet; still trying", "seeds", m.cfg.Seeds, "dns", m.cfg.DNSName+m.cfg.DNSSRV)
			warned = true
		}
		backoff = min(2*backoff, m.cfg.RetryMax)
	}
}

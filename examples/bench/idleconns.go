package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// idleConnResult is what n idle keep-alive connections cost a proxy.
type idleConnResult struct {
	name          string
	n             int
	before, after int64 // RSS of the proxy's processes, bytes
}

func (r *idleConnResult) perConn() float64 { return float64(r.after-r.before) / float64(r.n) }

// idleConns measures, for each proxy of group g, the memory of n
// keep-alive connections that each sent one request and are then held
// open, idle: what the browsers of a site's visitors leave behind.
func (h *harness) idleConns(ctx context.Context, g *group, n int) error {
	for _, c := range g.contenders {
		if c.cpu == nil {
			continue // direct: the backend's, not a proxy's
		}
		res, err := idleConnMemory(ctx, c, n)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		h.logf("idle connections: %s: %d held, RSS %s -> %s (%.2f KiB each)", c.name, n, mib(res.before), mib(res.after), res.perConn()/1024)
		h.rep.idleConns = append(h.rep.idleConns, res)
	}
	return nil
}

// idleConnMemory opens n connections to c, sends GET / on each and reads
// the answer, and measures c's RSS before the first and after the last;
// it closes them all before returning.
func idleConnMemory(ctx context.Context, c *contender, n int) (*idleConnResult, error) {
	rss := func() (sum int64) {
		for _, pid := range c.cpu() {
			sum += rssBytes(pid)
		}
		return sum
	}
	res := &idleConnResult{name: c.name, n: n, before: rss()}
	host := strings.TrimPrefix(c.url, "http://")
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	d := net.Dialer{Timeout: 10 * time.Second}
	for i := range n {
		conn, err := d.DialContext(ctx, "tcp", host)
		if err != nil {
			return nil, fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, conn)
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: "+host+"\r\n\r\n"); err != nil {
			return nil, fmt.Errorf("connection %d: %w", i, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return nil, fmt.Errorf("connection %d: %w", i, err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || resp.Close {
			return nil, fmt.Errorf("connection %d: status %d, closing %v, %v", i, resp.StatusCode, resp.Close, err)
		}
	}
	res.after = rss()
	return res, nil
}

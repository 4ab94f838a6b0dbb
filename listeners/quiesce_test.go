package listeners

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A quiesced TCP listener completes no new handshake, and what was queued
// before stays to be accepted.
func TestQuiesce(t *testing.T) {
	ln, err := listenTCP("127.0.0.1:0", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	queued, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()
	type result struct {
		c  net.Conn
		at time.Time
	}
	accepted := make(chan result, 1)
	go func() {
		// Accept only after Quiesce began: it must wait for this. at is
		// when the accept began: the queue cannot be empty before.
		time.Sleep(20 * time.Millisecond)
		at := time.Now()
		c, _ := ln.Accept()
		accepted <- result{c, at}
	}()
	if err := Quiesce(ln.(*net.TCPListener), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	returned := time.Now()
	r := <-accepted
	if r.c == nil {
		t.Fatal("the queued connection was not accepted")
	}
	r.c.Close()
	if r.at.After(returned) {
		t.Fatal("Quiesce returned while a connection was still queued")
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("a new connection completed on a quiesced listener")
	}
}

// Listeners rouse binds are plain TCP, not MPTCP (Go's default since 1.24),
// which could not be quiesced.
func TestListenTCPIsPlainTCP(t *testing.T) {
	ln, err := listenTCP("127.0.0.1:0", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var proto int
	rc.Control(func(fd uintptr) { proto, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL) })
	if err != nil || proto != unix.IPPROTO_TCP {
		t.Fatalf("listener protocol %d (%v), want IPPROTO_TCP (%d)", proto, err, unix.IPPROTO_TCP)
	}
}

// A connection whose handshake completed but which the kernel holds
// outside the accept queue until its first bytes come (TCP_DEFER_ACCEPT)
// is queued by those bytes on a quiesced listener too, and drained; a new
// connection still does not complete.
func TestQuiesceLetsDeferredConnectionsIn(t *testing.T) {
	ln, err := listenTCP("127.0.0.1:0", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 1) })
	if err != nil {
		t.Fatal(err)
	}
	held, err := net.Dial("tcp", ln.Addr().String()) // connected, nothing sent: not queued yet
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := Quiesce(ln.(*net.TCPListener), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := held.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("the held connection, its first byte sent after Quiesce: %v", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b := make([]byte, 1); func() bool { n, err := c.Read(b); return n != 1 || err != nil || b[0] != 'x' }() {
		t.Error("the held connection's byte did not come")
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("a new connection completed on a quiesced listener")
	}
}

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

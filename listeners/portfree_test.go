package listeners

import (
	"net"
	"syscall"
	"testing"
)

// A port something listens on, or a client socket is bound to, is not
// free; once they are closed it is.
func TestTCPPortFree(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if TCPPortFree(port) {
		t.Errorf("port %d is listened on, reported free", port)
	}
	ln.Close()
	if !TCPPortFree(port) {
		t.Errorf("port %d is free again, reported taken", port)
	}

	// A client socket bound to the port, as an outgoing connection holds
	// its local port.
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if TCPPortFree(port) {
		t.Errorf("port %d is held by a client socket, reported free", port)
	}
}

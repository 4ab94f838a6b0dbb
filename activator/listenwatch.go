package activator

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// ListenWatch wakes a tcp app when a connection waits on one of its
// listeners while no goroutine accepts on it: one epoll instance and one
// goroutine for every idle tcp app of a daemon, instead of a goroutine
// blocked in accept per listener (its stack and the rest: about 5 KiB
// each, 5 MiB for 1000 apps). A listener is registered one-shot: its first
// arrival wakes the app, which accepts on it from then on, until it is idle
// again and arms the registration anew. Arming a socket that has a
// connection waiting reports it at once, so nothing is missed in between.
//
// Its methods are safe to call concurrently. Close it after the apps that
// use it; it waits for its goroutine.
type ListenWatch struct {
	ep   *os.File        // the epoll instance, itself in the runtime's netpoller
	raw  syscall.RawConn // ep's
	done chan struct{}   // closed when the goroutine has returned

	// dispatch is held while the woken ones are called: unwatch takes it
	// to wait out a call under way.
	dispatch sync.Mutex
	mu       sync.Mutex // guards the fields below
	next     int32
	subs     map[int32]func()
}

// NewListenWatch creates the epoll instance and starts the goroutine that
// waits on it.
func NewListenWatch() (*ListenWatch, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil { // for the netpoller
		unix.Close(fd)
		return nil, os.NewSyscallError("epoll: set non-blocking", err)
	}
	w := &ListenWatch{ep: os.NewFile(uintptr(fd), "listen watch epoll"), done: make(chan struct{}), subs: map[int32]func(){}}
	if w.raw, err = w.ep.SyscallConn(); err != nil {
		w.ep.Close()
		return nil, fmt.Errorf("epoll: %w", err)
	}
	go w.run()
	return w, nil
}

// Close closes the epoll instance and waits for the goroutine. Sockets
// still registered wake nothing any more.
func (w *ListenWatch) Close() error {
	err := w.ep.Close()
	<-w.done
	return err
}

// run waits for arrivals until Close. It is woken only by a registration
// that fired: nothing while every watched app is idle and unvisited.
func (w *ListenWatch) run() {
	defer close(w.done)
	var evs [64]unix.EpollEvent
	var woken []func()
	_ = w.raw.Read(func(epfd uintptr) bool {
		w.dispatch.Lock()
		defer w.dispatch.Unlock()
		for {
			n, err := unix.EpollWait(int(epfd), evs[:], 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n <= 0 {
				break
			}
			w.mu.Lock()
			for _, ev := range evs[:n] {
				if f := w.subs[ev.Fd]; f != nil {
					woken = append(woken, f)
				}
			}
			w.mu.Unlock()
			for i, f := range woken {
				f()
				woken[i] = nil
			}
			woken = woken[:0]
			if n < len(evs) {
				break
			}
		}
		return false // wait for the next arrival
	})
}

// watch registers the listening socket rc, armed: wake is called once, from
// the watch's goroutine, when a connection waits on it, then again after
// each arm. wake must not call unwatch. watch may be called with a lock
// that wake takes held.
func (w *ListenWatch) watch(rc syscall.RawConn, wake func()) (int32, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	id := w.next
	w.next++
	w.subs[id] = wake
	if err := w.ctl(rc, unix.EPOLL_CTL_ADD, id); err != nil {
		delete(w.subs, id)
		return 0, err
	}
	return id, nil
}

// arm makes the registration id of rc wake again at the next arrival, or
// at once when a connection is waiting already. It takes no lock.
func (w *ListenWatch) arm(rc syscall.RawConn, id int32) error {
	return w.ctl(rc, unix.EPOLL_CTL_MOD, id)
}

// unwatch removes the registration id of rc, which must still be open:
// epoll would keep a socket whose descriptor was closed as long as another
// one (systemd's, a dup for a reload) refers to it. Once it returns, the
// wake function of id is not running and will not be called. Call it
// without any lock that a wake function takes.
func (w *ListenWatch) unwatch(rc syscall.RawConn, id int32) error {
	w.dispatch.Lock() // a call under way ends first, and none begins
	defer w.dispatch.Unlock()
	w.mu.Lock()
	delete(w.subs, id)
	w.mu.Unlock()
	err := w.ctl(rc, unix.EPOLL_CTL_DEL, id)
	if errors.Is(err, os.ErrClosed) {
		return nil // Close came first: there is nothing left to remove
	}
	return err
}

func (w *ListenWatch) ctl(rc syscall.RawConn, op int, id int32) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: id}
	var cerr error
	err := w.raw.Control(func(epfd uintptr) {
		err := rc.Control(func(fd uintptr) { cerr = unix.EpollCtl(int(epfd), op, int(fd), &ev) })
		if err != nil {
			cerr = err
		}
	})
	if err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return os.NewSyscallError("epoll_ctl", cerr)
}

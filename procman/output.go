package procman

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// The stream names passed to Spec.Output.
const (
	Stdout = "stdout"
	Stderr = "stderr"
)

// MaxLineLength is the longest line passed to Spec.Output; the rest of a
// longer line is dropped.
const MaxLineLength = 64 << 10

// OutputDrainTimeout bounds how long Done waits, after the leader was reaped,
// for the output pipes to reach EOF. A process that left the group (setsid)
// but kept the pipes open would otherwise hold Done forever.
const OutputDrainTimeout = time.Second

// stderrTailLines is how many stderr lines StderrTail can return.
const stderrTailLines = 20

// StderrTail returns up to n of the last stderr lines, oldest first. It holds
// at most 20 lines.
func (p *Process) StderrTail(n int) []string { return p.tail.last(n) }

// outputReaders owns the child's stdout and stderr pipes and the goroutines
// reading them.
type outputReaders struct {
	pipes  []outputPipe
	exited chan struct{} // one value per reader goroutine that returned
	read   func(stream string, r io.Reader)
}

type outputPipe struct {
	stream string
	r      *os.File // read end, read by a reader goroutine
	w      *os.File // write end, closed in the parent once the child has it
}

// attachOutput connects the child's stderr, and its stdout when Output is
// set (else stdout is /dev/null), to pipes read line by line.
func (p *Process) attachOutput(cmd *exec.Cmd) (*outputReaders, error) {
	o := &outputReaders{read: p.readLines}
	streams := []string{Stderr}
	if p.output != nil {
		streams = append(streams, Stdout)
	}
	for _, stream := range streams {
		r, w, err := os.Pipe()
		if err != nil {
			o.abort()
			return nil, err
		}
		o.pipes = append(o.pipes, outputPipe{stream: stream, r: r, w: w})
		if stream == Stdout {
			cmd.Stdout = w
		} else {
			cmd.Stderr = w
		}
	}
	o.exited = make(chan struct{}, len(o.pipes))
	return o, nil
}

// abort releases the pipes when the child could not be started.
func (o *outputReaders) abort() {
	for _, pp := range o.pipes {
		pp.r.Close()
		pp.w.Close()
	}
}

// started closes the parent's copies of the write ends, so that EOF comes
// when no process of the child's group holds them any more, and starts one
// reader per stream.
func (o *outputReaders) started() {
	for _, pp := range o.pipes {
		pp.w.Close()
		go func() {
			defer func() { o.exited <- struct{}{} }()
			o.read(pp.stream, pp.r)
		}()
	}
}

// drain waits for the readers to reach EOF, for at most OutputDrainTimeout,
// then cuts them off and closes the pipes.
func (o *outputReaders) drain() {
	timer := time.NewTimer(OutputDrainTimeout)
	defer timer.Stop()
	for range o.pipes {
		select {
		case <-o.exited:
			continue
		case <-timer.C:
			for _, pp := range o.pipes {
				_ = pp.r.SetReadDeadline(time.Now())
			}
		}
		<-o.exited
	}
	for _, pp := range o.pipes {
		pp.r.Close()
	}
}

// readLines passes every line of r to the tail (stderr) and to Output. Lines
// longer than MaxLineLength are truncated; a read error or deadline ends it.
func (p *Process) readLines(stream string, r io.Reader) {
	br := bufio.NewReaderSize(r, MaxLineLength)
	truncating := false // dropping the rest of a too long line
	for {
		chunk, err := br.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			if !truncating {
				p.emit(stream, string(chunk))
			}
			truncating = true
			continue
		case truncating:
			truncating = false
		case len(chunk) > 0:
			chunk = bytes.TrimSuffix(chunk, []byte("\n"))
			chunk = bytes.TrimSuffix(chunk, []byte("\r"))
			p.emit(stream, string(chunk))
		}
		if err != nil {
			return
		}
	}
}

// emit hands one line to the tail and to Output.
func (p *Process) emit(stream, line string) {
	if stream == Stderr {
		p.tail.add(line)
	}
	if p.output != nil {
		p.outputMu.Lock()
		defer p.outputMu.Unlock()
		p.output(stream, line)
	}
}

// lineRing keeps the last stderrTailLines lines.
type lineRing struct {
	mu    sync.Mutex
	lines [stderrTailLines]string
	next  int // index the next line goes to
	n     int // lines held
}

func (r *lineRing) add(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines[r.next] = line
	r.next = (r.next + 1) % len(r.lines)
	r.n = min(r.n+1, len(r.lines))
}

// last returns up to n of the most recent lines, oldest first.
func (r *lineRing) last(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	n = min(n, r.n)
	if n <= 0 {
		return nil
	}
	out := make([]string, 0, n)
	for i := n; i > 0; i-- {
		out = append(out, r.lines[(r.next-i+len(r.lines))%len(r.lines)])
	}
	return out
}

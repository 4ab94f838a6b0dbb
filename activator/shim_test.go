package activator

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// shim runs the exec shim (this test binary's __exec) with args.
func shim(args ...string) *exec.Cmd {
	return exec.Command(os.Args[0], append([]string{shimVerb}, args...)...)
}

func TestExecShimSetsListenPID(t *testing.T) {
	cmd := shim("--", "sh", "-c", `echo "$LISTEN_PID $$"`)
	cmd.Env = append(os.Environ(), "LISTEN_PID=1") // whatever was there is replaced
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 || f[0] != f[1] || f[0] != strconv.Itoa(cmd.Process.Pid) {
		t.Errorf("LISTEN_PID and the shell's pid: %q, want both %d (exec in place)", f, cmd.Process.Pid)
	}
}

func TestExecShimStdio(t *testing.T) {
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := os.NewFile(uintptr(pair[0]), "ours"), os.NewFile(uintptr(pair[1]), "theirs")
	defer ours.Close()
	// fd 3 is the connection; with -stdio it is stdin and stdout too, in
	// blocking mode.
	cmd := shim("-stdio", "--", "sh", "-c", `read line; echo "got $line from $LISTEN_PID"; echo "on fd 3" >&3`)
	cmd.Env = append(os.Environ(), "LISTEN_FDS=1")
	cmd.ExtraFiles = []*os.File{theirs}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	ours.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := ours.WriteString("hello\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(ours)
	for _, want := range []string{"got hello from " + strconv.Itoa(cmd.Process.Pid) + "\n", "on fd 3\n"} {
		if got, err := r.ReadString('\n'); got != want {
			t.Errorf("read %q, %v; want %q", got, err, want)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Error(err)
	}
}

func TestExecShimErrors(t *testing.T) {
	tests := []struct {
		args []string
		code int
	}{
		{[]string{"--", "rouse-test-no-such-program"}, 127},
		{[]string{"--", "/nonexistent/program"}, 127},
		{[]string{"--", "/dev/null"}, 126},
		{[]string{"-bogus", "--", "true"}, 2},
		{[]string{"--"}, 2},
	}
	for _, tt := range tests {
		err := shim(tt.args...).Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != tt.code {
			t.Errorf("shim %q: exit %d (%v), want %d", tt.args, code, err, tt.code)
		}
	}
}

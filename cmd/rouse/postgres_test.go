package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// postgres (Debian's) started on demand: postgres opens its port before
// it takes sessions, so ready = "tcp" hands the first client "the database
// system is starting up"; the exec probe (pg_isready) waits for sessions.
// Debian's postgres also says READY=1 on $NOTIFY_SOCKET, so ready =
// "notify" works as well. stop_signal = "SIGINT" is postgres's fast
// shutdown: open sessions are ended and the next start needs no recovery.
func TestPostgresStartedOnDemand(t *testing.T) {
	for _, ready := range []string{"exec pg_isready -q -h 127.0.0.1 -p {port}", "notify"} {
		t.Run(strings.Fields(ready)[0], func(t *testing.T) { testPostgres(t, ready) })
	}
}

func testPostgres(t *testing.T, ready string) {
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(bins) == 0 {
		requireTool(t, "postgres") // fails in CI, skips elsewhere
	}
	bin := filepath.Dir(bins[len(bins)-1])
	psql := requireTool(t, "psql")
	requireTool(t, "pg_isready")

	// postgres refuses to run as root: as root, it runs as the package's
	// user postgres, in a directory of its own outside the test's 0700
	// temporary directories.
	dir, err := os.MkdirTemp("", "rouse-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-A", "trust", "-U", "postgres", "--no-locale", "-E", "UTF8", "--no-sync")
	initdb.Dir = dir
	userKey := ""
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("user postgres (made by Debian's postgresql package): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		initdb.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		userKey = `user = "postgres"`
	}
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}

	port := freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.pg]
listen = ["127.0.0.1:%d"]
command = [%q, "-D", "data", "-k", %q, "-c", "listen_addresses=127.0.0.1", "-p", "{port}"]
dir = %q
%s
ready = %q
stop_signal = "SIGINT"
idle_timeout = "1s"
`, port, filepath.Join(bin, "postgres"), dir, dir, userKey, ready))
	r := startRouse(t, file, control)
	query := func() string {
		return runTool(t, psql, "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "postgres", "-d", "postgres", "-Atc", "select 40 + 2")
	}
	for i := range 3 {
		if st := r.app(t, "pg"); st.state != "idle" {
			t.Fatalf("before cold psql %d: %+v, want idle", i, st)
		}
		began := time.Now()
		if got := query(); got != "42" {
			t.Fatalf("cold psql %d = %q, want 42", i, got)
		}
		t.Logf("cold psql %d answered in %s", i, time.Since(began).Round(time.Millisecond))
		waitFor(t, "postgres to be stopped when idle", func() bool { return r.app(t, "pg").state == "idle" })
	}
	if st := r.app(t, "pg"); st.starts != 3 {
		t.Errorf("starts = %d, want 3", st.starts)
	}
	log := r.log.String()
	if n := strings.Count(log, "received fast shutdown request"); n != 3 {
		t.Errorf("postgres logged %d fast shutdowns (SIGINT), want 3", n)
	}
	// ("the database system is starting up" is there: what the probe's
	// early connections got, never psql.)
	for _, bad := range []string{"not properly shut down", "automatic recovery", "immediate shutdown"} {
		if strings.Contains(log, bad) {
			t.Errorf("postgres's log says %q", bad)
		}
	}
}

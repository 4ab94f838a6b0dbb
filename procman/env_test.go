package procman

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// envOf runs env(1) with spec's settings and returns what it printed.
func envOf(t *testing.T, inherit bool, extra ...string) []string {
	t.Helper()
	var out lines
	p := start(t, Spec{Name: "env", Argv: []string{"env"}, User: currentUser(), Env: extra, InheritEnv: inherit, Output: out.output})
	waitDone(t, p, 10*time.Second)
	var env []string
	for _, l := range out.get() {
		if kv, ok := strings.CutPrefix(l, "stdout: "); ok {
			env = append(env, kv)
		}
	}
	return env
}

func keys(env []string) []string {
	var k []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		k = append(k, name)
	}
	slices.Sort(k)
	return k
}

// By default an app gets PATH, LANG, its user's HOME, USER and LOGNAME and
// what Spec.Env adds: none of rouse's own variables.
func TestSmallEnv(t *testing.T) {
	t.Setenv("ROUSE_TEST_SECRET", "leaked")
	t.Setenv("LANG", "C.UTF-8")
	env := envOf(t, false, "PORT=8080", "FOO=bar")
	if got, want := keys(env), []string{"FOO", "HOME", "LANG", "LOGNAME", "PATH", "PORT", "USER"}; !slices.Equal(got, want) {
		t.Errorf("variables %v, want %v", got, want)
	}
	for _, want := range []string{"PATH=" + os.Getenv("PATH"), "LANG=C.UTF-8", "USER=" + currentUser(), "PORT=8080"} {
		if !slices.Contains(env, want) {
			t.Errorf("no %s in %v", want, env)
		}
	}
}

// InheritEnv keeps rouse's whole environment (but its NOTIFY_SOCKET).
func TestInheritEnv(t *testing.T) {
	t.Setenv("ROUSE_TEST_SECRET", "kept")
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	env := envOf(t, true, "FOO=bar")
	for _, want := range []string{"ROUSE_TEST_SECRET=kept", "FOO=bar"} {
		if !slices.Contains(env, want) {
			t.Errorf("no %s in %v", want, env)
		}
	}
	if slices.Contains(keys(env), "NOTIFY_SOCKET") {
		t.Errorf("rouse's NOTIFY_SOCKET passed on: %v", env)
	}
}

// On the fallback, the scope mark is the one variable added.
func TestSmallEnvFallbackMark(t *testing.T) {
	g := startGuardWith(t, GuardOptions{Containment: ContainSubreaper})
	var out lines
	p := start(t, Spec{Name: "env", Argv: []string{"env"}, User: currentUser(), Guard: g, Output: out.output})
	waitDone(t, p, 10*time.Second)
	var env []string
	for _, l := range out.get() {
		env = append(env, strings.TrimPrefix(l, "stdout: "))
	}
	if !slices.Contains(keys(env), ScopeEnv) || len(env) > 6 {
		t.Errorf("env %v: want the small one with %s", env, ScopeEnv)
	}
}

package procman

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// StartProblem is something Check found that would make Start fail, or
// the started program fail to run: Key is the Spec field at fault
// ("user", "dir" or "command").
type StartProblem struct {
	Key string
	Msg string
}

// Check tells what the first Start of spec would run into, without
// starting anything: the user does not exist, Dir does not exist or that
// user cannot enter it, the program is not found on the PATH, or that user
// may not execute it (every directory on the way must be searchable and
// the file executable for the user's uid and groups). It reads the system
// as it is now; euid is rouse's effective uid. Safe for concurrent use.
func Check(spec Spec, euid int) []StartProblem {
	who, err := identity(spec.User, euid)
	if err != nil {
		return []StartProblem{{Key: "user", Msg: err.Error()}}
	}
	var out []StartProblem
	if spec.Dir != "" {
		if err := who.canEnter(spec.Dir); err != nil {
			out = append(out, StartProblem{Key: "dir", Msg: err.Error()})
		}
	}
	prog := "/bin/sh"
	if spec.Shell == "" {
		if len(spec.Argv) == 0 || spec.Argv[0] == "" {
			return append(out, StartProblem{Key: "command", Msg: "no command"})
		}
		prog = spec.Argv[0]
	} else if first := shellProgram(spec.Shell); first != "" {
		// The shell itself is there; what it runs first usually is the app.
		if err := who.canExec(resolveProgram(first, spec, envPath(spec.Env, os.Getenv("PATH")))); err != nil {
			out = append(out, StartProblem{Key: "command", Msg: err.Error()})
		}
	}
	if err := who.canExec(resolveProgram(prog, spec, os.Getenv("PATH"))); err != nil {
		out = append(out, StartProblem{Key: "command", Msg: err.Error()})
	}
	return out
}

// resolved is a program found (path) or not (err).
type resolved struct {
	name, path string
	err        error
}

// resolveProgram finds prog as Start would: a name with a slash as it is
// (relative to Dir), else the first file with an execute bit on path.
func resolveProgram(prog string, spec Spec, path string) resolved {
	if strings.Contains(prog, "/") {
		if !filepath.IsAbs(prog) && spec.Dir != "" {
			return resolved{name: prog, path: filepath.Join(spec.Dir, prog)}
		}
		return resolved{name: prog, path: prog}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, prog)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return resolved{name: prog, path: p}
		}
	}
	return resolved{name: prog, err: fmt.Errorf("%q not found on PATH %s", prog, path)}
}

// envPath is the PATH that Env sets (the last one wins), else def.
func envPath(env []string, def string) string {
	for _, kv := range slices.Backward(env) {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			return p
		}
	}
	return def
}

// shellProgram is the program a shell command starts with, after an
// optional exec, when that word is a plain name or path; "" otherwise
// (a builtin, an assignment, quoting or expansion).
func shellProgram(cmd string) string {
	f := strings.Fields(cmd)
	if len(f) > 0 && f[0] == "exec" {
		f = f[1:]
	}
	if len(f) == 0 || strings.ContainsAny(f[0], "$`'\"\\=;&|<>(){}*?[]~!#") {
		return ""
	}
	if !strings.Contains(f[0], "/") {
		// A builtin or keyword is no program; a name is looked up.
		switch f[0] {
		case "cd", "echo", "printf", "test", "true", "false", "set", "export", "if", "for", "while", "case", "trap", "ulimit", "umask", "eval", ".", ":":
			return ""
		}
	}
	return f[0]
}

// who is the identity an app runs with.
type who struct {
	name   string
	uid    uint32
	groups []uint32 // primary gid first
}

func identity(name string, euid int) (who, error) {
	if name == "" {
		w := who{name: "uid " + strconv.Itoa(euid), uid: uint32(euid), groups: []uint32{uint32(os.Getegid())}}
		gs, _ := os.Getgroups()
		for _, g := range gs {
			w.groups = append(w.groups, uint32(g))
		}
		return w, nil
	}
	u, err := lookupUser(name)
	var unknown user.UnknownUserError
	var unknownID user.UnknownUserIdError
	switch {
	case errors.As(err, &unknown), errors.As(err, &unknownID):
		return who{}, fmt.Errorf("no user %q on this system", name)
	case err != nil:
		return who{}, fmt.Errorf("user %q: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return who{}, fmt.Errorf("user %q: uid %q, gid %q", name, u.Uid, u.Gid)
	}
	w := who{name: "user " + u.Username, uid: uint32(uid), groups: []uint32{uint32(gid)}}
	ids, err := u.GroupIds()
	if err != nil {
		return who{}, fmt.Errorf("user %q: supplementary groups: %v", name, err)
	}
	for _, g := range ids {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			w.groups = append(w.groups, uint32(n))
		}
	}
	return w, nil
}

// may tells whether w has the permission bit want (4 read, 2 write,
// 1 execute/search) on fi, by owner, group, then others (ACLs aside).
// root may search any directory and run any file with an execute bit.
func (w who) may(fi os.FileInfo, want os.FileMode) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	mode := fi.Mode().Perm()
	switch {
	case w.uid == 0:
		return fi.IsDir() || mode&0o111 != 0
	case st.Uid == w.uid:
		return mode&(want<<6) != 0
	case slices.Contains(w.groups, st.Gid):
		return mode&(want<<3) != 0
	}
	return mode&want != 0
}

// canReach checks that w may search every directory above path.
func (w who) canReach(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if !w.may(fi, 1) {
			return fmt.Errorf("%s cannot reach %s: no search (x) permission on %s (mode %v)", w.name, path, dir, fi.Mode().Perm())
		}
		if dir == "/" {
			return nil
		}
	}
}

func (w who) canEnter(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s does not exist", dir)
	case err != nil:
		return err
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory", dir)
	case !w.may(fi, 1):
		return fmt.Errorf("%s cannot enter %s (mode %v)", w.name, dir, fi.Mode().Perm())
	}
	return w.canReach(dir)
}

func (w who) canExec(r resolved) error {
	if r.err != nil {
		return r.err
	}
	err := w.canRun(r.path)
	if err != nil && r.path != r.name {
		return fmt.Errorf("%s is %s on PATH: %w", r.name, r.path, err)
	}
	return err
}

// canRun checks that w may execute the file at path, reached as written
// and, for a symlink, where it points.
func (w who) canRun(path string) error {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s does not exist", path)
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file", path)
	case !w.may(fi, 1):
		return fmt.Errorf("%s may not execute %s (mode %v)", w.name, path, fi.Mode().Perm())
	}
	if err := w.canReach(path); err != nil {
		return err
	}
	if real, err := filepath.EvalSymlinks(path); err == nil && real != path {
		return w.canReach(real)
	}
	return nil
}

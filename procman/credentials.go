package procman

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// credential decides which user the child runs as, given rouse's effective
// uid and Spec.User. It returns nil when the child keeps rouse's identity.
// It also returns HOME, USER and LOGNAME for that user, as login and
// systemd's User= do (Spec.Env, applied after, still wins).
func credential(euid int, name string) (*syscall.Credential, []string, error) {
	if name == "" {
		if euid == 0 {
			return nil, nil, fmt.Errorf(`%w: set user (user = "root" to really run it as root)`, ErrRoot)
		}
		return nil, ownUserEnv(euid), nil
	}
	u, err := lookupUser(name)
	if err != nil {
		return nil, nil, err
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, nil, fmt.Errorf("user %q: uid %q: %w", name, u.Uid, err)
	}
	env := []string{"HOME=" + u.HomeDir, "USER=" + u.Username, "LOGNAME=" + u.Username}
	if int(uid) == euid {
		return nil, env, nil
	}
	if euid != 0 {
		return nil, nil, fmt.Errorf("cannot run as user %q (uid %d) without root: rouse runs as uid %d", name, uid, euid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, nil, fmt.Errorf("user %q: gid %q: %w", name, u.Gid, err)
	}
	groupIDs, err := u.GroupIds()
	if err != nil {
		return nil, nil, fmt.Errorf("user %q: supplementary groups: %w", name, err)
	}
	groups := make([]uint32, 0, len(groupIDs))
	for _, g := range groupIDs {
		n, err := strconv.ParseUint(g, 10, 32)
		if err != nil {
			return nil, nil, fmt.Errorf("user %q: group %q: %w", name, g, err)
		}
		groups = append(groups, uint32(n))
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}
	return cred, env, nil
}

// ownUserEnv is HOME, USER and LOGNAME of rouse's own user: from the user
// database, else (a uid without an entry, in a container) from rouse's
// environment.
func ownUserEnv(euid int) []string {
	if u, err := user.LookupId(strconv.Itoa(euid)); err == nil {
		return []string{"HOME=" + u.HomeDir, "USER=" + u.Username, "LOGNAME=" + u.Username}
	}
	var env []string
	for _, k := range []string{"HOME", "USER", "LOGNAME"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// lookupUser finds a user by name, or by uid when name is a number that is
// not also a user name.
func lookupUser(name string) (*user.User, error) {
	u, err := user.Lookup(name)
	if err == nil {
		return u, nil
	}
	if _, convErr := strconv.ParseUint(name, 10, 32); convErr == nil {
		return user.LookupId(name)
	}
	return nil, err
}

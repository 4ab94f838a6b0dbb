package procman

import (
	"errors"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// credential decides from rouse's euid, which the test can choose, so the
// non-root paths are covered even when the tests run as root.
func TestCredential(t *testing.T) {
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip(err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	var groups []uint32
	ids, _ := nobody.GroupIds()
	for _, id := range ids {
		n, _ := strconv.Atoi(id)
		groups = append(groups, uint32(n))
	}
	asNobody := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}

	tests := []struct {
		name     string
		euid     int
		user     string
		want     *syscall.Credential
		wantErr  string
		wantRoot bool
	}{
		{name: "root without user", euid: 0, user: "", wantRoot: true, wantErr: "set user"},
		{name: "root as root", euid: 0, user: "root"},
		{name: "root as uid 0", euid: 0, user: "0"},
		{name: "root as nobody", euid: 0, user: "nobody", want: asNobody},
		{name: "root as numeric nobody", euid: 0, user: nobody.Uid, want: asNobody},
		{name: "unknown user", euid: 0, user: "no-such-user-procman", wantErr: "unknown user"},
		{name: "user keeps itself", euid: 1000, user: ""},
		{name: "user as itself", euid: uid, user: "nobody"},
		{name: "user as another", euid: 1000, user: "nobody", wantErr: "without root"},
		{name: "user as root", euid: 1000, user: "root", wantErr: "without root"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, env, err := credential(tt.euid, tt.user)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if errors.Is(err, ErrRoot) != tt.wantRoot {
					t.Errorf("errors.Is(%v, ErrRoot) = %v", err, !tt.wantRoot)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (got == nil) != (tt.want == nil) || got != nil &&
				(got.Uid != tt.want.Uid || got.Gid != tt.want.Gid || !slices.Equal(got.Groups, tt.want.Groups)) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			if got != nil && !slices.Contains(env, "HOME="+nobody.HomeDir) {
				t.Errorf("env %q lacks HOME of the user", env)
			}
		})
	}
}

#!/usr/bin/env bash
# test-deb.sh tests dist/rouse_*.deb the way a Debian admin meets it: `make
# test-deb` runs it, as root.
#
#  1. Static: lintian (no E: or W: tag), systemd-analyze verify on the units,
#     the man pages render without warnings and document every config key,
#     the shipped configs pass `rouse check`.
#  2. Under a real systemd: a bookworm root is debootstrapped once into
#     $ROUSE_DEB_TEST_CACHE (/var/cache/rouse-test) and each run works on a
#     throw-away copy of it (an overlay). The .deb is installed with dpkg
#     while systemd is not running, then systemd boots as PID 1 of private
#     pid, mount, network, uts, ipc and cgroup namespaces; every check runs
#     inside them through nsenter. The network namespace is private, so the
#     fixed ports below cannot clash with anything on the host, nor two runs
#     with each other. Checked there: rouse.service active (READY=1), the
#     control socket's group, an app rouse binds and one behind a
#     rouse-NAME.socket unit answering as their users, the watchdog, bash
#     completion, journalctl -t APP, reload (good and bad config), restart
#     (a connection made meanwhile is served), a crash, an upgrade, the
#     sockets rouse binds kept in systemd's fd store (requests flow through
#     a restart and an upgrade to a higher version with 0 errors; addresses
#     gone from the config are dropped), the drain on stop with nothing left
#     behind, purge, and apt install on a running system.
#
# Whatever way the script ends, the trap on EXIT kills the namespace's init
# (which takes every process of the namespace with it), kills what is left
# in its cgroup, removes the cgroup and the copy; the mounts die with the
# mount namespace. ROUSE_DEB_TEST_KEEP=1 keeps the copy for a post-mortem.
#
# Prints PASS/FAIL lines and "N passed, N failed"; exits 1 on any FAIL.
set -uo pipefail
cd "$(dirname "$0")/.."

CACHE=${ROUSE_DEB_TEST_CACHE:-/var/cache/rouse-test}
SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus,adduser,procps,bash-completion
BASE=$CACHE/$SUITE
DIRECT_PORT=17001 # echo-direct: rouse binds it itself
SOCK_PORT=17002   # echo-sock: held by rouse-echo-sock.socket
NEW_PORT=17003    # echo-new: added by a reload

passed=0 failed=0
t0=$SECONDS
pass() { passed=$((passed + 1)); echo "PASS  $*"; }
fail() { failed=$((failed + 1)); echo "FAIL  $*"; }
note() { echo "NOTE  $*"; }
die() { echo "test-deb: $*" >&2; exit 2; }
quiet() { "$@" >/dev/null 2>&1; }
not() { ! "$@"; }
check() { # check DESCRIPTION COMMAND...: PASS or FAIL on the command's status
	local what=$1; shift
	if "$@"; then pass "$what"; else fail "$what"; fi
}
elapsed() { echo "$((SECONDS - t0))s"; }

apt_install() { # apt_install COMMAND PACKAGE: install PACKAGE if COMMAND is missing
	command -v "$1" >/dev/null && return
	echo "test-deb: installing $2"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >/dev/null ||
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >/dev/null; } ||
		die "cannot install $2"
}

# ---------------------------------------------------------------------------
# Inside the namespaces. The script re-executes itself with a hidden verb;
# WORK, ROOT, BASE and OVERLAY come through the environment.

# mount_root makes $ROOT: an overlay of $BASE, or the plain copy.
mount_root() {
	if [[ $OVERLAY == 1 ]]; then
		mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$WORK/upper,workdir=$WORK/work" "$ROOT"
	fi
}

# mount_api mounts what a root needs to run programs (and systemd): proc,
# sys, a cgroup2 of our own cgroup namespace, a minimal /dev, and /run.
mount_api() {
	mount -t proc -o nosuid,nodev,noexec proc "$ROOT/proc"
	mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$ROOT/sys"
	mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$ROOT/sys/fs/cgroup"
	mount -t tmpfs -o mode=0755,nosuid,size=64m tmpfs "$ROOT/run"
	mount -t tmpfs -o mode=0755,nosuid,size=8m tmpfs "$ROOT/dev"
	local n
	for n in null zero full random urandom tty; do
		touch "$ROOT/dev/$n"
		mount --bind "/dev/$n" "$ROOT/dev/$n"
	done
	# systemd writes to the console; nothing reads it here.
	touch "$ROOT/dev/console"
	mount --bind /dev/null "$ROOT/dev/console"
	mkdir -p "$ROOT/dev/pts" "$ROOT/dev/shm"
	mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$ROOT/dev/pts"
	ln -s pts/ptmx "$ROOT/dev/ptmx"
	mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$ROOT/dev/shm"
	ln -s /proc/self/fd "$ROOT/dev/fd"
	ln -s /proc/self/fd/0 "$ROOT/dev/stdin"
	ln -s /proc/self/fd/1 "$ROOT/dev/stdout"
	ln -s /proc/self/fd/2 "$ROOT/dev/stderr"
}

# __install: dpkg -i the package while systemd is not running, as on a
# machine being set up, and lay out the apps and the socket unit under test.
inner_install() {
	set -e
	mount_root
	mount_api
	cp "$DEB" "$ROOT/tmp/rouse.deb"
	chroot "$ROOT" dpkg -i /tmp/rouse.deb
	rm "$ROOT/tmp/rouse.deb"

	cat >"$ROOT/etc/rouse/apps.d/echo-direct.toml" <<EOF
# rouse binds this app's address itself.
[apps.echo-direct]
mode = "tcp"
listen = ["127.0.0.1:$DIRECT_PORT"]
command = ["/usr/bin/rouse", "__backend", "-name", "echo-direct", "-proto", "echo", "-banner", "-listen", "127.0.0.1:{port}"]
user = "nobody"
EOF
	cat >"$ROOT/etc/rouse/apps.d/echo-sock.toml" <<EOF
# systemd holds this app's socket (rouse-echo-sock.socket).
[apps.echo-sock]
mode = "tcp"
listen = ["systemd:echo-sock"]
command = ["/usr/bin/rouse", "__backend", "-name", "echo-sock", "-proto", "echo", "-banner", "-listen", "127.0.0.1:{port}"]
user = "nobody"
EOF
	sed -e "s/^ListenStream=.*/ListenStream=127.0.0.1:$SOCK_PORT/" \
		-e 's/^FileDescriptorName=.*/FileDescriptorName=echo-sock/' \
		-e 's/"example"/"echo-sock"/' \
		"$ROOT/usr/share/doc/rouse/examples/rouse-example.socket" >"$ROOT/etc/systemd/system/rouse-echo-sock.socket"
	chroot "$ROOT" systemctl enable rouse-echo-sock.socket

	# alice may use the control socket (group rouse); nobody may not.
	chroot "$ROOT" useradd --system --no-create-home --shell /usr/sbin/nologin --groups rouse alice

	# Units that need hardware or the network, or would spawn a getty on a
	# console nobody reads, only add noise and time here.
	chroot "$ROOT" systemctl mask --quiet console-getty.service getty@tty1.service \
		apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
		fstrim.timer e2scrub_reap.service systemd-pstore.service
}

# __boot: PID 1 of the new pid namespace; becomes systemd.
inner_boot() {
	set -e
	mount_root
	mount_api
	exec env -i container=rouse-test TERM=dumb PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		chroot "$ROOT" /lib/systemd/systemd --system --log-target=journal-or-kmsg
}

case ${1:-} in
	__install) inner_install; exit ;;
	__boot) inner_boot; exit ;;
esac

# ---------------------------------------------------------------------------
# On the host.

[[ $EUID == 0 ]] || die "needs root (debootstrap, namespaces, mounts)"
DEB=$(ls -t dist/rouse_*.deb 2>/dev/null | head -1)
[[ -n $DEB ]] || die "no dist/rouse_*.deb: run make deb"
DEB=$PWD/$DEB
echo "test-deb: $DEB"

WORK=$(mktemp -d /var/tmp/rouse-test.XXXXXX)
ROOT=$WORK/root
mkdir -p "$ROOT" "$WORK/upper" "$WORK/work"
CG="" UNSHARE_PID="" PID1=""

cleanup() {
	local rc=$?
	trap - EXIT INT TERM HUP
	if [[ -n $PID1 ]] && kill -0 "$PID1" 2>/dev/null; then
		kill -s RTMIN+4 "$PID1" 2>/dev/null # systemd: poweroff
		for _ in $(seq 100); do kill -0 "$PID1" 2>/dev/null || break; sleep 0.1; done
		# The init of a pid namespace takes every process in it along.
		kill -KILL "$PID1" 2>/dev/null
	fi
	[[ -n $UNSHARE_PID ]] && wait "$UNSHARE_PID" 2>/dev/null
	if [[ -n $CG && -d $CG ]]; then
		[[ -e $CG/cgroup.kill ]] && echo 1 >"$CG/cgroup.kill" 2>/dev/null
		for _ in $(seq 100); do
			[[ -z $(find "$CG" -name cgroup.procs -exec cat {} + 2>/dev/null) ]] && break
			sleep 0.1
		done
		find "$CG" -depth -type d -exec rmdir {} + 2>/dev/null
		[[ -d $CG ]] && echo "test-deb: could not remove cgroup $CG" >&2
	fi
	if [[ ${ROUSE_DEB_TEST_KEEP:-} == 1 ]]; then
		echo "test-deb: kept $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# --- 1. static checks --------------------------------------------------------
echo "== static checks"
apt_install lintian lintian
if out=$(lintian -I -E --pedantic "$DEB" 2>&1 | grep -v '^running with root privileges'); then :; fi
if grep -q '^[EW]: ' <<<"$out"; then
	fail "lintian: E: or W: tags"
	echo "$out"
else
	pass "lintian -I -E --pedantic: no E: or W: tag"
	[[ -n $out ]] && sed 's/^/      /' <<<"$out"
fi

x=$WORK/deb
mkdir -p "$x" "$WORK/units"
dpkg-deb -x "$DEB" "$x"
# verify needs ExecStart's binary to exist: point it at the extracted one.
sed "s|/usr/bin/rouse|$x/usr/bin/rouse|g" "$x/lib/systemd/system/rouse.service" >"$WORK/units/rouse.service"
cp "$x/usr/share/doc/rouse/examples/rouse-example.socket" "$WORK/units/"
if out=$(cd "$WORK/units" && MANPATH=$x/usr/share/man systemd-analyze verify rouse.service rouse-example.socket 2>&1) && [[ -z $out ]]; then
	pass "systemd-analyze verify rouse.service rouse-example.socket"
else
	fail "systemd-analyze verify: $out"
fi

out=$(for m in "$x"/usr/share/man/man*/*.gz; do LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$m" 2>&1 >/dev/null; done)
check "man pages render without warnings${out:+: $out}" test -z "$out"

# Every key the config loader knows (its key tables) has an entry in
# rouse.toml(5), so the page cannot silently fall behind the code.
keys=$(sed -n '/^var \(rouseKeys\|appKeys\) = map/,/^}/s/^\t"\([a-z_]*\)":.*/\1/p' cmd/rouse/config_keys.go)
missing=$(for k in $keys; do zcat "$x/usr/share/man/man5/rouse.toml.5.gz" | grep -qx "\.B $k" || echo "$k"; done)
check "rouse.toml(5) documents all $(wc -w <<<"$keys") config keys${missing:+; missing: $(echo $missing)}" test -z "$missing"

check "shipped /etc/rouse/rouse.toml passes rouse check" \
	quiet "$x/usr/bin/rouse" check -c "$x/etc/rouse/rouse.toml"
# The examples name users and programs this machine does not have (blog,
# wiki): rouse check reports those, as a first start would hit them, and
# nothing else.
out=$("$x/usr/bin/rouse" check -c "$x/usr/share/doc/rouse/examples/rouse.toml" 2>&1 >/dev/null)
rc=$?
other=$(grep -vE '^[^:]+:[0-9]+: apps\.[A-Za-z0-9_.-]+\.(user|dir|command): ' <<<"$out")
check "examples/rouse.toml (with apps.d/) passes rouse check but for its apps' users and programs${other:+: $other}" \
	test "$rc" -le 2 -a -z "$other"
check "bash completion parses" bash -n "$x/usr/share/bash-completion/completions/rouse"
echo "   static checks took $(elapsed)"

# --- 2. a bookworm root, debootstrapped once ------------------------------------
stamp="$SUITE $INCLUDE"
mkdir -p "$CACHE"
exec 9>"$CACHE/$SUITE.lock"
flock 9 # one debootstrap at a time; released once the root is there
if [[ $(cat "$CACHE/$SUITE.stamp" 2>/dev/null) != "$stamp" ]]; then
	apt_install debootstrap debootstrap
	mirror=${ROUSE_DEB_TEST_MIRROR:-$( (grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
		grep -hsE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
			sed 's/\[[^]]*\]//' | awk '{print $2}') | grep -E '/debian/?$' | head -1)}
	mirror=${mirror:-http://deb.debian.org/debian}
	echo "== debootstrap $SUITE from $mirror into $BASE (once)"
	t=$SECONDS
	rm -rf "$BASE.tmp" "$BASE" "$CACHE/$SUITE.stamp"
	debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$BASE.tmp" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
		{ tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
	mv "$BASE.tmp" "$BASE"
	echo "$stamp" >"$CACHE/$SUITE.stamp"
	echo "   debootstrap took $((SECONDS - t))s"
fi
exec 9>&-

# The throw-away root: an overlay when the kernel allows it here, else a copy.
OVERLAY=1
if ! unshare --mount --propagation private mount -t overlay overlay \
	-o "lowerdir=$BASE,upperdir=$WORK/upper,workdir=$WORK/work" "$ROOT" 2>/dev/null; then
	OVERLAY=0
	cp -a "$BASE/." "$ROOT/"
fi
export WORK ROOT BASE OVERLAY DEB DIRECT_PORT SOCK_PORT NEW_PORT

# --- 3. install, boot, test ---------------------------------------------------
echo "== install with dpkg -i (systemd not running)"
if unshare --mount --propagation private bash "$0" __install >"$WORK/install.log" 2>&1; then
	pass "dpkg -i $(basename "$DEB") in a fresh $SUITE root"
else
	fail "dpkg -i (log below)"
	cat "$WORK/install.log"
	echo "$passed passed, $failed failed"
	exit 1
fi

# A cgroup of our own on the host's cgroup2 hierarchy becomes the root of the
# namespace's: systemd manages that subtree and nothing else.
if [[ $(stat -f -c %T /sys/fs/cgroup) == cgroup2fs ]]; then
	cgroot=/sys/fs/cgroup
elif [[ $(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null) == cgroup2fs ]]; then
	cgroot=/sys/fs/cgroup/unified
else
	die "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"
fi
CG=$cgroot/rouse-test.$$
mkdir "$CG"

echo "== boot systemd as PID 1 of new namespaces"
t_boot=$SECONDS
(
	echo "$BASHPID" >"$CG/cgroup.procs"
	exec unshare --pid --fork --mount --propagation private --uts --ipc --net --cgroup \
		bash "$0" __boot
) </dev/null >"$WORK/boot.log" 2>&1 &
UNSHARE_PID=$!
for _ in $(seq 100); do
	PID1=$(cat "/proc/$UNSHARE_PID/task/$UNSHARE_PID/children" 2>/dev/null | awk '{print $1}')
	[[ -n $PID1 ]] && break
	sleep 0.1
done
[[ -n $PID1 ]] || { cat "$WORK/boot.log"; die "the namespace's init did not start"; }

# in_ns runs a command inside the namespaces and the root, as systemd sees it.
in_ns() {
	nsenter --target "$PID1" --all --root --wd -- \
		env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

# Wait for systemd to answer on its private socket.
state=""
for _ in $(seq 300); do
	state=$(in_ns systemctl is-system-running 2>/dev/null) && break
	case $state in starting | initializing | running | degraded) break ;; esac
	kill -0 "$PID1" 2>/dev/null || break
	sleep 0.1
done
if ! kill -0 "$PID1" 2>/dev/null || [[ -z $state ]]; then
	fail "systemd did not boot (log below)"
	cat "$WORK/boot.log"
	echo "$passed passed, $failed failed"
	exit 1
fi
pass "systemd $(in_ns systemctl --version | awk 'NR==1{print $2}') booted as PID 1 (in $((SECONDS - t_boot))s)"

unit_prop() { in_ns systemctl show -P "$1" "${2:-rouse.service}"; }
# fresh forgets rouse's recent starts: this test starts it more often than
# the start limit (5 in 10s) allows, and hitting the limit is not under test.
fresh() { in_ns systemctl reset-failed rouse.service rouse-echo-sock.socket; }

# probe PORT TAG: connect, send "TAG", print "BANNER|ECHO" (the echo
# backend's "NAME PID" banner, then our line back).
probe() {
	in_ns timeout 15 bash -c '
		exec 3<>/dev/tcp/127.0.0.1/$1 || exit 1
		echo "$2" >&3
		IFS= read -r banner <&3 && IFS= read -r echo <&3 && echo "$banner|$echo"' _ "$1" "$2"
}
# answers NAME PORT: the app NAME answers on PORT with its banner and echo.
answers() {
	local got tag="hello-$RANDOM"
	got=$(probe "$2" "$tag") || return 1
	[[ $got =~ ^$1\ [0-9]+\|$tag$ ]]
}
app_pid() { # app_pid NAME: the pid `rouse status --json` reports
	in_ns rouse status "$1" --json | sed -n 's/^ *"pid": *\([0-9]*\).*/\1/p' | head -1
}
no_app_process() { ! in_ns pgrep -f 'rouse __backend' >/dev/null; }

# rouse.service after boot. Type=notify: active only once rouse sent READY=1.
simple_override=0
for _ in $(seq 150); do
	st=$(unit_prop ActiveState)
	[[ $st == active || $st == failed ]] && break
	# rouse answers on its control socket but systemd still waits: READY=1
	# never came. Give it 3 more seconds to be sure.
	if [[ $st == activating ]] && in_ns rouse status >/dev/null 2>&1; then
		sleep 3
		st=$(unit_prop ActiveState)
		break
	fi
	sleep 0.1
done
if [[ $st == active ]]; then
	pass "rouse.service active after boot (Type=notify: READY=1 received)"
elif [[ $st == activating ]] && in_ns rouse status >/dev/null 2>&1; then
	fail "rouse.service stuck in 'activating': rouse runs and answers but never sent READY=1 (Type=notify)"
	note "continuing with a Type=simple drop-in in /run to test the rest"
	in_ns mkdir -p /run/systemd/system/rouse.service.d
	printf '[Service]\nType=simple\n' | in_ns tee /run/systemd/system/rouse.service.d/test-simple.conf >/dev/null
	in_ns systemctl daemon-reload
	in_ns systemctl restart rouse.service
	simple_override=1
	check "rouse.service active with Type=simple" test "$(unit_prop ActiveState)" = active
else
	fail "rouse.service is '$st' after boot"
	in_ns systemctl status --no-pager rouse.service
	in_ns journalctl --no-pager -b -u rouse.service | tail -30
	echo "$passed passed, $failed failed"
	exit 1
fi
in_ns systemctl is-system-running --wait >/dev/null 2>&1 || note "system state: $(in_ns systemctl is-system-running) (failed units: $(in_ns systemctl list-units --failed --plain --no-legend | awk '{print $1}' | xargs))"

wd_first=$(unit_prop WatchdogTimestampMonotonic)
v=$(in_ns rouse version | awk '{print $2}') pv=$(in_ns dpkg-query -W -f '${Version}' rouse)
id=$(grep -oE '[0-9a-f]{7,}' <<<"$v" | tail -1)
[[ -n $id ]] || { id=${v#v}; id=${id//-/\~}; }
check "rouse version ($v) matches the package's version ($pv)" test -n "$id" -a "${pv/"$id"/}" != "$pv"
check "/run/rouse is root:rouse 0750, control.sock root:rouse 0660" test \
	"$(in_ns stat -c '%U:%G:%a' /run/rouse /run/rouse/control.sock | xargs)" = "root:rouse:750 root:rouse:660"
check "a member of group rouse (alice) can run rouse status" quiet in_ns runuser -u alice -- rouse status
check "a user outside group rouse (nobody) cannot" not quiet in_ns runuser -u nobody -- rouse status

# --- the two apps
check "echo-direct (rouse binds 127.0.0.1:$DIRECT_PORT) answers, started on the first connection" answers echo-direct "$DIRECT_PORT"
check "echo-sock (rouse-echo-sock.socket, listen = systemd:echo-sock) answers" answers echo-sock "$SOCK_PORT"
for app in echo-direct echo-sock; do
	pid=$(app_pid "$app")
	uid=$(in_ns awk '/^Uid:/{print $2, $3, $4, $5}' "/proc/$pid/status" 2>/dev/null)
	gid=$(in_ns awk '/^Gid:/{print $2, $3, $4, $5}' "/proc/$pid/status" 2>/dev/null)
	check "$app (pid ${pid:-?}) runs as nobody: Uid $uid, Gid $gid" test "$uid|$gid" = "65534 65534 65534 65534|65534 65534 65534 65534"
done
cg=$(in_ns grep '^0::' "/proc/$(app_pid echo-sock)/cgroup")
check "apps run below rouse.service's cgroup ($cg)" test "${cg#0::/system.slice/rouse.service/}" != "$cg"

for _ in $(seq 100); do [[ $(unit_prop WatchdogTimestampMonotonic) != "$wd_first" ]] && break; sleep 0.1; done
check "watchdog armed (WatchdogSec=$(unit_prop WatchdogUSec)) and pinged by rouse" \
	test "$(unit_prop WatchdogTimestampMonotonic)" != "$wd_first"
check "systemctl status shows rouse's STATUS=: $(unit_prop StatusText)" test -n "$(unit_prop StatusText)"

# --- bash completion: verbs from `rouse help`, app names from the daemon
complete_line() { # complete_line WORD...: what <TAB> offers after "rouse WORD..."
	in_ns bash -c '
		source /usr/share/bash-completion/bash_completion
		source /usr/share/bash-completion/completions/rouse
		COMP_WORDS=(rouse "$@"); COMP_CWORD=$#
		COMP_LINE="rouse $*"; COMP_POINT=${#COMP_LINE}
		_rouse rouse "${!#}" "${COMP_WORDS[COMP_CWORD-1]}"
		echo "${COMPREPLY[*]}"' _ "$@"
}
got=$(complete_line st)
check "bash completion: rouse st<TAB> offers '$got'" test "$got" = "status start stop"
got=$(complete_line status "")
check "bash completion: rouse status <TAB> offers the apps: '$got'" test "$got" = "echo-direct echo-sock"

# --- journal: rouse logs each app line with SYSLOG_IDENTIFIER=APP
if in_ns journalctl --no-pager -b -t echo-direct | grep -q 'echo-direct: pid [0-9]* listening'; then
	pass "journalctl -t echo-direct shows the app's output"
elif in_ns journalctl --no-pager -b -u rouse.service | grep -Eq 'app=echo-direct.*listening|listening.*app=echo-direct'; then
	fail "journalctl -t echo-direct shows nothing: the app's lines are only in rouse's own log (app=echo-direct), no SYSLOG_IDENTIFIER=APP yet"
else
	fail "journalctl -t echo-direct shows nothing, and rouse's log does not have the app's lines either"
fi

# --- reload: SIGHUP re-reads the config in the same process; apps that did
# not change keep their process and sockets; a bad config changes nothing.
fresh
main=$(unit_prop MainPID) sock_pid=$(app_pid echo-sock)
in_ns sh -c "sed -e 's/echo-direct/echo-new/g' -e 's/:$DIRECT_PORT/:$NEW_PORT/' \
	/etc/rouse/apps.d/echo-direct.toml >/etc/rouse/apps.d/echo-new.toml"
if in_ns systemctl reload rouse.service 2>"$WORK/reload.err"; then
	for _ in $(seq 50); do answers echo-new "$NEW_PORT" && break; sleep 0.2; done
	st=$(unit_prop ActiveState) now=$(unit_prop MainPID)
	if [[ $st == active && $now == "$main" ]]; then
		pass "systemctl reload rouse: still active, same main pid $main"
		check "after the reload the added app echo-new answers" answers echo-new "$NEW_PORT"
		check "after the reload echo-sock answers from the same process (pid $sock_pid)" \
			test "$(probe "$SOCK_PORT" x | cut -d'|' -f1)" = "echo-sock $sock_pid"
	else
		fail "systemctl reload rouse: the SIGHUP ended rouse (does it handle SIGHUP yet?): rouse.service is now '$st', Result=$(unit_prop Result), main pid $main -> $now; last log lines: $(in_ns journalctl --no-pager -b -u rouse.service -n 3 -o cat | tr '\n' ' ')"
	fi
else
	fail "systemctl reload rouse: $(cat "$WORK/reload.err")"
fi
st=$(unit_prop ActiveState)
check "echo-sock answers after the reload" answers echo-sock "$SOCK_PORT"
[[ $st != active ]] && note "rouse.service was '$st' after the reload; that connection started it again (the socket unit activates rouse.service)"
fresh
in_ns systemctl start rouse.service
main=$(unit_prop MainPID)
in_ns sh -c 'printf "[apps.broken]\nno_such_key = 1\n" >/etc/rouse/apps.d/broken.toml'
if in_ns systemctl reload rouse.service 2>"$WORK/reload-bad.err"; then
	fail "systemctl reload with a broken app file succeeded"
else
	pass "systemctl reload with a broken app file fails (ExecReload=rouse reload)"
fi
journal=$(in_ns journalctl --no-pager -b -u rouse.service)
check "... the journal says why, with file:line: key" \
	test -n "$(grep -F 'broken.toml:2: apps.broken.no_such_key' <<<"$journal")"
check "... and rouse keeps running with the old config (main pid $main -> $(unit_prop MainPID))" \
	test "$(unit_prop ActiveState)/$(unit_prop MainPID)" = "active/$main"
in_ns rm -f /etc/rouse/apps.d/broken.toml

# --- restart: a connection made while rouse is down waits and is served.
# A connection held open keeps the old rouse draining (listeners closed,
# 'deactivating') for as long as we like; the second connection is made in
# that window and must be served by the new rouse once the first one closes.
fresh
main=$(unit_prop MainPID)
got=$(in_ns timeout 30 bash -c '
	exec 3<>/dev/tcp/127.0.0.1/$1 && IFS= read -r held <&3 || exit 1
	systemctl restart --no-block rouse.service
	while st=$(systemctl show -P ActiveState rouse.service); [ "$st" = active ]; do sleep 0.01; done
	exec 4<>/dev/tcp/127.0.0.1/$1 || exit 1
	echo during-restart >&4
	exec 3>&-
	IFS= read -r banner <&4 && IFS= read -r echo <&4 && echo "$st|$held|$banner|$echo"' _ "$SOCK_PORT")
if [[ $got =~ ^deactivating\|echo-sock\ ([0-9]+)\|echo-sock\ ([0-9]+)\|during-restart$ && ${BASH_REMATCH[1]} != "${BASH_REMATCH[2]}" ]]; then
	pass "a connection made while rouse restarts (old one draining) is served by the new one: echo-sock pid ${BASH_REMATCH[1]} -> ${BASH_REMATCH[2]}"
else
	fail "a connection made while rouse restarts: got '$got' (want deactivating|echo-sock OLD|echo-sock NEW|during-restart)"
fi
for _ in $(seq 100); do [[ $(unit_prop ActiveState) == active ]] && break; sleep 0.1; done
check "rouse.service active again after restart, new main pid ($main -> $(unit_prop MainPID))" \
	test "$(unit_prop ActiveState)" = active -a "$(unit_prop MainPID)" != "$main"
check "echo-sock answers after the restart" answers echo-sock "$SOCK_PORT"

# --- crash: rouse killed by SIGKILL takes its apps along and is restarted
fresh
answers echo-direct "$DIRECT_PORT" >/dev/null && answers echo-sock "$SOCK_PORT" >/dev/null
main=$(unit_prop MainPID)
old_apps=$(in_ns pgrep -f 'rouse __backend' | xargs)
in_ns systemctl kill --signal=SIGKILL --kill-whom=main rouse.service
for _ in $(seq 150); do
	now=$(unit_prop MainPID)
	[[ $(unit_prop ActiveState) == active && $now != 0 && $now != "$main" ]] && break
	sleep 0.1
done
left=$(for p in $old_apps; do in_ns test -e "/proc/$p" && echo "$p"; done)
check "rouse killed with SIGKILL: none of its apps ($old_apps) survives${left:+; left: $left}" test -z "$left"
check "... and Restart=on-failure starts it again (main pid $main -> $(unit_prop MainPID))" \
	test "$(unit_prop ActiveState)" = active -a "$(unit_prop MainPID)" != "$main"
check "echo-sock answers after the crash" answers echo-sock "$SOCK_PORT"

# --- upgrade: dpkg -i again restarts rouse (postinst, deb-systemd-invoke)
fresh
main=$(unit_prop MainPID)
in_ns sh -c 'cat >/tmp/rouse.deb' <"$DEB"
if in_ns dpkg -i /tmp/rouse.deb >"$WORK/upgrade.log" 2>&1; then
	for _ in $(seq 100); do [[ $(unit_prop ActiveState) == active ]] && break; sleep 0.1; done
	check "dpkg -i over the installed package restarts rouse (main pid $main -> $(unit_prop MainPID))" \
		test "$(unit_prop ActiveState)" = active -a "$(unit_prop MainPID)" != "$main"
else
	fail "dpkg -i over the installed package: $(tail -5 "$WORK/upgrade.log")"
fi
in_ns rm -f /tmp/rouse.deb

# --- FDSTORE: restarts and upgrades drop nothing. rouse keeps the sockets it
# binds in systemd's file descriptor store (FileDescriptorStoreMax=) and takes
# them back by name, so clients that come while it restarts wait in the
# kernel's backlog. A bounded loop of requests (HTTP to web-direct, the echo
# protocol to echo-direct, both on sockets rouse binds itself) runs through a
# restart and through the upgrade to a higher version, and counts errors.
WEB_PORT=17004
fresh
in_ns systemctl start rouse.service
printf '[apps.web-direct]\nmode = "http"\nlisten = ["127.0.0.1:%s"]\ncommand = ["/usr/bin/rouse", "__backend", "-name", "web-direct", "-listen", "127.0.0.1:{port}"]\nuser = "nobody"\n' "$WEB_PORT" |
	in_ns sh -c 'cat >/etc/rouse/apps.d/web-direct.toml'
in_ns systemctl reload rouse.service
stored() { unit_prop NFileDescriptorStore; }
# flow: requests one after the other until /run/flow.stop exists (60 s at
# most); prints "OK ERRORS" and, on stderr, what each error was.
flow() {
	in_ns timeout 120 bash -c '
		ok=0 err=0 end=$((SECONDS + 60))
		while [ ! -e /run/flow.stop ] && [ $SECONDS -lt $end ]; do
			if got=$( (exec 3<>/dev/tcp/127.0.0.1/$1 && printf "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n" >&3 &&
				IFS= read -r -t 30 line <&3 && echo "$line") 2>&1) && [[ $got == "HTTP/1."?" 200 "* ]]; then
				ok=$((ok + 1))
			else
				err=$((err + 1)); echo "http: ${got:-no answer}" >&2
			fi
			if got=$( (exec 3<>/dev/tcp/127.0.0.1/$2 && IFS= read -r -t 30 banner <&3 && echo flow >&3 &&
				IFS= read -r -t 30 line <&3 && echo "$line") 2>&1) && [[ $got == flow ]]; then
				ok=$((ok + 1))
			else
				err=$((err + 1)); echo "tcp: ${got:-no answer}" >&2
			fi
		done
		echo "$ok $err"' _ "$WEB_PORT" "$DIRECT_PORT"
}
# through COMMAND...: runs the loop from 1 s before COMMAND until 1 s after
# rouse is active again; prints "OK ERRORS" (the errors in flow.err).
through() {
	in_ns rm -f /run/flow.stop
	flow >"$WORK/flow.out" 2>"$WORK/flow.err" &
	local pid=$!
	sleep 1 # requests before the command too
	"$@" >"$WORK/action.log" 2>&1 || echo "command failed: $(tail -3 "$WORK/action.log")" >>"$WORK/flow.err"
	for _ in $(seq 100); do [[ $(unit_prop ActiveState) == active ]] && break; sleep 0.1; done
	sleep 1
	in_ns touch /run/flow.stop
	wait "$pid"
	cat "$WORK/flow.out"
}
errors_seen() { [[ ${1:-x} == 0 ]] || echo ": $(head -5 "$WORK/flow.err" | tr '\n' ' ')"; }
got=$(in_ns timeout 15 bash -c 'exec 3<>/dev/tcp/127.0.0.1/$1 && printf "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n" >&3 && IFS= read -r l <&3 && echo "$l"' _ "$WEB_PORT")
check "web-direct (http, bound by rouse on 127.0.0.1:$WEB_PORT) answers: ${got%$'\r'}" test "${got%$'\r'}" = "HTTP/1.1 200 OK"
n=$(stored)
check "rouse keeps its 3 bound sockets in systemd's fd store (NFileDescriptorStore=$n)" test "$n" = 3

fresh
main=$(unit_prop MainPID)
read -r ok errs < <(through in_ns systemctl restart rouse.service)
check "requests through systemctl restart rouse: $ok served, ${errs:-?} errors (main pid $main -> $(unit_prop MainPID))$(errors_seen "$errs")" \
	test "${errs:-x}" = 0 -a "${ok:-0}" -gt 10 -a "$(unit_prop MainPID)" != "$main"
check "... and the store still holds 3 sockets (NFileDescriptorStore=$(stored))" test "$(stored)" = 3

# The upgrade: this package repacked with a higher version.
up=$WORK/upgrade
mkdir -p "$up" && dpkg-deb -R "$DEB" "$up/root"
upv="$(sed -n 's/^Version: //p' "$up/root/DEBIAN/control")+upgrade1"
sed -i "s/^Version: .*/Version: $upv/" "$up/root/DEBIAN/control"
dpkg-deb --root-owner-group -Zxz --build "$up/root" "$up/rouse.deb" >/dev/null
in_ns sh -c 'cat >/tmp/rouse-upgrade.deb' <"$up/rouse.deb"
fresh
main=$(unit_prop MainPID)
read -r ok errs < <(through in_ns dpkg -i /tmp/rouse-upgrade.deb)
check "requests through the upgrade to $upv (dpkg -i): $ok served, ${errs:-?} errors (main pid $main -> $(unit_prop MainPID))$(errors_seen "$errs")" \
	test "${errs:-x}" = 0 -a "${ok:-0}" -gt 10 -a "$(unit_prop MainPID)" != "$main" -a "$(in_ns dpkg-query -W -f '${Version}' rouse)" = "$upv"
in_ns rm -f /tmp/rouse-upgrade.deb

# An address gone from the config is closed and dropped from the store at
# the next start: it refuses, rather than queueing for nobody.
in_ns rm /etc/rouse/apps.d/echo-new.toml
fresh
in_ns systemctl restart rouse.service
check "after removing echo-new and a restart, the store holds 2 sockets (NFileDescriptorStore=$(stored))" test "$(stored)" = 2
check "... and echo-new's address refuses connections" not in_ns timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/$1' _ "$NEW_PORT"
check "... while echo-direct still answers" answers echo-direct "$DIRECT_PORT"
in_ns rm /etc/rouse/apps.d/web-direct.toml
in_ns systemctl reload rouse.service
check "removing web-direct by a reload drops its socket from the store at once (NFileDescriptorStore=$(stored))" test "$(stored)" = 1

# --- stop: open connections drain, then no app process is left, and rouse
# stopped the apps itself
fresh
answers echo-sock "$SOCK_PORT" >/dev/null && answers echo-direct "$DIRECT_PORT" >/dev/null
n=$(in_ns pgrep -c -f 'rouse __backend')
since=$(in_ns date '+%Y-%m-%d %H:%M:%S')
got=$(in_ns timeout 30 bash -c '
	exec 3<>/dev/tcp/127.0.0.1/$1 || exit 1
	IFS= read -r banner <&3
	systemctl stop --no-block rouse.service
	while [ "$(systemctl show -P ActiveState rouse.service)" = active ]; do :; done
	sleep 0.5
	echo during-drain >&3
	IFS= read -r echo <&3
	echo "$(systemctl show -P ActiveState rouse.service)|$echo"' _ "$DIRECT_PORT")
check "a connection open at systemctl stop is still served while rouse drains ($got)" test "$got" = "deactivating|during-drain"
for _ in $(seq 300); do [[ $(unit_prop ActiveState) == inactive ]] && break; sleep 0.1; done
check "systemctl stop rouse leaves no app process (there were $n)" no_app_process
procs=$(in_ns cat /sys/fs/cgroup/system.slice/rouse.service/cgroup.procs 2>/dev/null)
check "rouse.service's cgroup is empty" test -z "$procs"
killed=$(in_ns journalctl --no-pager -u rouse.service --since "$since" | grep -E 'Killing process|remains running|SIGKILL' || true)
check "rouse stopped its apps itself: systemd had nothing to kill${killed:+: $killed}" test -z "$killed"
check "rouse exited 0 on SIGTERM (Result=$(unit_prop Result))" test "$(unit_prop Result)" = success

# --- purge
fresh
in_ns systemctl start rouse.service
if in_ns dpkg --purge rouse >"$WORK/purge.log" 2>&1; then
	pass "dpkg --purge rouse"
else
	fail "dpkg --purge rouse: $(tail -5 "$WORK/purge.log")"
fi
check "after purge: rouse stopped, no app process" test "$(unit_prop ActiveState)" = inactive
no_app_process || fail "after purge: app processes left"
check "after purge: /etc/rouse is gone" in_ns test ! -e /etc/rouse
check "after purge: rouse.service is not found" test "$(unit_prop LoadState)" = not-found
left=$(in_ns find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked \
	-name 'rouse.service*' 2>/dev/null)
check "after purge: no enablement symlink or deb-systemd-helper state${left:+: $left}" test -z "$left"
check "after purge: no file of the package left in /usr, /lib, /run" \
	in_ns sh -c '! test -e /usr/bin/rouse -o -e /usr/share/doc/rouse -o -e /lib/systemd/system/rouse.service -o -e /run/rouse'
check "after purge: the system user rouse stays (policy)" quiet in_ns getent passwd rouse
# --- install on a running system, as the README says (apt install ./FILE)
in_ns sh -c 'cat >/tmp/rouse.deb' <"$DEB"
if in_ns apt-get install -y -q /tmp/rouse.deb >"$WORK/apt.log" 2>&1; then
	for _ in $(seq 100); do [[ $(unit_prop ActiveState) == active ]] && break; sleep 0.1; done
	check "apt install ./rouse.deb on a running system: rouse.service $(unit_prop UnitFileState) and $(unit_prop ActiveState)" \
		test "$(unit_prop UnitFileState)/$(unit_prop ActiveState)" = enabled/active
else
	fail "apt install ./rouse.deb on a running system: $(tail -5 "$WORK/apt.log")"
fi

# --- containment (issue 15): rouse runs in rouse.service/supervisor, each
# app in a cgroup of its own beside it with its limits, and a daemon an app
# starts with setsid (double fork) is gone once the app stops or rouse dies.
DAEMON_PORT=17004
fresh
in_ns sh -c "cat >/etc/rouse/apps.d/contain.toml" <<EOF
[apps.daemon]
mode = "tcp"
listen = ["127.0.0.1:$DAEMON_PORT"]
command = "(setsid sleep 1004 </dev/null >/dev/null 2>&1 &); exec /usr/bin/rouse __backend -name daemon -proto echo -banner -listen 127.0.0.1:{port}"
user = "nobody"
memory_max = "256MiB"
tasks_max = 64
cpu_max = "50%"
EOF
in_ns systemctl reload rouse.service || fail "systemctl reload with apps.d/contain.toml"
main=$(unit_prop MainPID)
check "Delegate=yes on rouse.service" test "$(unit_prop Delegate)" = yes
check "rouse (pid $main) runs in rouse.service/supervisor" \
	test "$(in_ns grep '^0::' "/proc/$main/cgroup")" = "0::/system.slice/rouse.service/supervisor"
check "the app daemon answers" answers daemon "$DAEMON_PORT"
pid=$(app_pid daemon)
cg=$(in_ns grep '^0::' "/proc/$pid/cgroup")
cg=${cg#0::}
daemon=$(in_ns pgrep -x -f 'sleep 1004')
check "app daemon (pid $pid) runs in a cgroup of its own below rouse.service ($cg)" \
	grep -qxE '/system.slice/rouse.service/app-daemon\.[0-9]+' <<<"$cg"
check "its setsid daemon (pid ${daemon:-none}) is in the same cgroup" \
	test -n "$daemon" -a "$(in_ns grep '^0::' "/proc/${daemon:-0}/cgroup")" = "0::$cg"
# Limits where systemd delegated the controller (the host's cgroup2 may
# have none, e.g. a hybrid layout); else rouse says it did not apply them.
ctrl=$(in_ns cat /sys/fs/cgroup/system.slice/rouse.service/cgroup.subtree_control 2>/dev/null)
for lim in "memory_max memory memory.max 268435456" "tasks_max pids pids.max 64" "cpu_max cpu cpu.max 50000 100000"; do
	read -r key c file want <<<"$lim"
	if grep -qw "$c" <<<"$ctrl"; then
		got=$(in_ns cat "/sys/fs/cgroup$cg/$file" 2>&1)
		check "$key applied: $file = $got" test "$got" = "$want"
	else
		check "$key: no $c controller delegated here, and rouse warns that it is not applied" \
			quiet in_ns sh -c "journalctl --no-pager -o cat -u rouse.service KEY=$key | grep -q 'limit not applied'"
	fi
done
in_ns rouse stop daemon --control /run/rouse/control.sock >/dev/null || fail "rouse stop daemon"
for _ in $(seq 50); do in_ns test -e "/proc/${daemon:-0}" || break; sleep 0.1; done
check "rouse stop daemon: its setsid daemon is gone too" not in_ns test -e "/proc/${daemon:-0}"
check "... and the app's cgroup is removed" not in_ns test -e "/sys/fs/cgroup$cg"
answers daemon "$DAEMON_PORT" >/dev/null
daemon=$(in_ns pgrep -x -f 'sleep 1004')
in_ns systemctl kill --signal=SIGKILL --kill-whom=main rouse.service
for _ in $(seq 50); do in_ns test -e "/proc/${daemon:-0}" || break; sleep 0.1; done
check "rouse SIGKILLed: its setsid daemon (pid ${daemon:-none}) is gone" \
	test -n "$daemon" -a "$(in_ns test -e "/proc/${daemon:-0}" && echo alive)" = ""
for _ in $(seq 150); do [[ $(unit_prop ActiveState) == active ]] && break; sleep 0.1; done
left=$(in_ns find /sys/fs/cgroup/system.slice/rouse.service -mindepth 1 -maxdepth 1 -type d -name 'app-daemon*' | xargs)
check "... and its cgroup is removed${left:+: left $left}" test -z "$left"

[[ $simple_override == 1 ]] && note "the checks after boot ran with Type=simple: rouse does not send READY=1 yet"

echo "   total $(elapsed)"
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]

#!/usr/bin/env bash
# build-deb.sh builds dist/rouse_VERSION_ARCH.deb from the work tree with
# dpkg-deb: `make deb` runs it. The package is reproducible: file times,
# owners and order come from SOURCE_DATE_EPOCH (default: the last commit's
# time) and the binary is built with -trimpath, so two builds of one commit
# with one Go version are byte for byte the same.
#
# The package is native, in Debian's terms: its packaging lives in rouse's
# own tree, so the version has no Debian revision and the changelog is
# changelog.gz. (A "-1" revision would make lintian ask for the ITP bug the
# first entry closes: initial-upload-closes-no-bugs.)
#
# Environment: GO (go), GOARCH (the host's), SOURCE_DATE_EPOCH,
# DEB_MAINTAINER (the Maintainer field), DIST (dist).
set -euo pipefail
cd "$(dirname "$0")/.."
pkg=packaging

GO=${GO:-go}
DIST=${DIST:-dist}
DEB_MAINTAINER=${DEB_MAINTAINER:-rouse developers <rouse@rouse.dev>}

die() { echo "build-deb: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null || die "dpkg-deb not found: build on Debian or Ubuntu"

# --- version ---------------------------------------------------------------
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
describe=$(git describe --tags --always --dirty)
date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d)

# debian_version maps `git describe` to an upstream version that sorts right:
#   v1.2.3 -> 1.2.3          v1.2.3-rc1 -> 1.2.3~rc1 (before 1.2.3)
#   v1.2.3-4-gabc1234 -> 1.2.3+git20260102.4.abc1234 (after 1.2.3)
#   no tag: 0.0~git20260102.57.abc1234 (57 commits in all)
# and a dirty tree adds +dirty. The commit counts keep two builds of one day
# in order, so installing the newer one is an upgrade.
debian_version() {
	local d dirty="" v
	if ! d=$(git describe --tags --dirty 2>/dev/null); then
		git diff --quiet HEAD -- 2>/dev/null || dirty=+dirty
		echo "0.0~git$date.$(git rev-list --count HEAD).$(git rev-parse --short HEAD)$dirty"
		return
	fi
	if [[ $d == *-dirty ]]; then d=${d%-dirty} dirty=+dirty; fi
	if [[ $d =~ ^v?([0-9][0-9A-Za-z.~-]*)-([0-9]+)-g([0-9a-f]+)$ ]]; then
		v="${BASH_REMATCH[1]//-/\~}+git$date.${BASH_REMATCH[2]}.${BASH_REMATCH[3]}"
	elif [[ $d =~ ^v?([0-9][0-9A-Za-z.~-]*)$ ]]; then
		v=${BASH_REMATCH[1]//-/\~}
	else
		die "cannot map the tag in '$d' to a Debian version: want vX.Y.Z"
	fi
	echo "$v$dirty"
}
version=$(debian_version)

goarch=${GOARCH:-$($GO env GOARCH)}
case $goarch in
	amd64 | arm64 | s390x | riscv64) arch=$goarch ;;
	386) arch=i386 ;;
	arm) arch=armhf; export GOARM=${GOARM:-7} ;;
	ppc64le) arch=ppc64el ;;
	*) die "no Debian architecture for GOARCH=$goarch" ;;
esac

# --- stage the tree --------------------------------------------------------
stage=$(mktemp -d "${TMPDIR:-/tmp}/rouse-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/root
doc=$root/usr/share/doc/rouse
umask 022
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
	"$root/etc/rouse/apps.d" "$root/usr/share/man/man5" "$root/usr/share/man/man8" \
	"$root/usr/share/bash-completion/completions" "$root/usr/share/lintian/overrides" \
	"$doc/examples/apps.d"

# The version the binary reports is git's, as `make build` sets it.
CGO_ENABLED=0 GOOS=linux GOARCH=$goarch \
	$GO build -trimpath -ldflags "-s -w -X main.version=$describe" \
	-o "$root/usr/bin/rouse" ./cmd/rouse

# Every Go module linked into the binary must have its license in copyright.
while read -r mod; do
	grep -Eq "^(Files:)? $mod/\*" "$pkg/debian/copyright" ||
		die "$mod is linked into rouse but not listed in $pkg/debian/copyright"
done < <($GO version -m "$root/usr/bin/rouse" | awk '$1 == "dep" { print $2 }')

install -m 0644 "$pkg/systemd/rouse.service" "$root/lib/systemd/system/"
install -m 0644 "$pkg/etc/rouse.toml" "$root/etc/rouse/rouse.toml"
install -m 0644 "$pkg/completion/rouse.bash" "$root/usr/share/bash-completion/completions/rouse"
install -m 0644 "$pkg/debian/lintian-overrides" "$root/usr/share/lintian/overrides/rouse"
install -m 0644 "$pkg/debian/copyright" "$doc/copyright"
install -m 0644 examples/rouse.toml "$doc/examples/rouse.toml"
install -m 0644 examples/apps.d/*.toml "$pkg"/examples/apps.d/*.toml "$doc/examples/apps.d/"
install -m 0644 "$pkg/examples/rouse-example.socket" "$doc/examples/"

mandate=$(LC_ALL=C date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
for page in rouse.8 rouse.toml.5; do
	sed -e "s/@DATE@/$mandate/" -e "s/@VERSION@/$version/" "$pkg/man/$page" |
		gzip -9n >"$root/usr/share/man/man${page##*.}/$page.gz"
done

# A changelog entry for this build, as dch would write it.
{
	echo "rouse ($version) unstable; urgency=medium"
	echo
	echo "  * Build of $describe ($(git log -1 --format=%h)); the history is in git."
	echo
	echo " -- $DEB_MAINTAINER  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"

# --- control files ---------------------------------------------------------
for s in postinst prerm postrm; do
	install -m 0755 "$pkg/debian/$s" "$root/DEBIAN/$s"
done
(cd "$root" && find etc -type f | LC_ALL=C sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"
chmod 0644 "$root/DEBIAN/conffiles"
# md5sums of everything but the conffiles, as dh_md5sums does.
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print |
	sed 's|^\./||' | LC_ALL=C sort | xargs -d '\n' md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"
size=$(du -k -s --apparent-size --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$size/" \
	-e "s|@MAINTAINER@|$DEB_MAINTAINER|" "$pkg/debian/control.in" >"$root/DEBIAN/control"
chmod 0644 "$root/DEBIAN/control"

# --- build -----------------------------------------------------------------
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$DIST"
out="$DIST/rouse_${version}_$arch.deb"
rm -f "$DIST"/rouse_*_"$arch".deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "$out"

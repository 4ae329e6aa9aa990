#!/bin/bash
# Builds the Debian packages from a copy of the source tree, so that debian/rules clean
# never touches the working tree's build/ and the results stay inside build/.
# Usage: packaging/build-deb.sh ARCH OUTDIR   (run from the top of the source tree)
# OUTDIR gets edged_VERSION_ARCH.deb, edge-aggregator_... (when aggregator/main.c exists),
# the -dbgsym packages, .buildinfo and .changes.
set -euo pipefail
arch=$1 out=$2
host=$(dpkg --print-architecture)

version=$(sed -n 's/^#define EDGED_VERSION "\(.*\)"$/\1/p' common/version.h)
deb_version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
if [ "${deb_version%%-*}" != "$version" ]; then
	echo "build-deb: common/version.h says $version but packaging/debian/changelog says" \
		"$deb_version: add a changelog entry (dch -v $version)" >&2
	exit 1
fi

stage=$out/edged-$version
rm -rf "$out"
mkdir -p "$stage"
tar -c --exclude=./build --exclude=./.git --exclude=./debian . | tar -x -C "$stage"
cp -r packaging/debian "$stage/debian"

if [ ! -e aggregator/main.c ]; then
	# No server yet: build the edged package only.
	awk 'BEGIN { RS = ""; ORS = "\n\n" } !/^Package: edge-aggregator\n/' \
		packaging/debian/control > "$stage/debian/control"
	rm -f "$stage"/debian/edge-aggregator.*
	echo "build-deb: aggregator/main.c does not exist yet: no edge-aggregator package"
elif [ -e docs/edge-aggregator.8 ]; then
	echo usr/share/man/man8/edge-aggregator.8 >> "$stage/debian/edge-aggregator.install"
else
	# Added only while the page is missing, so it disappears by itself when it lands.
	cat > "$stage/debian/edge-aggregator.lintian-overrides" <<-'OVERRIDE'
	# docs/edge-aggregator.8 is being written together with the server in aggregator/;
	# until it lands the program documents itself with --help. packaging/build-deb.sh
	# writes this override only while docs/edge-aggregator.8 does not exist.
	edge-aggregator: no-manual-page [usr/sbin/edge-aggregator]
	OVERRIDE
	echo "build-deb: docs/edge-aggregator.8 does not exist yet: edge-aggregator ships without a man page"
fi

opts=(-b -us -uc -J"$(nproc)")
[ "$arch" = "$host" ] || opts+=(-a"$arch")
echo "build-deb: dpkg-buildpackage ${opts[*]} in $stage"
(cd "$stage" && dpkg-buildpackage "${opts[@]}")
ls -l "$out"/*.deb

#!/bin/bash
# Tests the Debian packages built by "make deb" on this machine: lintian, install, the
# files and users they bring, the programs, the installed units, an upgrade that keeps the
# administrator's configuration and the state, remove, and a purge that leaves nothing.
# Usage: packaging/check-deb.sh DEB_DIR   (as root; PID 1 need not be systemd)
# Ends with one "N passed, N failed" line. Leaves the packages purged, whatever happens.
set -u
dir=$1
passed=0 failed=0
tmp=$(mktemp -d)
pkgs=()

ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
check() { # check DESCRIPTION COMMAND...: passes when COMMAND succeeds; output on failure
	local what=$1
	shift
	if "$@" >"$tmp/out" 2>&1; then ok "$what"; else bad "$what"; sed 's/^/     /' "$tmp/out"; fi
}
check_show() { # check_show DESCRIPTION COMMAND...: the same, with the output in any case
	local what=$1
	shift
	if "$@" >"$tmp/out" 2>&1; then ok "$what"; else bad "$what"; fi
	sed 's/^/     /' "$tmp/out"
}
absent() { # absent PATH...: none of them exists
	local p
	for p in "$@"; do
		if [ -e "$p" ] || [ -L "$p" ]; then bad "gone after purge: $p"; else ok "gone after purge: $p"; fi
	done
}
purge_all() {
	local p
	for p in edge-aggregator edged; do
		if dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qv '^not-installed$'; then
			dpkg --purge "$p" >/dev/null 2>&1
		fi
	done
}
# a process whose executable is the installed daemon or server
running() {
	local p e
	for p in /proc/[0-9]*; do
		e=$(readlink "$p/exe" 2>/dev/null) || continue
		case $e in /usr/sbin/edged | /usr/sbin/edge-aggregator) return 0 ;; esac
	done
	return 1
}
cleanup() {
	purge_all
	rm -rf "$tmp"
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then
	echo "check-deb: needs root (dpkg -i); skipped"
	exit 77
fi
arch=$(dpkg --print-architecture)
version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
edged_deb=$dir/edged_${version}_$arch.deb
agg_deb=$dir/edge-aggregator_${version}_$arch.deb
[ -e "$edged_deb" ] || { echo "check-deb: $edged_deb missing (make deb)"; exit 1; }
pkgs=("$edged_deb")
[ -e "$agg_deb" ] && pkgs+=("$agg_deb")
have_agg_man=no
dpkg-deb -c "$agg_deb" 2>/dev/null | grep -q 'man8/edge-aggregator.8' && have_agg_man=yes

echo "=== lintian"
if lintian --fail-on error,warning "$dir"/edged_"${version}"_"$arch".changes >"$tmp/lintian" 2>&1; then
	ok "lintian: no errors, no warnings"
else
	bad "lintian"
fi
sed 's/^/     /' "$tmp/lintian"

echo "=== install"
purge_all
check "dpkg -i ${pkgs[*]##*/}" dpkg -i "${pkgs[@]}"
for f in /usr/sbin/edged /usr/bin/edgectl /lib/systemd/system/edged.service \
	/usr/lib/sysusers.d/edged.conf /usr/lib/tmpfiles.d/edged.conf /etc/edged/edged.conf \
	/usr/share/man/man8/edged.8.gz /usr/share/man/man1/edgectl.1.gz \
	/usr/share/man/man5/edged.conf.5.gz /usr/share/bash-completion/completions/edgectl \
	/usr/share/doc/edged/copyright; do
	check "installed: $f" test -s "$f"
done
check "installed: /etc/edged/edged.conf.d/" test -d /etc/edged/edged.conf.d
check "/etc/edged/edged.conf is a conffile" \
	sh -c "dpkg-query -W -f='\${Conffiles}' edged | grep -q '^ /etc/edged/edged.conf '"
check "user and group edged (sysusers)" sh -c 'getent passwd edged && getent group edged'
check "/var/lib/edged 0750 edged:edged (tmpfiles)" \
	sh -c '[ "$(stat -c "%a %U %G" /var/lib/edged)" = "750 edged edged" ]'
check "/var/lib/edged/data exists (tmpfiles)" test -d /var/lib/edged/data
check "edged.service enabled (deb-systemd-helper)" \
	test -L /etc/systemd/system/multi-user.target.wants/edged.service
if [ -d /run/systemd/system ]; then
	check "edged.service started by the postinst (systemd is PID 1)" systemctl is-active edged
elif running; then
	bad "nothing started without systemd as PID 1 (deb-systemd-invoke)"
else
	ok "nothing started without systemd as PID 1 (deb-systemd-invoke)"
fi
check "edged --version says $version" sh -c "/usr/sbin/edged --version | grep -qx 'edged $version'"
check "edgectl --help" /usr/bin/edgectl --help
check "edgectl --version" /usr/bin/edgectl --version
check "man edged.conf finds the page" sh -c 'man -w edged.conf | grep -q man5/edged.conf.5'
# the shipped configuration parses with every key uncommented (the defaults are real values)
sed 's/^#\([A-Za-z]*=\)/\1/' /etc/edged/edged.conf >"$tmp/edged.conf"
# run as the service's user: root would drop CAP_DAC_OVERRIDE with the rest after loading
# the eBPF monitor, and then could not read /var/lib/edged/data (0750 edged)
chmod 0755 "$tmp"
install -d -o edged -g edged "$tmp/run"
check "every default in /etc/edged/edged.conf parses (edged --run-seconds 1 as user edged)" \
	timeout 60 runuser -u edged -- /usr/sbin/edged --config "$tmp/edged.conf" \
	--state-dir "$tmp/run/state" --control "$tmp/run/control" --run-seconds 1
units=(/lib/systemd/system/edged.service:2.0)
if [ -e "$agg_deb" ]; then
	check "installed: /usr/sbin/edge-aggregator" test -x /usr/sbin/edge-aggregator
	check "installed: /etc/default/edge-aggregator (conffile)" \
		sh -c "dpkg-query -W -f='\${Conffiles}' edge-aggregator | grep -q '^ /etc/default/edge-aggregator '"
	check "user edge-aggregator (sysusers)" getent passwd edge-aggregator
	check "/var/lib/edge-aggregator (tmpfiles)" \
		sh -c '[ "$(stat -c "%a %U" /var/lib/edge-aggregator)" = "750 edge-aggregator" ]'
	check "edge-aggregator --help" /usr/sbin/edge-aggregator --help
	check "edge-aggregator init as its user (the unit's ConditionPathExists)" \
		runuser -u edge-aggregator -- /usr/sbin/edge-aggregator --store /var/lib/edge-aggregator \
		init --config tiny
	check "the store is /var/lib/edge-aggregator/aggregator.db" \
		test -s /var/lib/edge-aggregator/aggregator.db
fi

echo "=== installed units"
check_show "systemd-analyze verify + security edged.service" \
	packaging/check-units.sh /lib/systemd/system/edged.service:2.0
if [ -e "$agg_deb" ]; then
	check_show "systemd-analyze verify + security edge-aggregator.service" \
		packaging/check-units.sh $([ $have_agg_man = yes ] || echo --man=no) \
		/lib/systemd/system/edge-aggregator.service:1.2
fi

echo "=== upgrade"
# the same packages under a higher version: maintainer scripts run as for an upgrade
mkdir -p "$tmp/up"
for deb in "${pkgs[@]}"; do
	name=$(dpkg-deb -f "$deb" Package)
	dpkg-deb -R "$deb" "$tmp/up/$name"
	sed -i "s/^Version: .*/Version: ${version}+check1/" "$tmp/up/$name/DEBIAN/control"
	dpkg-deb -b "$tmp/up/$name" "$tmp/up/$name.deb" >/dev/null
done
echo "# changed by check-deb" >>/etc/edged/edged.conf
echo "[Policy]" >/etc/edged/edged.conf.d/50-check.conf
echo "training text" >/var/lib/edged/data/check.txt
check "dpkg -i (upgrade to ${version}+check1)" \
	dpkg -i --force-confold "$tmp"/up/*.deb
check "upgrade keeps the changed /etc/edged/edged.conf" grep -q '^# changed by check-deb' /etc/edged/edged.conf
check "upgrade keeps drop-ins" test -e /etc/edged/edged.conf.d/50-check.conf
check "upgrade keeps /var/lib/edged/data" test -e /var/lib/edged/data/check.txt
check "edged --version after the upgrade" /usr/sbin/edged --version

echo "=== remove"
check "dpkg -r" dpkg -r edge-aggregator edged
check "remove takes the programs" sh -c '[ ! -e /usr/sbin/edged ] && [ ! -e /usr/bin/edgectl ]'
check "remove keeps the configuration" test -e /etc/edged/edged.conf
check "remove keeps the state" test -e /var/lib/edged/data/check.txt

echo "=== purge"
rm -f /etc/edged/edged.conf.d/50-check.conf # dpkg leaves directories with foreign files
check "dpkg --purge" dpkg --purge edge-aggregator edged
absent /usr/sbin/edged /usr/bin/edgectl /etc/edged /var/lib/edged /lib/systemd/system/edged.service \
	/usr/lib/sysusers.d/edged.conf /usr/lib/tmpfiles.d/edged.conf \
	/etc/systemd/system/multi-user.target.wants/edged.service \
	/var/lib/systemd/deb-systemd-helper-enabled/edged.service.dsh-also \
	/usr/share/doc/edged
if [ -e "$agg_deb" ]; then
	absent /usr/sbin/edge-aggregator /var/lib/edge-aggregator /etc/default/edge-aggregator \
		/lib/systemd/system/edge-aggregator.service \
		/etc/systemd/system/multi-user.target.wants/edge-aggregator.service
fi
check "dpkg knows neither package" \
	sh -c '! dpkg-query -W edged edge-aggregator 2>/dev/null | grep -q .'
if running; then bad "nothing of edged left running"; else ok "nothing of edged left running"; fi

echo
echo "check-deb: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

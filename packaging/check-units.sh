#!/bin/bash
# Verifies systemd units and bounds their exposure.
# Usage: packaging/check-units.sh [--man=no] UNIT_FILE:MAX_EXPOSURE...
# systemd-analyze verify exits 0 on invalid values, so any output it prints is a failure;
# systemd-analyze security --threshold= takes 0-100, ten times the printed exposure.
set -u
man=--man=yes
if [ "${1:-}" = --man=no ]; then
	man=--man=no
	shift
fi
fail=0
for spec in "$@"; do
	unit=${spec%:*} max=${spec##*:}
	name=${unit##*/}
	out=$(systemd-analyze verify "$man" "$unit" 2>&1)
	rc=$?
	if [ $rc -ne 0 ] || [ -n "$out" ]; then
		echo "$name: systemd-analyze verify (exit $rc):"
		echo "$out"
		fail=1
	else
		echo "$name: systemd-analyze verify: clean"
	fi
	threshold=$(awk -v m="$max" 'BEGIN { printf "%d", m * 10 + 0.5 }')
	sec=$(systemd-analyze security --offline=yes --threshold="$threshold" "$unit" 2>&1)
	rc=$?
	level=$(printf '%s\n' "$sec" | sed -n 's/^→ Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
	if [ $rc -ne 0 ] || [ -z "$level" ]; then
		printf '%s\n' "$sec" | grep -E '✗|Overall'
		echo "$name: exposure ${level:-?} is above $max (or the analysis failed)"
		fail=1
	else
		echo "$name: exposure $level (at most $max)"
	fi
done
exit $fail

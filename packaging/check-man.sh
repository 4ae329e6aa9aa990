#!/bin/bash
# Man pages render without a groff warning (as lintian checks them) and have a NAME line
# that lexgrog (mandb, whatis, apropos) can parse. Usage: packaging/check-man.sh PAGE...
set -u
fail=0
for page in "$@"; do
	warn=$(LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 \
		man --warnings -E UTF-8 -l -Tutf8 -Z "$page" 2>&1 >/dev/null)
	if [ -n "$warn" ]; then
		echo "$page: man --warnings:"
		echo "$warn"
		fail=1
	elif ! lexgrog "$page" >/dev/null 2>&1; then
		echo "$page: lexgrog cannot parse the NAME section"
		fail=1
	else
		echo "$page: clean ($(lexgrog "$page" | sed 's/^[^:]*: //'))"
	fi
done
exit $fail

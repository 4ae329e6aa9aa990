# make check-valgrind: valgrind memcheck on the daemon loop and on pure unit tests (issue 10).
# Included from the Makefile; uses its BUILD, PROGRAMS and test rules.
#
#   tests/valgrind-daemon   build/edged on a fake machine for VALGRIND_SECONDS while control
#                           requests keep coming, then SIGTERM (tiny model, so the training
#                           steps under valgrind stay short)
#   VALGRIND_UNIT_TESTS     each under memcheck; a definite leak or any error fails
#                           (test-aggregator: the server's and merger's threads too)
#
# Left out of the default list: test-checkpoint (more than 5 minutes under valgrind);
# test-codec (85 s) and test-aggregator-diskfull (root) for time, both clean; the BPF tests
# test-sense and test-monitor (valgrind does not know the bpf() attribute layouts and reports
# libbpf's syscalls, and their timing assertions fail at valgrind's speed).

VALGRIND ?= valgrind
VALGRIND_SECONDS ?= 120
VALGRIND_FLAGS ?= --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=1
VALGRIND_UNIT_TESTS ?= test-conf test-hash test-safetensors test-ctl-format test-stats \
	test-sensors test-control test-quant test-aggregator test-policy test-student test-idle-sched

.PHONY: check-valgrind check-valgrind-daemon check-valgrind-units check-lsan-daemon valgrind-deps

# like the fuzzing runtime: installed on first use, so a fresh machine needs nothing by hand
valgrind-deps:
	@command -v $(VALGRIND) >/dev/null 2>&1 || { echo "check-valgrind: installing valgrind"; \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y \
		--no-install-recommends valgrind; }

check-valgrind: check-valgrind-daemon check-valgrind-units

check-valgrind-daemon: $(BUILD)/edged $(BUILD)/edgectl | valgrind-deps
	@VALGRIND=$(VALGRIND) tests/valgrind-daemon $(BUILD) $(VALGRIND_SECONDS)

# The same scenario at full speed under LeakSanitizer (thousands of training steps where
# valgrind manages one or two): make SANITIZE=1 check-lsan-daemon
check-lsan-daemon: $(BUILD)/edged $(BUILD)/edgectl
	@$(if $(filter 1,$(SANITIZE)),,echo "check-lsan-daemon needs SANITIZE=1"; exit 2;) \
		VALGRIND=none tests/valgrind-daemon $(BUILD) $(VALGRIND_SECONDS)

# OpenBLAS settled in the environment: edged's re-exec through /proc/self/exe cannot work
# under valgrind (tests/valgrind-daemon says more).
check-valgrind-units: $(VALGRIND_UNIT_TESTS:%=$(BUILD)/tests/%) | valgrind-deps
	@failed=; for t in $(VALGRIND_UNIT_TESTS); do \
		log=$(BUILD)/tests/$$t.valgrind; \
		env -u OPENBLAS_CORETYPE -u EDGED_BLAS_CORETYPE OPENBLAS_THREAD_TIMEOUT=4 \
			EDGED_FIXTURES=tests/fixtures EDGED_BIN=$(BUILD)/edged \
			EDGECTL_BIN=$(BUILD)/edgectl \
			$(VALGRIND) $(VALGRIND_FLAGS) $(BUILD)/tests/$$t >$$log 2>&1; \
		rc=$$?; \
		printf '%-20s exit %d: %s; %s\n' $$t $$rc \
			"$$(grep -oE 'ERROR SUMMARY: [0-9,]+ errors' $$log | tail -n 1)" \
			"$$(grep -oE 'definitely lost: [0-9,]+ bytes|All heap blocks were freed' $$log | tail -n 1)"; \
		if [ $$rc -ne 0 ] && [ $$rc -ne 77 ]; then failed="$$failed $$t"; tail -n 40 $$log; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "check-valgrind: FAILED:$$failed"; exit 1; fi; \
	echo "check-valgrind: $(words $(VALGRIND_UNIT_TESTS)) unit tests clean under memcheck"

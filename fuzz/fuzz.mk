# libFuzzer harnesses (DESIGN.md §12), included from the Makefile.
#
#   make fuzz                    builds every fuzz/fuzz-*.c and runs each for FUZZ_SECONDS (30)
#   make fuzz FUZZ_TARGETS=conf  only some targets
#   make fuzz-regress            replays fuzz/regress/<target>/* (fixed crashes) once each
#
# Everything is built with clang and the sanitizers into $(BUILD)/fuzz, from the library
# sources compiled again with the same flags (never the normal libedge.a). The fuzzers run
# on a copy of fuzz/corpus/<target> in $(BUILD)/fuzz/corpus-work, so what they find does
# not grow the committed corpora; crashes land in $(BUILD)/fuzz/artifacts/<target>.

FUZZ_CC ?= clang-14
FUZZ_SECONDS ?= 30
FUZZ_RSS_MB ?= 2048
FUZZ_TIMEOUT ?= 10
FUZZ_ARGS ?=
FUZZ_SANITIZE := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_DIR := $(BUILD)/fuzz
FUZZ_SRCS := $(wildcard fuzz/fuzz-*.c)
FUZZ_ALL := $(FUZZ_SRCS:fuzz/fuzz-%.c=%)
FUZZ_TARGETS ?= $(FUZZ_ALL)
FUZZ_BINS := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz-%)

# The normal build (gcc) is the one that enforces warnings: clang's -Wformat=2 also flags the
# log functions' vsnprintf, so warnings stay warnings here. The library objects get
# -fsanitize=fuzzer-no-link: coverage without a second main().
FUZZ_CFLAGS := $(filter-out -O% -MMD -MP -Werror,$(CFLAGS)) -O1 -g -fno-omit-frame-pointer \
	-Wno-format-nonliteral -Wno-unused-variable -Wno-unused-command-line-argument -MMD -MP
FUZZ_LIB_OBJS := $(LIB_SRCS:%.c=$(FUZZ_DIR)/obj/%.o)

.PHONY: fuzz fuzz-build fuzz-deps fuzz-regress fuzz-seeds

# A library source clang cannot build (gcc-only builtins) is left out with a warning rather
# than failing every harness: the archive only has to hold what the harnesses link, and a
# harness that needs the missing object fails at link time, naming it.
$(FUZZ_DIR)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined \
		-fno-sanitize-recover=undefined -c -o $@ $< 2>$@.err || \
		{ echo "  FUZZ    warning: $< does not build with $(FUZZ_CC), left out:"; \
		  grep -m1 'error:' $@.err; rm -f $@; }
	@rm -f $@.err

$(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(filter-out %.bpf.c,$(wildcard bpf/*.c))): $(BPF_SKELS)

$(FUZZ_DIR)/libedge-fuzz.a: $(FUZZ_LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $(wildcard $(FUZZ_LIB_OBJS))

$(FUZZ_DIR)/obj/fuzz/%.o: fuzz/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SANITIZE) -c -o $@ $<

$(FUZZ_DIR)/fuzz-%: $(FUZZ_DIR)/obj/fuzz/fuzz-%.o $(FUZZ_DIR)/libedge-fuzz.a
	$(FUZZ_CC) $(FUZZ_SANITIZE) -o $@ $^ $(LDLIBS)

# libFuzzer's runtime is not pulled in by Debian's clang package: install it when missing.
fuzz-deps:
	@dpkg -s libclang-rt-14-dev >/dev/null 2>&1 || \
		{ echo "fuzz: libFuzzer's runtime missing; installing libclang-rt-14-dev"; \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y \
			--no-install-recommends clang-14 libclang-rt-14-dev; }

$(FUZZ_BINS): | fuzz-deps

fuzz-build: $(FUZZ_BINS)

# Per target: a fresh copy of the seeds, N seconds, and the executions from libFuzzer's final
# stats. Any crash, leak or timeout fails the whole run after every target had its turn.
fuzz: fuzz-build
	@failed=; \
	for t in $(FUZZ_TARGETS); do \
		work=$(FUZZ_DIR)/corpus-work/$$t; art=$(FUZZ_DIR)/artifacts/$$t; \
		rm -rf $$work; mkdir -p $$work $$art; \
		if [ -d fuzz/corpus/$$t ]; then cp -R fuzz/corpus/$$t/. $$work/; fi; \
		log=$(FUZZ_DIR)/fuzz-$$t.log; \
		if $(FUZZ_DIR)/fuzz-$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=$(FUZZ_RSS_MB) \
			-timeout=$(FUZZ_TIMEOUT) -print_final_stats=1 -artifact_prefix=$$art/ \
			$(FUZZ_ARGS) $$work >$$log 2>&1; then st=ok; else st=FAILED; failed="$$failed $$t"; fi; \
		execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log | tail -n1); \
		printf '  FUZZ    %-12s %s executions in %s s: %s\n' $$t "$${execs:-?}" $(FUZZ_SECONDS) $$st; \
		if [ $$st = FAILED ]; then grep -E -B8 -A40 '^==[0-9]+== ?ERROR|runtime error|^SUMMARY' $$log | grep -v '^ *#[0-9]' | head -n 60; \
			ls $$art; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failed:$$failed (logs: $(FUZZ_DIR)/fuzz-<target>.log)"; exit 1; fi

# Inputs that once crashed, each run once; a target without a regress directory is skipped.
fuzz-regress: fuzz-build
	@failed=; \
	for t in $(FUZZ_TARGETS); do \
		[ -d fuzz/regress/$$t ] && [ -n "$$(ls -A fuzz/regress/$$t)" ] || continue; \
		if $(FUZZ_DIR)/fuzz-$$t -rss_limit_mb=$(FUZZ_RSS_MB) -timeout=$(FUZZ_TIMEOUT) \
			fuzz/regress/$$t/* >$(FUZZ_DIR)/regress-$$t.log 2>&1; then st=ok; \
		else st=FAILED; failed="$$failed $$t"; tail -n 40 $(FUZZ_DIR)/regress-$$t.log; fi; \
		printf '  REGRESS %-12s %s inputs: %s\n' $$t $$(ls fuzz/regress/$$t | wc -l) $$st; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz-regress: failed:$$failed"; exit 1; fi

-include $(shell find $(FUZZ_DIR)/obj -name '*.d' 2>/dev/null)

# Regenerates the generated seeds (safetensors files, update bodies) with the normal build.
$(FUZZ_DIR)/gen-seeds: fuzz/gen-seeds.c $(BUILD)/libedge.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

fuzz-seeds: $(FUZZ_DIR)/gen-seeds
	$(FUZZ_DIR)/gen-seeds fuzz/corpus
	chmod 644 fuzz/corpus/safetensors/*.safetensors

# edged — build, test, demo and benchmark. See README.md.
#
#   make demo        build, then a federated run on this machine: an aggregator and three devices
#   make check       build and run the test suite
#   make bench       training throughput, MFU and the PyTorch comparison
#   make fuzz        libFuzzer on every parser, FUZZ_SECONDS=N each (30); fuzz-regress replays
#                    the inputs of fixed crashes
#   SANITIZE=1       build with ASan + UBSan (into build/sanitize)
#   NATIVE=1         add -march=native (the default build runs on any x86-64 / aarch64)

.DEFAULT_GOAL := all

CC ?= cc
PKG_CONFIG ?= pkg-config
PYTHON ?= /usr/bin/python3

ifeq ($(SANITIZE),1)
BUILD ?= build/sanitize
else ifeq ($(NATIVE),1)
BUILD ?= build/native
else
BUILD ?= build
endif

# Debian packages the build and the tests need, and the pkg-config names that prove them.
DEB_PKGS := build-essential pkg-config libopenblas-dev libjansson-dev libcmocka-dev \
	clang llvm libbpf-dev bpftool libsystemd-dev liburing-dev \
	libzstd-dev libcurl4-openssl-dev libmicrohttpd-dev libsqlite3-dev libssl-dev
PC_PKGS := openblas jansson cmocka libbpf libsystemd liburing libzstd libcurl libmicrohttpd sqlite3 \
	libcrypto
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

PC_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PC_PKGS) 2>/dev/null)
PC_LIBS := $(shell $(PKG_CONFIG) --libs openblas jansson libbpf libsystemd liburing libzstd libcurl \
	libmicrohttpd sqlite3 libcrypto 2>/dev/null)
CMOCKA_LIBS := $(shell $(PKG_CONFIG) --libs cmocka 2>/dev/null)

WARNINGS := -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wstrict-prototypes -Wmissing-prototypes \
	-Wno-unused-parameter -Wformat=2 -Wvla
CFLAGS ?= -O2 -g
override CFLAGS += -std=gnu11 $(WARNINGS) -D_GNU_SOURCE -Icommon -Ikernels -Idaemon -Ictl -Iaggregator -Ibpf \
	-I$(BUILD)/bpf $(PC_CFLAGS) \
	-fno-strict-aliasing -MMD -MP
ifeq ($(NATIVE),1)
override CFLAGS += -march=native
endif
ifeq ($(SANITIZE),1)
override CFLAGS += -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
override LDFLAGS += -fsanitize=address,undefined
endif
LDLIBS := $(PC_LIBS) -lm -lpthread
# each program links only the libraries it uses from the shared list
override LDFLAGS += -Wl,--as-needed

MAIN_SRCS := daemon/main.c ctl/edgectl.c aggregator/main.c
LIB_SRCS := $(filter-out $(MAIN_SRCS),$(wildcard common/*.c kernels/*.c daemon/*.c ctl/*.c \
	aggregator/*.c)) \
	$(filter-out %.bpf.c,$(wildcard bpf/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
TEST_SRCS := $(wildcard tests/test-*.c)
TESTS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
BENCH_SRCS := $(wildcard bench/*.c)
BENCHES := $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%)
PROGRAMS := $(BUILD)/edged $(if $(wildcard ctl/edgectl.c),$(BUILD)/edgectl) \
	$(if $(wildcard aggregator/main.c),$(BUILD)/edge-aggregator)

# eBPF programs: compiled with clang for the BPF target against the running kernel's BTF
# (bpftool dumps it as vmlinux.h; without BTF the small vendored bpf/vmlinux-min.h serves,
# since CO-RE relocates every field access at load time), then wrapped in a libbpf
# skeleton header the loader includes.
BPFTOOL ?= $(or $(shell command -v bpftool 2>/dev/null),/usr/sbin/bpftool)
BPF_CLANG ?= clang
BPF_ARCH := $(shell $(CC) -dumpmachine 2>/dev/null | sed -e 's/^x86_64.*/x86/' -e 's/^arm.*/arm/' \
	-e 's/^aarch64.*/arm64/' -e 's/^riscv64.*/riscv/' -e 's/-.*//')
VMLINUX_BTF ?= /sys/kernel/btf/vmlinux
BPF_SRCS := $(wildcard bpf/*.bpf.c)
BPF_SKELS := $(BPF_SRCS:bpf/%.bpf.c=$(BUILD)/bpf/%.skel.h)

$(BUILD)/bpf/vmlinux.h:
	@mkdir -p $(dir $@)
	@if [ -r $(VMLINUX_BTF) ] && $(BPFTOOL) btf dump file $(VMLINUX_BTF) format c > $@.tmp 2>/dev/null; then \
		mv $@.tmp $@; echo "  GEN     $@ (from $(VMLINUX_BTF))"; \
	else \
		rm -f $@.tmp; cp bpf/vmlinux-min.h $@; echo "  GEN     $@ (no kernel BTF: vendored bpf/vmlinux-min.h)"; \
	fi

$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c $(BUILD)/bpf/vmlinux.h $(wildcard bpf/*.h)
	$(BPF_CLANG) -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_$(BPF_ARCH) -I$(BUILD)/bpf -Ibpf \
		-c $< -o $@

$(BUILD)/bpf/%.skel.h: $(BUILD)/bpf/%.bpf.o
	$(BPFTOOL) gen skeleton $< name $*_bpf > $@.tmp && mv $@.tmp $@

# every loader object may include any skeleton
$(patsubst %.c,$(BUILD)/obj/%.o,$(filter-out %.bpf.c,$(wildcard bpf/*.c))): $(BPF_SKELS)

.SECONDARY:
.PHONY: all check demo bench bench-harvest fuzz fuzz-regress fuzz-seeds deps ensure-deps format analyze clean run-tests run-demo \
	run-bench

all: $(PROGRAMS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

# The kernels are the hot path: full vectorisation; no trapping math so that clamps and
# selects in elementwise loops vectorise (edged never relies on FP exceptions).
$(BUILD)/obj/kernels/%.o: override CFLAGS += -O3 -fno-trapping-math
# The codec's error feedback must be exactly x - decoded(x): a fused multiply-add (aarch64,
# -march=haswell) would round once where the decoder rounds twice.
$(BUILD)/obj/common/update-codec.o: override CFLAGS += -ffp-contract=off

$(BUILD)/libedge.a: $(LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/edged: $(BUILD)/obj/daemon/main.o $(BUILD)/libedge.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/edgectl: $(BUILD)/obj/ctl/edgectl.o $(BUILD)/libedge.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/edge-aggregator: $(BUILD)/obj/aggregator/main.o $(BUILD)/libedge.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(BUILD)/libedge.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(CMOCKA_LIBS) $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(BUILD)/libedge.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Installs what the build and the tests need. demo and check call it only when a probe fails.
deps:
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $(DEB_PKGS)

ensure-deps:
	@if ! command -v $(CC) >/dev/null 2>&1 || ! command -v $(PKG_CONFIG) >/dev/null 2>&1 || \
	    ! $(PKG_CONFIG) --exists $(PC_PKGS); then \
		echo "edged: build dependencies missing; installing them (make deps)"; \
		$(MAKE) --no-print-directory deps; \
	fi

# The probe has to run before the flags above are computed, hence the second make.
check: ensure-deps
	@$(MAKE) --no-print-directory run-tests check-units check-man

demo: ensure-deps
	@$(MAKE) --no-print-directory run-demo

bench: ensure-deps
	@$(MAKE) --no-print-directory run-bench

# Time limits in the tests (never their measured bounds) stretch by this factor: the
# sanitizer build runs 2-4x slower. A slow machine may set it too.
TEST_TIME_FACTOR := $(or $(EDGED_TEST_TIME_FACTOR),$(if $(filter 1,$(SANITIZE)),4,1))

run-tests: $(PROGRAMS) $(TESTS)
	@EDGED_TEST_TIME_FACTOR=$(TEST_TIME_FACTOR) tests/run-tests $(BUILD) $(TESTS)

# The demo is a federated run on this machine: an embedded aggregator on 127.0.0.1 and three
# edged devices on fake machines (tests/fixtures/sysfs), each with a slice of the licence
# texts Debian ships, train one shared model; a line every few seconds shows its version and
# held-out loss, and what each device does. It stops by itself; then the shared model writes.
# DEMO=local runs a single daemon on this machine's real sensors instead (policy active).
DEMO ?= fleet
DEMO_DIR ?= $(BUILD)/demo
DEMO_DATA ?= /usr/share/common-licenses
DEMO_SECONDS ?= 120
run-demo: $(PROGRAMS)
ifeq ($(DEMO),local)
	@mkdir -p $(DEMO_DIR)
	@rm -rf $(DEMO_DIR)/state
	@printf '%s\n' '# make demo DEMO=local: a small model, a short idle window so it starts soon' \
		'[Policy]' 'IdleWindowSec=5' \
		'[Daemon]' 'DataDirectory=$(abspath $(DEMO_DATA))' 'Model=tiny' 'CheckpointIntervalSec=30' \
		> $(DEMO_DIR)/edged.conf
	$(BUILD)/edged --foreground --progress --config $(DEMO_DIR)/edged.conf \
		--state-dir $(DEMO_DIR)/state --control $(DEMO_DIR)/control --run-seconds $(DEMO_SECONDS)
	@echo "--- the model after $(DEMO_SECONDS) s, asked to continue 'The Licensee shall':"
	@$(BUILD)/edged sample --checkpoint $(DEMO_DIR)/state/checkpoint.safetensors --tokens 200 \
		--temperature 0.6 'The Licensee shall'
	@echo
else
	@tools/demo-fleet $(BUILD) $(DEMO_DIR) $(DEMO_SECONDS) $(DEMO_DATA)
endif

BENCH_ARGS ?=
# bench/train: training throughput and MFU; bench/monitor: the eBPF monitor's cost per
# context switch (needs root; says so and stops otherwise); bench/loader: data loader
# throughput and the share of step time spent waiting for data; bench/daemon: pause latency
# and what a paused daemon costs. BENCH=<name> runs one.
BENCH ?= train monitor loader daemon collab
BENCHES_RUN := $(filter-out $(BUILD)/bench/harvest,$(BENCHES))
run-bench: $(BENCHES_RUN)
	@for b in $(BENCH); do echo "=== bench/$$b"; $(BUILD)/bench/$$b $(BENCH_ARGS) || exit 1; done

# Is edged invisible? Foreground workloads alone, beside edged, beside a nice-19 trainer and
# beside edged without its interference brake (root; about 10 minutes). See bench/harvest.c.
HARVEST_ARGS ?=
bench-harvest: ensure-deps
	@$(MAKE) --no-print-directory $(BUILD)/bench/harvest $(PROGRAMS)
	$(BUILD)/bench/harvest $(HARVEST_ARGS)

format:
	@command -v clang-format >/dev/null || $(SUDO) apt-get install -y clang-format
	clang-format -i $(filter-out bpf/vmlinux-min.h,$(wildcard common/*.[ch] kernels/*.[ch] daemon/*.[ch] ctl/*.[ch] \
		aggregator/*.[ch] bpf/*.[ch] tests/*.[ch] bench/*.[ch]))

analyze: ensure-deps $(BPF_SKELS)
	@command -v cppcheck >/dev/null && command -v clang-tidy >/dev/null || \
		$(SUDO) apt-get install -y --no-install-recommends cppcheck clang-tidy
	@# cppcheck does not model __attribute__((cleanup)): every _cleanup_free_/_cleanup_fclose_
	@# would be a "leak". Leaks are checked by LeakSanitizer (SANITIZE=1) and valgrind instead.
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
		--suppress=memleak --suppress=resourceLeak \
		--inline-suppr --suppress=missingIncludeSystem -Icommon -Ikernels -Idaemon -Ictl -Iaggregator -Ibpf \
		--suppress=unknownMacro:bench/monitor.c $(LIB_SRCS) $(wildcard $(MAIN_SRCS)) $(TEST_SRCS) $(BENCH_SRCS)
	clang-tidy --quiet $(LIB_SRCS) $(wildcard $(MAIN_SRCS)) $(BENCH_SRCS) -- -std=gnu11 -D_GNU_SOURCE -Icommon -Ikernels \
		-Idaemon -Ictl -Iaggregator -Ibpf -I$(BUILD)/bpf $(PC_CFLAGS)

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# install, deb, check-deb: packaging/packaging.mk; fuzz, fuzz-regress: fuzz/fuzz.mk
-include packaging/packaging.mk
-include fuzz/fuzz.mk
-include tests/valgrind.mk

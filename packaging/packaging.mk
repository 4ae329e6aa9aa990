# packaging/packaging.mk — install, systemd units, Debian packages and their checks.
# Included at the end of the Makefile; uses its BUILD, PROGRAMS, CC, PKG_CONFIG, DEB_PKGS,
# PC_PKGS and SUDO.
#
#   make install [DESTDIR=] [PREFIX=/usr] [SYSCONFDIR=/etc]
#   make deb [ARCH=arm64]   Debian packages in build/deb/ARCH (packaging/build-deb.sh)
#   make check-deb          build, lintian, install, upgrade, remove, purge (root)
#   make check-units        systemd-analyze verify + security of the units
#   make check-man          man --warnings and lexgrog on docs/*.1 *.5 *.8
#   make check-arm64        cross-build the pure unit tests for arm64, run them in qemu-user

PREFIX ?= /usr
SYSCONFDIR ?= /etc
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
BASHCOMPLETIONDIR ?= $(DATADIR)/bash-completion/completions
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
# Debian 12 keeps units in /lib/systemd/system; systemd.pc knows where this system does.
ifeq ($(origin SYSTEMDUNITDIR),undefined)
SYSTEMDUNITDIR := $(or $(shell pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null),/lib/systemd/system)
endif
INSTALL ?= install

ARCH ?= $(shell dpkg --print-architecture 2>/dev/null)
DEB_OUT ?= build/deb/$(ARCH)

HAVE_EDGECTL := $(filter %/edgectl,$(PROGRAMS))
HAVE_AGGREGATOR := $(filter %/edge-aggregator,$(PROGRAMS))
UNITS := $(BUILD)/units/edged.service $(if $(HAVE_AGGREGATOR),$(BUILD)/units/edge-aggregator.service)

.PHONY: install deb check-deb check-units check-man check-arm64 packaging-deps cross-deps \
	packaging-force

# Units carry the install paths: regenerated every time, since they depend on SBINDIR.
$(BUILD)/units/%: units/%.in packaging-force
	@mkdir -p $(dir $@)
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@BINDIR@|$(BINDIR)|g' $< > $@.tmp && mv $@.tmp $@

install: $(PROGRAMS) $(UNITS)
	$(INSTALL) -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
		$(DESTDIR)$(SYSCONFDIR)/edged/edged.conf.d
	$(INSTALL) -m 0755 $(BUILD)/edged $(DESTDIR)$(SBINDIR)/edged
	$(INSTALL) -m 0644 $(BUILD)/units/edged.service $(DESTDIR)$(SYSTEMDUNITDIR)/edged.service
	$(INSTALL) -m 0644 units/edged.sysusers $(DESTDIR)$(SYSUSERSDIR)/edged.conf
	$(INSTALL) -m 0644 units/edged.tmpfiles $(DESTDIR)$(TMPFILESDIR)/edged.conf
	$(INSTALL) -m 0644 docs/edged.8 $(DESTDIR)$(MANDIR)/man8/edged.8
	$(INSTALL) -m 0644 docs/edged.conf.5 $(DESTDIR)$(MANDIR)/man5/edged.conf.5
	@# never overwrite an administrator's configuration
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/edged/edged.conf ]; then \
		echo "  KEEP    $(DESTDIR)$(SYSCONFDIR)/edged/edged.conf"; \
	else \
		echo "$(INSTALL) -m 0644 packaging/edged.conf $(DESTDIR)$(SYSCONFDIR)/edged/edged.conf"; \
		$(INSTALL) -m 0644 packaging/edged.conf $(DESTDIR)$(SYSCONFDIR)/edged/edged.conf; \
	fi
ifneq ($(HAVE_EDGECTL),)
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(BASHCOMPLETIONDIR)
	$(INSTALL) -m 0755 $(BUILD)/edgectl $(DESTDIR)$(BINDIR)/edgectl
	$(INSTALL) -m 0644 docs/edgectl.1 $(DESTDIR)$(MANDIR)/man1/edgectl.1
	$(INSTALL) -m 0644 ctl/edgectl.bash-completion $(DESTDIR)$(BASHCOMPLETIONDIR)/edgectl
endif
ifneq ($(HAVE_AGGREGATOR),)
	$(INSTALL) -d $(DESTDIR)$(SYSCONFDIR)/default
	$(INSTALL) -m 0755 $(BUILD)/edge-aggregator $(DESTDIR)$(SBINDIR)/edge-aggregator
	$(INSTALL) -m 0644 $(BUILD)/units/edge-aggregator.service \
		$(DESTDIR)$(SYSTEMDUNITDIR)/edge-aggregator.service
	$(INSTALL) -m 0644 units/edge-aggregator.sysusers $(DESTDIR)$(SYSUSERSDIR)/edge-aggregator.conf
	$(INSTALL) -m 0644 units/edge-aggregator.tmpfiles $(DESTDIR)$(TMPFILESDIR)/edge-aggregator.conf
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/default/edge-aggregator ]; then \
		echo "  KEEP    $(DESTDIR)$(SYSCONFDIR)/default/edge-aggregator"; \
	else \
		$(INSTALL) -m 0644 packaging/edge-aggregator.default \
			$(DESTDIR)$(SYSCONFDIR)/default/edge-aggregator; \
	fi
	$(if $(wildcard docs/edge-aggregator.8),$(INSTALL) -m 0644 docs/edge-aggregator.8 \
		$(DESTDIR)$(MANDIR)/man8/edge-aggregator.8)
endif
	@if [ -z "$(DESTDIR)" ]; then \
		echo "installed; to start: systemd-sysusers; systemd-tmpfiles --create;" \
			"systemctl daemon-reload; systemctl enable --now edged"; \
	fi

# ---- Debian packages ----

# What packaging needs besides the build dependencies (installed when a probe fails).
CROSS_DEB_PKGS := crossbuild-essential-arm64 qemu-user-static pkgconf:arm64 \
	$(addsuffix :arm64,$(filter %-dev,$(DEB_PKGS)))

# $(call need,COMMAND,PACKAGES): install PACKAGES when COMMAND is missing
define need
	@command -v $(1) >/dev/null 2>&1 || { echo "packaging: $(1) missing; installing $(2)"; \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y \
			--no-install-recommends $(2); }
endef

packaging-deps:
	$(call need,dh,debhelper)
	$(call need,dpkg-buildpackage,dpkg-dev)
	$(call need,fakeroot,fakeroot)
	$(call need,lintian,lintian)
	$(call need,man,man-db)
	$(call need,systemd-analyze,systemd)

cross-deps:
	@if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || \
	    ! command -v qemu-aarch64-static >/dev/null 2>&1 || \
	    ! command -v aarch64-linux-gnu-pkg-config >/dev/null 2>&1 || \
	    ! aarch64-linux-gnu-pkg-config --exists $(PC_PKGS) 2>/dev/null; then \
		echo "packaging: arm64 cross tools missing; installing them (multiarch)"; \
		$(SUDO) dpkg --add-architecture arm64 && $(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends \
			$(CROSS_DEB_PKGS); \
	fi

deb: ensure-deps packaging-deps $(if $(filter-out $(shell dpkg --print-architecture),$(ARCH)),cross-deps)
	packaging/build-deb.sh $(ARCH) $(DEB_OUT)

check-deb: deb
	packaging/check-deb.sh $(DEB_OUT)

# Units with ExecStart= pointing at this build (a stand-in for a program not built yet), so
# that systemd-analyze verify finds the binaries.
check-units: $(PROGRAMS)
	$(call need,systemd-analyze,systemd)
	$(call need,/bin/kill,procps) # the unit reloads with /bin/kill -HUP
	@rm -rf $(BUILD)/units-check && mkdir -p $(BUILD)/units-check/bin
	@ln -s $(abspath $(BUILD))/edged $(BUILD)/units-check/bin/edged
	@ln -s $(if $(HAVE_AGGREGATOR),$(abspath $(BUILD))/edge-aggregator,/bin/true) \
		$(BUILD)/units-check/bin/edge-aggregator
	@for u in units/*.service.in; do \
		n=$${u##*/}; sed -e 's|@SBINDIR@|$(abspath $(BUILD))/units-check/bin|g' \
			-e 's|@BINDIR@|$(abspath $(BUILD))/units-check/bin|g' $$u > $(BUILD)/units-check/$${n%.in}; \
	done
	packaging/check-units.sh --man=no $(BUILD)/units-check/edged.service:2.0 \
		$(BUILD)/units-check/edge-aggregator.service:1.2

check-man:
	$(call need,man,man-db)
	$(call need,groff,groff-base)
	packaging/check-man.sh $(wildcard docs/*.1 docs/*.5 docs/*.8)

# ---- arm64: the tests that need no kernel feature, cross-built and run under qemu-user ----

ARM64_BUILD ?= build/arm64
ARM64_CC ?= aarch64-linux-gnu-gcc
ARM64_PKG_CONFIG ?= aarch64-linux-gnu-pkg-config
ARM64_PURE_TESTS := $(foreach t,conf policy safetensors checkpoint reference gradcheck sample quant stats \
	hash codec ctl-format loader,$(if $(wildcard tests/test-$(t).c),test-$(t)))

# aarch64-linux-gnu-gcc 12 (Debian 12) crashes vectorising the fmax() reduction of
# tests/test-sample.c and test-quant.c (internal compiler error in vect_transform_reduction):
# not there.
$(ARM64_BUILD)/obj/tests/test-sample.o $(ARM64_BUILD)/obj/tests/test-quant.o: override CFLAGS += -fno-tree-vectorize

check-arm64: cross-deps
	@$(MAKE) --no-print-directory BUILD=$(ARM64_BUILD) CC=$(ARM64_CC) PKG_CONFIG=$(ARM64_PKG_CONFIG) \
		$(ARM64_PURE_TESTS:%=$(ARM64_BUILD)/tests/%)
	@readelf -h $(ARM64_BUILD)/tests/test-conf | grep -q AArch64 || \
		{ echo "check-arm64: $(ARM64_BUILD)/tests/test-conf is not an aarch64 binary"; exit 1; }
	@mkdir -p $(ARM64_BUILD)/qemu
	@for t in $(ARM64_PURE_TESTS); do \
		printf '#!/bin/sh\nexec qemu-aarch64-static %s "$$@"\n' "$(ARM64_BUILD)/tests/$$t" \
			> $(ARM64_BUILD)/qemu/$$t; chmod +x $(ARM64_BUILD)/qemu/$$t; \
	done
	@echo "=== arm64 under qemu-aarch64-static: $(ARM64_PURE_TESTS)"
	@# the eBPF program is compiled for the target's pt_regs layout (bpf_tracing.h); both
	@# results are shown before either fails the target
	@tests/run-tests $(ARM64_BUILD) $(ARM64_PURE_TESTS:%=$(ARM64_BUILD)/qemu/%); rc=$$?; \
	a=$$(echo 'print-bpf-arch: ; @echo $$(BPF_ARCH)' | $(MAKE) -s --no-print-directory -f Makefile -f - \
		CC=$(ARM64_CC) PKG_CONFIG=$(ARM64_PKG_CONFIG) print-bpf-arch); \
	if [ "$$a" = arm64 ]; then echo "arm64: eBPF objects built with -D__TARGET_ARCH_arm64"; \
	else echo "arm64: FAILED: eBPF objects built with -D__TARGET_ARCH_$$a, not arm64 (BPF_ARCH)"; rc=1; fi; \
	exit $$rc

packaging-force:

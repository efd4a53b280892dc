# SPDX-License-Identifier: MIT
# Makefile - builds forkpool: libforkpool.a, libforkpool.so (soname
# libforkpool.so.0), the Check test runner, the demos, the benchmarks and
# the libFuzzer target. GNU make only, no autotools.
#
#   make                 libraries (installs missing Debian packages first)
#   make check           build and run the test suite (Check's summary last)
#   make check-install   README's build lines against a staged install
#   make check SANITIZE=1   the same under ASan + UBSan (build/asan)
#   make check TSAN=1       the same under ThreadSanitizer (build/tsan)
#   make valgrind        the test runner under valgrind (master side)
#   make stress          a random mix of faults, checked (STRESS_SECONDS=120)
#   make demo            the demo tour;  make demo-python  its Python twin
#   make demo-compare    every demo in C and Python: one table, one chart
#   make bench           benchmarks (BENCH_QUICK=1 for a short smoke run)
#   make fuzz            the codec fuzzer (FUZZ_SECONDS=60)
#   make install PREFIX=/usr/local DESTDIR=   /   make uninstall
#                        (MANDIR, LIBDIR, INCLUDEDIR; INSTALL_SHARED=0)
#   make deps            install build dependencies (Debian/Ubuntu)
#   make mpi             libforkpool_mpi (the MPI link; needs mpicc)
#   make check-mpi       its tests under mpirun (docs/mpi.md)
#   make demo-mpi        the k-means and bogosort demos under mpirun -n 3
#   make format          clang-format the tree

PREFIX      ?= /usr/local
LIBDIR      ?= $(PREFIX)/lib
INCLUDEDIR  ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
MANDIR      ?= $(PREFIX)/share/man
DESTDIR     ?=

VERSION  := 0.1.0
SOMAJOR  := 0

ifeq ($(SANITIZE),1)
BUILD    ?= build/asan
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
            -fno-omit-frame-pointer -DFP_ALLOC_LIBC -DFP_CHECK_LOCKS
OPT      ?= -O1
else ifeq ($(TSAN),1)
BUILD    ?= build/tsan
# -Wno-tsan: gcc warns that TSan does not model atomic_thread_fence, which
# the Manager's lock-free dict uses next to the atomics TSan does see.
SANFLAGS := -fsanitize=thread -DFP_ALLOC_LIBC -DFP_CHECK_LOCKS -Wno-tsan
OPT      ?= -O1
else
BUILD    ?= build
SANFLAGS ?=
OPT      ?= -O2
endif

# Dependencies come from pkg-config. These are recursive (=) variables on
# purpose: they are expanded only when a recipe runs, i.e. after the
# $(BUILD)/.deps stamp rule has installed anything that was missing.
PKGS         := libuv jemalloc
DEP_CFLAGS    = $(shell pkg-config --cflags $(PKGS))
DEP_LIBS      = $(shell pkg-config --libs $(PKGS)) -ldl -lm
CHECK_CFLAGS  = $(shell pkg-config --cflags check)
CHECK_LIBS    = $(shell pkg-config --libs check)

DEB_PKGS := pkg-config libuv1-dev check libjemalloc-dev

# Warnings are errors only where the project asks for it (WERROR=1: .ci/run
# and developers); a user's build with another compiler must not fail on a
# new warning.
WARN     := -Wall -Wextra -Wshadow -Wno-unused-parameter
ifeq ($(WERROR),1)
WARN     += -Werror
endif
CFLAGS   ?=
BASEFLAGS = -std=c11 -D_GNU_SOURCE -g $(OPT) $(WARN) -pthread -fPIC \
            -fvisibility=hidden -Iinclude -I. $(SANFLAGS) $(DEP_CFLAGS) $(CFLAGS)
LDFLAGS  ?=

# pool/mpi/ is libforkpool_mpi (make mpi), never part of the core.
LIB_SRCS  := $(sort $(filter-out pool/mpi/%,\
               $(wildcard ipc/*/*.c pool/*.c pool/*/*.c affinity/*.c)))
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
STATIC    := $(BUILD)/libforkpool.a
SHARED    := $(BUILD)/libforkpool.so.$(VERSION)
SONAME    := libforkpool.so.$(SOMAJOR)

TEST_SRCS  := $(sort $(wildcard tests/*.c))
TEST_NAMES := $(patsubst tests/check_%.c,%,$(filter tests/check_%.c,$(TEST_SRCS)))
TEST_OBJS  := $(TEST_SRCS:%.c=$(BUILD)/obj/%.o)
RUNNER     := $(BUILD)/tests/runner

DEMO_LIB_SRCS := $(sort $(wildcard demos/lib/*.c))
DEMO_LIB_OBJS := $(DEMO_LIB_SRCS:%.c=$(BUILD)/obj/%.o)
DEMO_SRCS  := $(sort $(wildcard demos/*.c))
DEMOS      := $(DEMO_SRCS:demos/%.c=$(BUILD)/demos/%)
BENCH_SRCS := $(sort $(wildcard demos/bench/*.c))
BENCHES    := $(BENCH_SRCS:demos/bench/%.c=$(BUILD)/bench/%)
DOC_EX_SRCS := $(sort $(wildcard docs/examples/*.c))
DOC_EXS    := $(DOC_EX_SRCS:docs/examples/%.c=$(BUILD)/docs/%)

.PHONY: all lib check run-check valgrind demo demos demo-python bench fuzz \
        install uninstall clean deps format tsan asan compile-fail \
        check-install demo-compare
.DEFAULT_GOAL := all
# Keep the objects of programs linked by pattern rules (docs examples,
# demos, benchmarks): make would otherwise delete them as intermediates,
# printing "rm ..." after Check's summary. Listed by name: a bare
# .SECONDARY: would also stop the FORCE-based rules from running.
.SECONDARY: $(DOC_EX_SRCS:%.c=$(BUILD)/obj/%.o) \
            $(DEMO_SRCS:%.c=$(BUILD)/obj/%.o) $(DEMO_LIB_OBJS) \
            $(BENCH_SRCS:%.c=$(BUILD)/obj/%.o)

all: lib
lib: $(STATIC) $(SHARED) $(BUILD)/forkpool.pc

# --- dependencies -----------------------------------------------------------
# The stamp is an order-only prerequisite of every object, so a fresh clone
# installs what is missing before the first compiler call expands its flags.
# The library needs libuv and jemalloc only; Check is asked for by the test
# objects alone (the second stamp), so `make` works without it.
$(BUILD)/.deps:
	@mkdir -p $(@D)
	@if ! pkg-config --exists $(PKGS) 2>/dev/null; then \
	  echo "forkpool: build dependencies missing; running 'make deps'"; \
	  $(MAKE) --no-print-directory deps || exit 1; \
	fi
	@touch $@

$(BUILD)/.deps-check: | $(BUILD)/.deps
	@if ! pkg-config --exists check 2>/dev/null; then \
	  echo "forkpool: Check (the test framework) missing; running 'make deps'"; \
	  $(MAKE) --no-print-directory deps || exit 1; \
	fi
	@touch $@

deps:
	@if command -v apt-get >/dev/null 2>&1; then \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "forkpool: installing $(DEB_PKGS)"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends $(DEB_PKGS) >/dev/null || exit 1; \
	else \
	  echo "forkpool: not a Debian/Ubuntu system; install these yourself:" >&2; \
	  echo "  pkg-config, libuv (>= 1.44) with headers, check (>= 0.15)," >&2; \
	  echo "  jemalloc (>= 5) with headers" >&2; \
	  exit 1; \
	fi

# --- library ----------------------------------------------------------------
$(BUILD)/obj/%.o: %.c | $(BUILD)/.deps
	@mkdir -p $(@D)
	$(CC) $(BASEFLAGS) -MMD -MP -c $< -o $@

$(STATIC): $(LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(SHARED): $(LIB_OBJS)
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--no-undefined $(SANFLAGS) \
	  -pthread -o $@ $^ $(LDFLAGS) $(DEP_LIBS)
	ln -sf libforkpool.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf libforkpool.so.$(VERSION) $(BUILD)/libforkpool.so

# The .pc file is relocatable: prefix is found from the .pc file's own
# location (${pcfiledir}, understood by pkgconf and pkg-config >= 0.29), so
# a DESTDIR-staged install works with PKG_CONFIG_PATH pointed at it. It is
# rewritten when PREFIX/LIBDIR/INCLUDEDIR change (FORCE + compare).
PC_PREFIX = $${pcfiledir}/$(shell realpath -m --relative-to=$(PKGCONFIGDIR) $(PREFIX))
PC_LIBDIR = $${prefix}/$(shell realpath -m --relative-to=$(PREFIX) $(LIBDIR))
PC_INCDIR = $${prefix}/$(shell realpath -m --relative-to=$(PREFIX) $(INCLUDEDIR))

$(BUILD)/forkpool.pc: FORCE
	@mkdir -p $(@D)
	@printf '%s\n' \
	  'prefix=$(PC_PREFIX)' \
	  'libdir=$(PC_LIBDIR)' \
	  'includedir=$(PC_INCDIR)' \
	  '' \
	  'Name: forkpool' \
	  'Description: multiprocessing.Pool for C: forked workers, shared-memory manager, affinity' \
	  'Version: $(VERSION)' \
	  'Requires.private: libuv jemalloc' \
	  'Cflags: -I$${includedir}' \
	  'Libs: -L$${libdir} -lforkpool' \
	  'Libs.private: -pthread -ldl -lm' > $@.tmp
	@cmp -s $@.tmp $@ 2>/dev/null && rm -f $@.tmp || mv $@.tmp $@

# --- tests ------------------------------------------------------------------
# tests/runner.c includes the generated list of suites: one per
# tests/check_<name>.c, which must define Suite *<name>_suite(void).
$(BUILD)/tests/suites.h: FORCE | $(BUILD)/.deps-check
	@mkdir -p $(@D)
	@printf 'FP_SUITE(%s)\n' $(TEST_NAMES) > $@.tmp
	@cmp -s $@.tmp $@ 2>/dev/null && rm -f $@.tmp || mv $@.tmp $@

$(BUILD)/obj/tests/%.o: tests/%.c $(BUILD)/tests/suites.h | $(BUILD)/.deps-check
	@mkdir -p $(@D)
	$(CC) $(BASEFLAGS) $(CHECK_CFLAGS) -I$(BUILD)/tests -MMD -MP -c $< -o $@

$(RUNNER): $(TEST_OBJS) $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(SANFLAGS) -pthread -rdynamic -o $@ $(TEST_OBJS) $(STATIC) \
	  $(LDFLAGS) $(CHECK_LIBS) $(DEP_LIBS)

# Under ASan, a task's deliberate SIGSEGV must kill its worker with SIGSEGV
# (the faults suite checks the reported signal), not turn into exit(1).
SAN_ENV := ASAN_OPTIONS=handle_segv=0:handle_sigbus=0:handle_sigfpe=0:detect_leaks=1 \
           UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
           TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1

# make check runs, in order: the docs examples; every ```c block of
# README.md, whose stdout must equal the ```text block after it; the
# compile-fail cases; the Check suites (their summary comes last).
check: $(RUNNER) $(DOC_EXS) $(STATIC)
	@for ex in $(DOC_EXS); do \
	  $(SAN_ENV) $$ex >/dev/null || { echo "docs example $$ex failed"; exit 1; }; \
	done
	@for src in $$(sh tests/readme_blocks.sh README.md $(BUILD)/readme); do \
	  bin=$${src%.c}; \
	  $(CC) $(BASEFLAGS) -o $$bin $$src $(STATIC) $(LDFLAGS) $(DEP_LIBS) || \
	    { echo "README block $$src does not compile"; exit 1; }; \
	  $(SAN_ENV) $$bin > $$bin.out || \
	    { echo "README block $$src failed (status $$?)"; exit 1; }; \
	  if [ -f $$bin.expected ] && ! cmp -s $$bin.out $$bin.expected; then \
	    echo "README block $$src printed:"; cat $$bin.out; \
	    echo "where README.md says:"; cat $$bin.expected; exit 1; \
	  fi; \
	done
	@$(MAKE) --no-print-directory compile-fail
	$(SAN_ENV) $(RUNNER)

# Each CASE of tests/compile_fail/typed.c is a misuse of the typed macros
# of forkpool.h that must not compile (with or without -Werror); CASE=0 is
# the correct use and must compile without a warning.
COMPILE_FAIL := tests/compile_fail/typed.c
compile-fail: | $(BUILD)/.deps
	@for c in $$(sed -n 's/^#elif CASE == \([0-9]*\).*/\1/p' $(COMPILE_FAIL)); do \
	  if $(CC) -std=c11 -Iinclude -DCASE=$$c -c $(COMPILE_FAIL) \
	       -o /dev/null 2>/dev/null; then \
	    echo "$(COMPILE_FAIL): CASE=$$c compiled, it must not"; exit 1; \
	  fi; \
	done
	@$(CC) -std=c11 -Wall -Wextra -Wpedantic -Werror -Iinclude -DCASE=0 \
	  -c $(COMPILE_FAIL) -o /dev/null || \
	  { echo "$(COMPILE_FAIL): CASE=0 (correct code) must compile"; exit 1; }

# What README.md promises about an installed forkpool: its cc line builds
# and runs the taste, and pkg-config --static links libforkpool.a alone.
check-install: lib
	@rm -rf $(BUILD)/stage
	@$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(BUILD)/stage \
	  PREFIX=/usr >/dev/null
	@sh tests/readme_blocks.sh README.md $(BUILD)/readme >/dev/null
	@CC="$(CC)" sh tests/install_check.sh $(BUILD)

# valgrind runs a build whose IPC buffers come from libc malloc
# (FP_ALLOC_LIBC), so a leaked or overrun codec/frame buffer is visible to
# it too (jemalloc's arena memory is opaque to valgrind).
VG_BUILD := build/valgrind
# VG_SUITES="a b": only those suites, one valgrind run each (default: all).
VG_SUITES ?=
# valgrind runs one thread at a time; --fair-sched=yes hands the CPU round
# in turn. Without it a thread that makes no system call (a test's churn
# loop) kept it for minutes while the thread it raced waited.
VG_RUN = CK_FORK=no FP_TEST_VALGRIND=1 valgrind --error-exitcode=3 \
	  --leak-check=full --errors-for-leak-kinds=definite --fair-sched=yes \
	  --child-silent-after-fork=yes --track-fds=no $(VG_BUILD)/tests/runner
valgrind:
	@$(MAKE) --no-print-directory BUILD=$(VG_BUILD) \
	  CFLAGS="$(CFLAGS) -DFP_ALLOC_LIBC" $(VG_BUILD)/tests/runner
ifeq ($(strip $(VG_SUITES)),)
	$(VG_RUN)
else
	@set -e; for s in $(VG_SUITES); do \
	  echo "valgrind: suite $$s ($$(date +%T))"; CK_RUN_SUITE=$$s $(VG_RUN); \
	done
endif

# A bounded random mix of the faults of issue 15 (tests/stress/stress.c):
# worker kills, descriptor pressure, huge and NaN timeouts, pools made and
# freed from several threads, user forks, cancels and calls of uneven cost
# (each must run exactly once); every result checked,
# and no process, thread or descriptor left at the end. It prints a summary
# line and exits 0 only when every check passed.
STRESS_SECONDS ?= 120
STRESS := $(BUILD)/tests/stress
.PHONY: stress

$(STRESS): tests/stress/stress.c tests/child.c $(STATIC) | $(BUILD)/.deps
	@mkdir -p $(@D)
	$(CC) $(BASEFLAGS) -o $@ $< tests/child.c $(STATIC) -rdynamic $(LDFLAGS) $(DEP_LIBS)

stress: $(STRESS)
	$(SAN_ENV) $(STRESS) $(STRESS_SECONDS)

# --- demos, docs examples, benchmarks ---------------------------------------
DEMO_CFLAGS = $(BASEFLAGS) -fopenmp
# The benchmark kernels are compiled into two programs (rawbench for the
# sequential and OpenMP sides, fpbench for forkpool): aligning loops keeps a
# kernel's inner loop from straddling a cache line in one program and not
# in the other, which alone made the same loop run 2x slower here.
$(BUILD)/obj/demos/bench/%.o: DEMO_CFLAGS += -falign-loops=64

$(BUILD)/obj/demos/%.o: demos/%.c | $(BUILD)/.deps
	@mkdir -p $(@D)
	$(CC) $(DEMO_CFLAGS) -Idemos -MMD -MP -c $< -o $@

$(BUILD)/demos/%: $(BUILD)/obj/demos/%.o $(DEMO_LIB_OBJS) $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(SANFLAGS) -fopenmp -pthread -rdynamic -o $@ $< $(DEMO_LIB_OBJS) \
	  $(STATIC) $(LDFLAGS) $(DEP_LIBS)

$(BUILD)/bench/%: $(BUILD)/obj/demos/bench/%.o $(DEMO_LIB_OBJS) $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(SANFLAGS) -fopenmp -pthread -rdynamic -o $@ $< $(DEMO_LIB_OBJS) \
	  $(STATIC) $(LDFLAGS) $(DEP_LIBS)

$(BUILD)/obj/docs/examples/%.o: docs/examples/%.c | $(BUILD)/.deps
	@mkdir -p $(@D)
	$(CC) $(BASEFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/docs/%: $(BUILD)/obj/docs/examples/%.o $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(SANFLAGS) -pthread -rdynamic -o $@ $< $(STATIC) $(LDFLAGS) $(DEP_LIBS)

demos: $(DEMOS)

demo: $(DEMOS)
	@sh demos/run.sh $(BUILD)/demos

demo-python:
	@sh demos/python/run.sh

# Every demo in C and in Python, one comparison table, and bogosort's time
# against workers for both on one chart ($(BUILD)/demo-compare/workers.png).
demo-compare: $(DEMOS)
	@sh demos/compare.sh $(BUILD)

bench: $(BENCHES) $(DEMOS)
	@sh demos/bench/run.sh $(BUILD)

include pool/mpi/mpi.mk

# --- fuzzing ----------------------------------------------------------------
FUZZ_SECONDS ?= 60
FUZZ_BIN     := build/fuzz/fuzz_codec
FUZZ_LIB_SRCS := $(sort $(wildcard ipc/wire/*.c))

$(FUZZ_BIN): tests/fuzz/fuzz_codec.c $(FUZZ_LIB_SRCS) | $(BUILD)/.deps
	@mkdir -p $(@D)
	clang -std=c11 -D_GNU_SOURCE -g -O1 -Iinclude -I. -DFP_ALLOC_LIBC \
	  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -pthread -o $@ $^ $(DEP_LIBS)

fuzz: $(FUZZ_BIN)
	@mkdir -p build/fuzz/corpus
	cp -n tests/fuzz/corpus/* build/fuzz/corpus/ 2>/dev/null || true
	$(FUZZ_BIN) -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	  -print_final_stats=1 build/fuzz/corpus tests/fuzz/corpus

# --- install ----------------------------------------------------------------
# A real install (no DESTDIR) by root refreshes the dynamic linker's cache:
# without it a program linked against a fresh /usr/local/lib/libforkpool.so
# fails to start ("cannot open shared object file") until someone runs
# ldconfig. A prefix outside the linker's search path (/etc/ld.so.conf)
# still needs LD_LIBRARY_PATH or -Wl,-rpath (README).
LDCONFIG ?= ldconfig
define refresh_ld_cache
	@if [ -z "$(DESTDIR)" ] && [ "$(INSTALL_SHARED)" != 0 ] && \
	  [ "$$(id -u)" = 0 ]; then \
	  echo "$(LDCONFIG)"; $(LDCONFIG) || echo "warning: $(LDCONFIG) failed"; \
	fi
endef

# INSTALL_SHARED=0 leaves the shared library out, so that -lforkpool (and
# `pkg-config --static --libs forkpool`) can only mean libforkpool.a.
INSTALL_SHARED ?= 1
install: lib
	install -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR) \
	  $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(MANDIR)/man3
	install -m 644 include/forkpool.h $(DESTDIR)$(INCLUDEDIR)/forkpool.h
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/libforkpool.a
ifneq ($(INSTALL_SHARED),0)
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/libforkpool.so.$(VERSION)
	ln -sf libforkpool.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf libforkpool.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libforkpool.so
endif
	install -m 644 $(BUILD)/forkpool.pc $(DESTDIR)$(PKGCONFIGDIR)/forkpool.pc
	install -m 644 docs/forkpool.3 $(DESTDIR)$(MANDIR)/man3/forkpool.3
	$(refresh_ld_cache)

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/forkpool.h \
	  $(DESTDIR)$(LIBDIR)/libforkpool.a \
	  $(DESTDIR)$(LIBDIR)/libforkpool.so.$(VERSION) \
	  $(DESTDIR)$(LIBDIR)/$(SONAME) \
	  $(DESTDIR)$(LIBDIR)/libforkpool.so \
	  $(DESTDIR)$(PKGCONFIGDIR)/forkpool.pc \
	  $(DESTDIR)$(MANDIR)/man3/forkpool.3
	$(refresh_ld_cache)

clean:
	rm -rf build

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

FORCE:

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# SPDX-License-Identifier: MIT
# pool/mpi/mpi.mk - libforkpool_mpi, the MPI link, and its tests (included
# by the Makefile). Built with Open MPI's mpicc, never into the core:
#
#   make mpi          $(BUILD)/libforkpool_mpi.{a,so} and forkpool-mpi.pc
#   make check-mpi    tests/mpi/ under mpirun (tests/mpi/run.sh)
#   make demo-mpi     the k-means and bogosort demos under mpirun -n 3
#
# make bench also builds the shared library when mpicc is there, for the
# benchmark's MPI rows (demos/bench/run.sh skips them without mpirun).
#
# The library links libmpi and libuv, not libforkpool: the core hands it
# the functions it needs at run time (pool/transport.h), so it works with a
# static or a shared core alike.

MPICC       ?= mpicc
MPIRUN      ?= mpirun
MPI_SRCS    := $(sort $(wildcard pool/mpi/*.c))
MPI_OBJS    := $(MPI_SRCS:%.c=$(BUILD)/objmpi/%.o)
MPI_STATIC  := $(BUILD)/libforkpool_mpi.a
MPI_SHARED  := $(BUILD)/libforkpool_mpi.so.$(VERSION)
MPI_SONAME  := libforkpool_mpi.so.$(SOMAJOR)
MPI_DEB_PKGS := libopenmpi-dev openmpi-bin

# Tests: every tests/mpi/*.c is a program. Those named nolink_* link the
# core only, with the plain compiler (they reach the MPI link by dlopen or
# check the error without it); the others link both static libraries.
MPI_TEST_SRCS := $(sort $(wildcard tests/mpi/*.c))
MPI_TESTS     := $(MPI_TEST_SRCS:tests/mpi/%.c=$(BUILD)/tests/mpi/%)

.PHONY: mpi check-mpi mpi-deps demo-mpi

# Open MPI in a container: root allowed, 3-5 ranks on 2 CPUs, shared
# memory only (no network needed).
MPI_ENV := OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
           OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl=self,vader \
           OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_pml=ob1

mpi: $(MPI_STATIC) $(MPI_SHARED) $(BUILD)/forkpool-mpi.pc

mpi-deps:
	@command -v $(MPICC) >/dev/null 2>&1 || { \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "forkpool: installing $(MPI_DEB_PKGS)"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends $(MPI_DEB_PKGS) >/dev/null; }

$(BUILD)/objmpi/%.o: %.c | $(BUILD)/.deps
	@mkdir -p $(@D)
	$(MPICC) $(BASEFLAGS) -MMD -MP -c $< -o $@

$(MPI_STATIC): $(MPI_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(MPI_SHARED): $(MPI_OBJS)
	$(MPICC) -shared -Wl,-soname,$(MPI_SONAME) -Wl,--no-undefined \
	  $(SANFLAGS) -pthread -o $@ $^ $(LDFLAGS) $(shell pkg-config --libs libuv)
	ln -sf libforkpool_mpi.so.$(VERSION) $(BUILD)/$(MPI_SONAME)
	ln -sf libforkpool_mpi.so.$(VERSION) $(BUILD)/libforkpool_mpi.so

# Static users must force the entry in (-u): the core only refers to it
# weakly, which pulls nothing out of an archive.
$(BUILD)/forkpool-mpi.pc: FORCE
	@mkdir -p $(@D)
	@printf '%s\n' \
	  'prefix=$(PC_PREFIX)' \
	  'libdir=$(PC_LIBDIR)' \
	  '' \
	  'Name: forkpool-mpi' \
	  'Description: forkpool pools across MPI ranks (FP_TRANSPORT_MPI)' \
	  'Version: $(VERSION)' \
	  'Requires: forkpool' \
	  'Requires.private: ompi-c libuv' \
	  'Libs: -L$${libdir} -Wl,-u,fp_mpi_entry -lforkpool_mpi' > $@.tmp
	@cmp -s $@.tmp $@ 2>/dev/null && rm -f $@.tmp || mv $@.tmp $@

$(BUILD)/objmpi/tests/mpi/nolink_%.o: tests/mpi/nolink_%.c | $(BUILD)/.deps
	@mkdir -p $(@D)
	$(CC) $(BASEFLAGS) -Itests/mpi -MMD -MP -c $< -o $@

# The others may call MPI themselves (leave.c starts it before the pool).
$(BUILD)/objmpi/tests/mpi/%.o: tests/mpi/%.c | $(BUILD)/.deps
	@mkdir -p $(@D)
	$(MPICC) $(BASEFLAGS) -Itests/mpi -MMD -MP -c $< -o $@

$(BUILD)/tests/mpi/nolink_%: $(BUILD)/objmpi/tests/mpi/nolink_%.o $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(SANFLAGS) -pthread -rdynamic -o $@ $< $(STATIC) $(LDFLAGS) \
	  $(DEP_LIBS)

$(BUILD)/tests/mpi/%: $(BUILD)/objmpi/tests/mpi/%.o $(MPI_STATIC) $(STATIC)
	@mkdir -p $(@D)
	$(MPICC) $(SANFLAGS) -pthread -rdynamic -o $@ $< -Wl,-u,fp_mpi_entry \
	  $(MPI_STATIC) $(STATIC) $(LDFLAGS) $(DEP_LIBS)

# The demos are plain programs with a static core: the core dlopens the
# MPI link named by FP_MPI_LIBRARY when a demo asks for --transport mpi.
# One worker per worker rank: 2 workers on 2 CPUs, as the local demos.
demo-mpi: mpi-deps
	@$(MAKE) --no-print-directory $(MPI_SHARED) $(BUILD)/demos/kmeans \
	  $(BUILD)/demos/bogosort
	@$(MPI_ENV) FP_MPI_LIBRARY=$(CURDIR)/$(BUILD)/$(MPI_SONAME) \
	  DEMO_LIST="kmeans bogosort" \
	  DEMO_LAUNCH="$(MPIRUN) -x FP_MPI_LIBRARY -n 3" \
	  DEMO_ARGS="--transport mpi --workers 1 $(DEMO_ARGS)" \
	  sh demos/run.sh $(BUILD)/demos

# make bench's MPI rows need the shared MPI link beside the benchmark.
bench: $(if $(shell command -v $(MPICC) 2>/dev/null),$(MPI_SHARED))

check-mpi: mpi-deps
	@$(MAKE) --no-print-directory mpi $(SHARED) $(MPI_TESTS)
	@sh tests/mpi/run.sh $(BUILD) $(MPIRUN)
-include $(shell find $(BUILD)/objmpi -name "*.d" 2>/dev/null)
# Keep the test objects: make would delete them as intermediates.
.SECONDARY: $(MPI_TEST_SRCS:tests/mpi/%.c=$(BUILD)/objmpi/tests/mpi/%.o)

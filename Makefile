# The two commands a newcomer types: `make demo` and `make test`.
# Each installs the missing Debian packages first (apt-get when root; otherwise
# it prints the exact command to run and stops), then configures and builds.
#
#   make test                        build and run every test (ctest)
#   make demo                        the main job: the shared-model demo
#   make bench                       benchmarks -> bench/results/latest.json
#   make bench-python                Python benchmarks -> bench/results/python.json
#   make compare                     the demo's scenario through every Python way -> bench/results/compare.md
#   make demo-mpi                    the demo over MPI: 4 ranks as 2 simulated nodes of 2
#   make demo-mpi-python             the same from Python (zcstore.mpi over mpi4py), beside comm.bcast
#   make bench-mpi-python            zcstore.mpi.share of a 2.15 GiB array (over INT_MAX bytes), for real
#   make bench-mpi                   Share over MPI beside MPI_Bcast to every rank -> bench/results/mpi.json
#   make build BENCHMARKS=ON         build everything, the benchmarks too (CI)
#   make test SANITIZE=address+undefined BUILD=build-asan

SHELL    := /bin/bash
BUILD    ?= build
SANITIZE ?=
JOBS     ?= $(shell nproc)
DEPS     := cmake g++ make pkg-config libflatbuffers-dev flatbuffers-compiler \
            libxxhash-dev libgtest-dev libgmock-dev libbenchmark-dev \
            python3-dev pybind11-dev python3-numpy python3-pytest \
            python3-venv python3-pip python3-setuptools python3-wheel python3-pybind11 \
            python3-joblib python3-cloudpickle python3-tqdm python3-pandas python3-mpi4py \
            libopenmpi-dev openmpi-bin

.PHONY: all deps configure build test cpython-tests demo demo-mpi demo-mpi-python bench bench-mpi-python bench-python bench-mpi compare fuzz clean

all: build

deps:
	@missing=""; \
	for p in $(DEPS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "zcstore needs these Debian packages:$$missing"; \
	    echo "install them with:  sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi

# The benchmarks are built by `make bench` (and CI), not by `make test`.
BENCHMARKS ?= OFF
bench bench-mpi: BENCHMARKS = ON

configure: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DZCSTORE_SANITIZE=$(SANITIZE) \
	  -DZCSTORE_BUILD_TESTS=ON -DZCSTORE_BUILD_BENCHMARKS=$(BENCHMARKS) -DZCSTORE_BUILD_EXAMPLES=ON >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

test: build cpython-tests
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# CPython's own concurrent.futures tests, which zcstore.Pool must pass
# (tests/python/cpython_executor_test.py): Debian's libpython3.11-testsuite,
# downloaded and unpacked into the build tree, never installed (installing
# it could upgrade the system Python's packages).
CPYTHON_TESTS := $(BUILD)/cpython/test_concurrent_futures.py
cpython-tests: $(CPYTHON_TESTS)
$(CPYTHON_TESTS):
	@rm -rf $(BUILD)/cpython && mkdir -p $(BUILD)/cpython/deb
	@cd $(BUILD)/cpython/deb && { apt-get download -qq libpython3.11-testsuite 2>/dev/null || \
	  { apt-get update -qq && apt-get download -qq libpython3.11-testsuite; }; }
	@dpkg -x $(BUILD)/cpython/deb/libpython3.11-testsuite_*.deb $(BUILD)/cpython/deb/root
	@cp $(BUILD)/cpython/deb/root/usr/lib/python3.11/test/test_concurrent_futures.py $@
	@rm -rf $(BUILD)/cpython/deb

demo: build
	./$(BUILD)/examples/shared_model $(DEMO_ARGS)

bench: build
	@mkdir -p bench/results
	./$(BUILD)/bench/zcstore_bench --benchmark_out=bench/results/latest.json \
	  --benchmark_out_format=json $(BENCH_ARGS)

# 4 ranks on this machine as 2 simulated nodes of 2 (Open MPI wants the
# OMPI_ALLOW_RUN_AS_ROOT pair when run as root, --oversubscribe for more
# ranks than CPUs, and plm=isolated to start ranks here without ssh).
MPIRUN := OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm=isolated \
          ZCSTORE_MPI_RANKS_PER_NODE=2 mpirun --oversubscribe -np 4
demo-mpi: build
	$(MPIRUN) ./$(BUILD)/examples/mpi_shared_model $(DEMO_ARGS)

demo-mpi-python: build
	PYTHONPATH=$(BUILD)/python $(MPIRUN) /usr/bin/python3 examples/python/mpi_shared_model.py $(DEMO_ARGS)

bench-mpi-python: build
	PYTHONPATH=$(BUILD)/python $(MPIRUN) /usr/bin/python3 bench/python/mpi_large_share.py $(BENCH_ARGS)

bench-mpi: build
	@mkdir -p bench/results
	$(MPIRUN) ./$(BUILD)/bench/mpi_bench $(BENCH_ARGS)

bench-python: build
	@mkdir -p bench/results
	PYTHONPATH=$(BUILD)/python /usr/bin/python3 bench/python/store_bench.py $(BENCH_ARGS)

# The comparison harness draws its plots with matplotlib (Debian's).
COMPARE_DEPS := python3-matplotlib
compare: build
	@$(MAKE) --no-print-directory deps DEPS="$(COMPARE_DEPS)"
	@mkdir -p bench/results
	PYTHONPATH=$(BUILD)/python /usr/bin/python3 bench/python/compare.py $(COMPARE_ARGS)

# libFuzzer over each reader of untrusted bytes (the envelope, a store file,
# the rings), with ASan+UBSan, FUZZ_SECONDS each. Inputs it finds land in
# build-fuzz/corpus-NAME; copy a crash into that target's corpus/ folder to
# keep it as a regression input (every build replays those).
FUZZ_SECONDS ?= 60
FUZZ_DEPS    := clang libclang-rt-14-dev
FUZZERS      := envelope_fuzz:serializer/fuzz store_file_fuzz:store/fuzz ring_fuzz:pool/fuzz
fuzz: deps
	@$(MAKE) --no-print-directory deps DEPS="$(FUZZ_DEPS)"
	@CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DZCSTORE_SANITIZE=address+undefined -DZCSTORE_FUZZ=ON -DZCSTORE_BUILD_TESTS=OFF \
	  -DZCSTORE_BUILD_BENCHMARKS=OFF -DZCSTORE_BUILD_EXAMPLES=OFF >/dev/null
	@cmake --build build-fuzz -j $(JOBS) --target $(foreach f,$(FUZZERS),$(word 1,$(subst :, ,$(f))))
	@set -eo pipefail; for f in $(FUZZERS); do \
	  name=$${f%%:*}; dir=$${f#*:}; \
	  mkdir -p build-fuzz/corpus-$$name && cp $$dir/corpus/* build-fuzz/corpus-$$name/; \
	  echo "== $$name ($(FUZZ_SECONDS) s)"; \
	  ./build-fuzz/$$name -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -artifact_prefix=build-fuzz/$$name- \
	    build-fuzz/corpus-$$name 2>&1 | { grep -vE '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' || true; }; \
	done

clean:
	rm -rf $(BUILD) build-asan build-tsan build-fuzz

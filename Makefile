# The two commands a newcomer types: `make demo` and `make test`.
# Each installs the missing Debian packages first (apt-get when root; otherwise
# it prints the exact command to run and stops), then configures and builds.
#
#   make test                        build and run every test (ctest)
#   make demo                        the main job: the shared-model demo
#   make bench                       benchmarks -> bench/results/latest.json
#   make test SANITIZE=address+undefined BUILD=build-asan

BUILD    ?= build
SANITIZE ?=
JOBS     ?= $(shell nproc)
DEPS     := cmake g++ make pkg-config libboost-dev libflatbuffers-dev flatbuffers-compiler \
            libxxhash-dev libgtest-dev libgmock-dev libbenchmark-dev

.PHONY: all deps configure build test demo bench clean

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

configure: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DZCSTORE_SANITIZE=$(SANITIZE) \
	  -DZCSTORE_BUILD_TESTS=ON -DZCSTORE_BUILD_BENCHMARKS=ON -DZCSTORE_BUILD_EXAMPLES=ON >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: build
	./$(BUILD)/examples/store_demo

bench: build
	@mkdir -p bench/results
	./$(BUILD)/bench/zcstore_bench --benchmark_out=bench/results/latest.json \
	  --benchmark_out_format=json $(BENCH_ARGS)

clean:
	rm -rf $(BUILD) build-asan build-tsan

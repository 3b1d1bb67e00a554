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

.PHONY: all deps configure build test demo bench fuzz clean

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
	./$(BUILD)/examples/shared_model $(DEMO_ARGS)

bench: build
	@mkdir -p bench/results
	./$(BUILD)/bench/zcstore_bench --benchmark_out=bench/results/latest.json \
	  --benchmark_out_format=json $(BENCH_ARGS)

# libFuzzer over the envelope reader, with ASan+UBSan (needs clang and
# libclang-rt-dev). FUZZ_SECONDS bounds the run; new inputs land in build-fuzz/corpus.
FUZZ_SECONDS ?= 60
fuzz: deps
	@command -v clang++ >/dev/null || { echo "make fuzz needs clang: apt-get install clang libclang-rt-dev"; exit 1; }
	@CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DZCSTORE_SANITIZE=address+undefined -DZCSTORE_FUZZ=ON -DZCSTORE_BUILD_TESTS=OFF \
	  -DZCSTORE_BUILD_BENCHMARKS=OFF -DZCSTORE_BUILD_EXAMPLES=OFF >/dev/null
	@cmake --build build-fuzz -j $(JOBS) --target envelope_fuzz
	@mkdir -p build-fuzz/corpus && cp serializer/fuzz/corpus/* build-fuzz/corpus/
	./build-fuzz/envelope_fuzz -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build-fuzz/corpus

clean:
	rm -rf $(BUILD) build-asan build-tsan build-fuzz

# The two commands of the README:
#   make run    install what is missing, build, and start trove's main job
#   make test   install what is missing (test tooling too), build, and run the whole suite (ctest)
# `make` alone builds build/trove. The compiler is clang (libFuzzer targets need it).
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
export CC := clang
export CXX := clang++

.PHONY: all deps test-deps configure build run test clean

all: build

deps:
	@scripts/setup.sh build

test-deps:
	@scripts/setup.sh test

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS)

configure: $(BUILD_DIR)/CMakeCache.txt

build: deps
	@$(MAKE) --no-print-directory configure
	cmake --build $(BUILD_DIR) -j$(JOBS)

run: build
	@scripts/main-job.sh $(BUILD_DIR)/trove

test: test-deps
	@$(MAKE) --no-print-directory configure
	cmake --build $(BUILD_DIR) -j$(JOBS)
	cd $(BUILD_DIR) && ctest --output-on-failure -j$(JOBS)

clean:
	rm -rf $(BUILD_DIR)

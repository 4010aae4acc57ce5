# Front door. `make` builds build/bin/ecom and build/bin/ecomctl;
# `make run` runs the whole system in memory on port 3003; `make test` runs
# every test (sanitizer build, real Postgres and Redis); `make bench` prints figures.

BUILD      ?= build
TEST_BUILD ?= build-test
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
WERROR     ?= $(if $(CI),ON,OFF)

.PHONY: all build run test test-unit bench clean format bootstrap

all: build

bootstrap:
	@scripts/bootstrap

$(BUILD)/Makefile: CMakeLists.txt
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DECOM_WERROR=$(WERROR) >/dev/null

build: $(BUILD)/Makefile
	@cmake --build $(BUILD) -j $(JOBS) --target ecom ecomctl

run: bootstrap build
	$(BUILD)/bin/ecom all --env-file env.dev

$(TEST_BUILD)/Makefile: CMakeLists.txt
	@cmake -S . -B $(TEST_BUILD) -DCMAKE_BUILD_TYPE=Debug -DECOM_SANITIZE=ON -DECOM_WERROR=$(WERROR) >/dev/null

test: bootstrap $(TEST_BUILD)/Makefile
	@cmake --build $(TEST_BUILD) -j $(JOBS)
	@scripts/test-env scripts/run-tests $(TEST_BUILD)

bench: bootstrap build
	@scripts/bootstrap nginx
	@cmake --build $(BUILD) -j $(JOBS) --target benches
	@scripts/test-env scripts/run-bench $(BUILD)

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(TEST_BUILD)

# pgshard — thin wrapper over CMake, ctest and pytest.
#   make demo   install what is missing, build, start the demo cluster, show it
#   make test   install what is missing (drivers for the driver tests too), build, run every test
#   make bench  pgbench: direct Postgres vs pgshard vs PgBouncer
#   make soak   mixed load with injected faults for SOAK_SECONDS (default 600), then checks
#   make fuzz   build the libFuzzer harnesses with clang (build-fuzz) and run
#               each for FUZZ_SECONDS (default 60); fails on any finding
#   make test-tsan  ThreadSanitizer build (build-tsan), integration tests on it
#   make test-stress  the suites three times while stress-ng keeps the cores busy
BUILD ?= build
PYTHON := /usr/bin/python3
DEBIAN_PACKAGES := build-essential cmake pkg-config libuv1-dev libpq-dev libxxhash-dev \
	libinih-dev libpg-query-dev libprotobuf-c-dev libssl-dev libcmocka-dev postgresql-15 \
	postgresql-client-15 python3-pytest python3-psycopg pgbouncer \
	python3-matplotlib procps iproute2 openssl clang-format locales-all \
	python3-psycopg2 python3-asyncpg python3-sqlalchemy python3-django \
	default-jdk-headless libpostgresql-jdbc-java ruby-pg libdbd-pg-perl php-cli php-pgsql
# Only for `make fuzz`: clang and its sanitizer and
# libFuzzer runtimes.
FUZZ_PACKAGES := clang libclang-rt-14-dev
FUZZ_SECONDS ?= 60
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps packages fuzz-deps build build-asan build-fuzz build-tsan fuzz test test-tsan \
	test-stress layers design-check design-report unit integration demo demo-down bench soak clean format format-check

all: build

deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

# The package list, for .ci/run (one list for CI and for `make test`).
packages:
	@echo $(DEBIAN_PACKAGES)

fuzz-deps: deps
	@missing=""; for p in $(FUZZ_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPGS_WERROR=ON
	cmake --build $(BUILD) -j$$(nproc)

build-asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPGS_SANITIZE=ON -DPGS_WERROR=ON
	cmake --build build-asan -j$$(nproc)

# The harnesses only (target fuzzers), with the router library instrumented.
build-fuzz: fuzz-deps
	CC=clang cmake -S . -B build-fuzz -DPGS_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build build-fuzz --target fuzzers -j$$(nproc)

# Every harness in turn, FUZZ_SECONDS each, from a scratch copy of its seeds
# (build-fuzz/fuzz-work); prints the executions per harness and in total.
fuzz: build-fuzz
	FUZZ_SECONDS=$(FUZZ_SECONDS) ./tests/fuzz/run.sh build-fuzz $(FUZZ_HARNESSES)

# ThreadSanitizer (gcc's, from build-essential): pgshard and pgshardctl only.
build-tsan: deps
	cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPGS_TSAN=ON -DPGS_WERROR=ON
	cmake --build build-tsan --target pgshard pgshardctl -j$$(nproc)

# The integration suite against the TSan build; a report in a proxy's log
# fails its test (tests/tsan.supp holds the known false positives).
# TSAN_TESTS narrows it, e.g. TSAN_TESTS=tests/integration/test_pooling.py.
TSAN_TESTS ?= tests/integration
test-tsan: build-tsan
	PGSHARD_BUILD=$(abspath build-tsan) $(PYTHON) -m pytest -v -ra $(TSAN_TESTS)

unit: build
	cd $(BUILD) && ctest --output-on-failure

integration: build
	PGSHARD_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -v -ra tests/integration

# The C sources as .clang-format writes them (format-check: fail if not).
C_SOURCES = $(shell find router proxy include tests/unit tests/fuzz -name '*.[ch]')
format: deps
	clang-format -i $(C_SOURCES)

format-check: deps
	clang-format --dry-run -Werror $(C_SOURCES)

# proxy/ is a one-way graph of modules: a call cycle fails the build's tests.
layers: build
	$(PYTHON) tests/tools/callgraph.py $(BUILD) --strict

# config/DESIGN.md is the contract kept in the repository. The team's shared
# copy (../shared/DESIGN.md, where it sits beside the checkout) is outside the
# repository and can change under a clean clone, so `make test` only reports a
# difference (design-report); `make design-check` fails on one.
DESIGN_DIFF = if [ -f ../shared/DESIGN.md ]; then \
	  if cmp -s ../shared/DESIGN.md config/DESIGN.md; then echo "design: config/DESIGN.md matches ../shared/DESIGN.md"; \
	  else echo "design: WARNING config/DESIGN.md differs from ../shared/DESIGN.md (bring them into step)"; \
	    diff -u ../shared/DESIGN.md config/DESIGN.md | head -40; $(1); fi; \
	else echo "design: no ../shared/DESIGN.md beside this checkout; config/DESIGN.md is the contract"; fi

design-check:
	@$(call DESIGN_DIFF,exit 1)

design-report:
	@$(call DESIGN_DIFF,true)

test: build format-check layers design-report
	cd $(BUILD) && ctest --output-on-failure
	PGSHARD_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -v -ra tests/integration

# The suites three times over while stress-ng keeps both cores busy.
test-stress: build
	@command -v stress-ng >/dev/null || { $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q stress-ng; }
	@stress-ng --cpu $$(nproc) --timeout 3h --quiet & stress=$$!; \
	trap 'kill $$stress 2>/dev/null' EXIT; \
	for run in 1 2 3; do \
	  echo "== loaded run $$run of 3"; \
	  (cd $(BUILD) && ctest --output-on-failure) && \
	  PGSHARD_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q -ra tests/integration || exit 1; \
	done

demo: build
	./config/demo.sh $(BUILD)

demo-down:
	./$(BUILD)/pgshardctl lab down -c config/demo.ini --dir /tmp/pgshard-demo

bench: build
	$(PYTHON) bench/pgbench_compare.py --build $(abspath $(BUILD))

SOAK_SECONDS ?= 600
soak: build
	SOAK_SECONDS=$(SOAK_SECONDS) PGSHARD_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/soak/soak.py

clean:
	rm -rf $(BUILD) build-asan build-fuzz build-tsan

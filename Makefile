# pgshard — thin wrapper over CMake, ctest and pytest.
#   make demo   install what is missing, build, start the demo cluster, show it
#   make test   install what is missing, build, run every test
#   make bench  pgbench: direct Postgres vs pgshard vs PgBouncer
BUILD ?= build
PYTHON := /usr/bin/python3
DEBIAN_PACKAGES := build-essential cmake pkg-config libuv1-dev libpq-dev libxxhash-dev \
	libinih-dev libpg-query-dev libprotobuf-c-dev libssl-dev libcmocka-dev postgresql-15 \
	postgresql-client-15 python3-pytest python3-psycopg pgbouncer \
	python3-matplotlib procps iproute2 openssl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps build build-asan test test-stress unit integration demo demo-down bench clean format

all: build

deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
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

unit: build
	cd $(BUILD) && ctest --output-on-failure

integration: build
	PGSHARD_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -v -ra tests/integration

test: build
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

clean:
	rm -rf $(BUILD) build-asan build-fuzz

# pgsluice — see README.md. The two commands that matter: `make demo`, `make test`.
SHELL     := /bin/bash
GO        ?= go
GOFLAGS   ?= -mod=mod
export GOFLAGS
BIN       := bin
FUZZTIME  ?= 10s
TESTTIMEOUT ?= 40m

.PHONY: all build deps test unit vet fuzz-short demo clean soak

all: build

build:
	$(GO) build -o $(BIN)/pgsluice ./cmd/pgsluice
	$(GO) build -o $(BIN)/pgsluice-cluster ./deploy/local/cmd/pgsluice-cluster

# deps installs PostgreSQL 15, psql, redis-server and pgbouncer with apt-get
# when they are missing.
deps:
	./deploy/local/scripts/install-deps.sh

vet:
	$(GO) vet ./...

# test: every unit and integration test (real PostgreSQL primary + streaming
# replica + Redis, started on free loopback ports), with -race, then a short
# run of each fuzzer.
#
# CI shows only the tail of the output, and a failing package prints its
# server logs last; so the output also goes to $(TESTLOG), and on failure
# the failing tests (their "--- FAIL" lines with the log lines under them)
# and any panic are printed again at the very end.
TESTLOG ?= /tmp/pgsluice-test.log
test: deps vet
	@set -o pipefail; $(GO) test -race -count=1 -p 1 -timeout $(TESTTIMEOUT) ./... 2>&1 | tee $(TESTLOG) || { \
	  echo; echo "==== make test failed; the failures again (whole output in $(TESTLOG)) ===="; \
	  ./deploy/local/scripts/test-failures.sh $(TESTLOG); exit 1; }
	$(MAKE) fuzz-short

# fuzz-short runs every Fuzz target briefly; crashers land in testdata/fuzz.
# A run that ends with the fuzz engine's own "context deadline exceeded"
# and no failing input (a Go fuzzing quirk when a worker is slow to stop
# on a loaded machine) is retried once; a real crasher fails at once.
fuzz-short:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(grep -hoE '^func (Fuzz[A-Za-z0-9_]+)' $$dir/*_test.go 2>/dev/null | sed 's/func //'); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	    ok=0; for try in 1 2 3; do \
	      if $(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg >/tmp/pgsluice-fuzz.log 2>&1; then ok=1; break; fi; \
	      grep -q 'Failing input written' /tmp/pgsluice-fuzz.log && break; \
	      grep -q 'context deadline exceeded' /tmp/pgsluice-fuzz.log || break; \
	      [ $$try = 3 ] || echo "  (fuzz engine stopped on its own deadline with no failing input; try $$try of 3, retrying)"; \
	    done; \
	    [ $$ok = 1 ] || { cat /tmp/pgsluice-fuzz.log; exit 1; }; \
	  done; \
	done; echo "fuzz-short: all fuzzers passed"

# demo: local primary + replica + Redis, pgsluice with its embedded defaults,
# a short workload through it; keeps serving until Ctrl-C.
demo: deps build
	./deploy/local/scripts/demo.sh

clean:
	rm -rf $(BIN)

# bench: direct PostgreSQL vs PgBouncer vs pgsluice side by side (see
# bench/README.md): Markdown on stdout, bench/results/latest.{json,svg}.
# bench-quick is the short form (under 3 minutes).
.PHONY: bench bench-quick bench-floor
bench: deps
	$(GO) build -o $(BIN)/pgsluice ./cmd/pgsluice
	$(GO) build -o $(BIN)/pgsluice-bench ./bench/cmd/pgsluice-bench
	$(BIN)/pgsluice-bench

bench-quick: deps
	$(GO) build -o $(BIN)/pgsluice ./cmd/pgsluice
	$(GO) build -o $(BIN)/pgsluice-bench ./bench/cmd/pgsluice-bench
	$(BIN)/pgsluice-bench -quick

# bench-floor: scenario 8 alone (about 5 minutes): both proxies beside
# bench/floor's minimal forwarders (goroutines, channel pool, epoll loop,
# goroutines on a poller of their own);
# results in bench/results/floor/.
bench-floor: deps
	$(GO) build -o $(BIN)/pgsluice ./cmd/pgsluice
	$(GO) build -o $(BIN)/pgsluice-bench ./bench/cmd/pgsluice-bench
	$(GO) build -o $(BIN)/pgsluice-floor ./bench/cmd/pgsluice-floor
	$(BIN)/pgsluice-bench -scenarios 8 -out bench/results/floor

# soak: the long run of issue #7 against the local cluster (no -race, so
# RSS is the proxy's own): TestSoak for SOAK_DURATION (mixed reads, writes,
# transactions and cached reads through the proxy and a second instance
# sharing Redis, a Redis restart and a replica restart in the middle;
# checks 0 lost writes, 0 stale reads, cache hits, flat RSS and goroutines;
# prints a summary), then TestManyConnectionsAndStorm with SOAK_CONNS clients held
# at once and a 10 s storm of 2,000 connects/s. `make test` runs both in
# short form (20 s, 1,000 clients, 2 s storm).
SOAK_DURATION ?= 10m
SOAK_CONNS    ?= 10000
soak: deps
	PGSLUICE_SOAK_DURATION=$(SOAK_DURATION) PGSLUICE_FAULT_CONNS=$(SOAK_CONNS) PGSLUICE_STORM_SECONDS=10 \
	  $(GO) test -count=1 -p 1 -timeout $(TESTTIMEOUT) -v -run '^(TestSoak|TestManyConnectionsAndStorm)$$' ./proxy/

# rouse: `make test` is the README's test command and what CI runs.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build test faults fuzz check deps bench bench-compare clean deb test-deb

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/rouse ./cmd/rouse

# deps installs the Debian packages the integration tests drive (redis-server,
# systemd-socket-activate); it needs root and does nothing when all are there.
deps:
	@bash .ci/deps

# -p 1: one package at a time. Tests pick free loopback ports and start
# apps on them; two packages' tests in parallel can be handed the same port
# by the kernel, and one then talks to the other's app.
test: deps
	$(GO) test -race -count=1 -p 1 -timeout 20m ./...

# faults runs the fault suite (files tagged `faults`): SIGKILLs, idle-stop
# races, slowloris, garbage and fd exhaustion, each ending in a count of
# what clients got. It includes the normal tests.
faults: deps
	$(GO) test -race -count=1 -p 1 -tags faults -timeout 20m ./...

# fuzz runs each fuzz target after its seed corpus, for a budget of runs
# (about 5 s each); FUZZTIME=1m or FUZZTIME=500000x overrides it.
fuzz:
	@FUZZTIME=$(FUZZTIME) bash .ci/fuzz

check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./activator/...

# bench-compare runs rouse against systemd-socket-proxyd, nginx, HAProxy and
# Go proxies on loopback (examples/bench) and writes BENCHMARKS.md; ~25 min.
# It installs nothing: `make deps` brings wrk, nginx, haproxy and systemd.
# BENCH_FLAGS=-quick for a short run.
bench-compare:
	$(GO) run ./examples/bench $(BENCH_FLAGS) -out BENCHMARKS.md

# deb builds dist/rouse_VERSION_ARCH.deb (dpkg-deb; see packaging/build-deb.sh).
deb:
	@GO=$(GO) bash packaging/build-deb.sh

# test-deb lints the package and boots it under a real systemd in a
# debootstrapped bookworm (root; the root is cached in /var/cache/rouse-test).
test-deb: deb
	@GO=$(GO) bash packaging/test-deb.sh

clean:
	rm -rf bin dist

# rouse: `make test` is the README's test command and what CI runs.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build test check deps bench clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/rouse ./cmd/rouse

# deps installs the Debian packages the integration tests drive (redis-server,
# systemd-socket-activate); it needs root and does nothing when all are there.
deps:
	@bash .ci/deps

test: deps
	$(GO) test -race -count=1 -timeout 20m ./...

check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./activator

clean:
	rm -rf bin dist

# Corral. `make help` lists the targets.
GO       ?= go
# The podman bindings build without cgo only with these tags; every build,
# vet and test uses them so that all packages build together.
TAGS     := remote exclude_graphdriver_btrfs containers_image_openpgp
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
BIN      := bin/corral
ADDR     ?= 127.0.0.1:8080
DATA     ?= data
RUNTIME  ?= process
BENCHTIME ?= 2s

.PHONY: help build run test lint bench load clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

build: ## build the static binary bin/corral
	CGO_ENABLED=0 $(GO) build -tags "$(TAGS)" -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN) ./cmd/corral

run: build ## start the server (process runtime, data in ./data), print its URL and an admin key
	./$(BIN) serve --runtime $(RUNTIME) --addr $(ADDR) --data-dir $(DATA) --bootstrap-admin

test: ## run every test with the race detector (engine suites skip if no engine; CORRAL_REQUIRE_ENGINES=1 makes them fail)
	$(GO) test -race -tags "$(TAGS)" -count=1 -timeout 25m ./...

lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags "$(TAGS)" ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -tags "$(TAGS)" ./...

bench: ## benchmarks, each next to its baseline measured in the same run; then make load
	$(GO) test -tags "$(TAGS)" -run '^$$' -bench . -benchtime $(BENCHTIME) -count 1 ./...
	$(MAKE) load

LOAD_DURATION ?= 60s
LOAD_USERS    ?= 20
load: ## corral load against a real server (process runtime, scripted LLM): LOAD_USERS users for LOAD_DURATION; figures in bench/load.txt and bench/load.json
	mkdir -p bench
	CORRAL_LOAD_DURATION=$(LOAD_DURATION) CORRAL_LOAD_USERS=$(LOAD_USERS) CORRAL_LOAD_REPORT=$(CURDIR)/bench/load.txt \
		$(GO) test -tags "$(TAGS)" -count=1 -timeout 30m -run '^TestLoad$$' ./cmd/corral
	cat bench/load.txt

clean: ## remove the binary (not the data directory)
	rm -rf bin

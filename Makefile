# lxc-agent — see README.md.
GO       ?= go
BIN      := bin/lxc-agent
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
CONFIG   ?= etc/lxc-agent.conf
STATICCHECK_VERSION ?= v0.8.2
export CGO_ENABLED := 1

.PHONY: all build run test unit lint deps-run deps-test bench bench-nova clean

all: build

build: $(BIN)

$(BIN): $(shell find cmd pkg internal -name '*.go' -not -name '*_test.go') go.mod go.sum
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/lxc-agent

deps-run:
	hack/install-deps.sh run

deps-test:
	hack/install-deps.sh test

# Run the agent in the foreground with the default config: installs what is
# missing, starts a local RabbitMQ when the configured broker is local and
# silent, and puts a demo image in the local image directory.
run: deps-run build
	CONFIG=$(CONFIG) hack/run.sh

# The whole suite, root/kernel/AMQP integration tests included.
test: deps-test build lint
	hack/test.sh

# Unit tests only (no root, no broker).
unit:
	$(GO) test -short ./...

lint:
	@out=$$(gofmt -l cmd pkg internal test bench 2>/dev/null); if [ -n "$$out" ]; then echo "gofmt: $$out"; exit 1; fi
	$(GO) vet ./...
	@sc="$$($(GO) env GOPATH)/bin/staticcheck"; \
	  "$$sc" -version 2>/dev/null | grep -q "($(STATICCHECK_VERSION:v%=%))" || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION); \
	  "$$sc" ./...

bench: deps-test build
	bench/rpc-roundtrip.sh
	bench/image-build.sh
	bench/lifecycle.sh

# lxc-agent against Debian's own nova-compute (libvirt LXC) behind one nova
# Zed control plane (installs nova-compute for the comparison).
bench-nova: deps-test build
	bench/nova-compare.sh

clean:
	rm -rf bin

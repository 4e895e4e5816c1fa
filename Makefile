# LLM Gateway. Every target creates .venv when it is missing, from the lock files in
# requirements/ (exact versions and hashes, resolved from pyproject.toml by make lock).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/default.yaml
# Development only: the secret the default config's dev issuer signs tokens with.
# Production configs name their own variable and never use this value.
export LLM_GATEWAY_DEV_SECRET ?= dev-only-insecure-secret-change-me-0123456789
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf

.PHONY: run token lock lock-check test test-deps go-deps go-client bench bench-check bench-deps soak profile lint fmt proto proto-check proto-lint proto-breaking clean

$(STAMP): pyproject.toml requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Resolves requirements/*.txt again after a change of pyproject.toml, keeping every pin
# that still fits; UPGRADE=1 make lock moves every version to the newest allowed.
lock: $(STAMP)
	UV=$(BIN)/uv scripts/lock.sh

# Fails when the lock files do not match pyproject.toml.
lock-check: $(STAMP)
	UV=$(BIN)/uv scripts/lock_check.sh

run: $(STAMP)
	@echo "LLM Gateway on :50051. A development token: make token (or: $(BIN)/python -m service token --sub alice --config $(CONFIG))"
	$(BIN)/python -m service --config $(CONFIG)

# A development token for subject $(SUB) (default alice), valid for an hour.
SUB ?= alice
token: $(STAMP)
	@$(BIN)/python -m service token --sub $(SUB) --config $(CONFIG)

test: $(STAMP) test-deps go-deps
	$(BIN)/python -m pytest -q

# The shared-limits tests run a real redis-server: Debian's package, installed when missing.
test-deps:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian's package) for the shared-limits tests"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq redis-server >/dev/null; }
	@command -v promtool >/dev/null || { \
	  echo "installing promtool (Debian's prometheus) for the alert rule tests"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq prometheus >/dev/null; }

# The Go client builds offline against Debian's Go toolchain and libraries (Go 1.19,
# grpc-go 1.33, protobuf-go 1.28, golang/protobuf 1.5), installed when missing.
GO_PACKAGES := golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev \
	golang-google-protobuf-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev
go-deps:
	@missing=; for p in $(GO_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	[ -z "$$missing" ] || { \
	  echo "installing Debian's Go packages for the Go client:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; }

# The Go example client (clients/go), built into .tools/bin/gateway-example.
go-client: go-deps
	scripts/build_go_client.sh

# Side by side, in one run: straight to a fake upstream, a bare grpc.aio echo server (the
# floor) and the gateway (mock provider, and through the fake upstream); bench/results.md.
# Then Embed batching at 64 concurrent callers, with and without; bench/embed_batching.md.
bench: $(STAMP) bench-deps
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.embed_batching

# The gateway's calls/s as a share of the echo server's, measured side by side: fails when
# the share falls below its floor (bench/ratio.py). Under a minute.
bench-check: $(STAMP) bench-deps
	$(BIN)/python -m bench.ratio

# Mixed calls at a steady rate for SOAK_SECONDS (default 600), the gateway's RSS sampled
# every 10 s and its growth in MiB/min (bench/soak.py); bench/soak.md, shown by make bench.
soak: $(STAMP) bench-deps
	$(BIN)/python -m bench.soak

# Where the gateway's time goes under load, per path (bench/profile.py, py-spy).
profile: $(STAMP) bench-deps
	$(BIN)/python -m bench.profile

# h2load, the C load generator of the benchmarks: Debian's nghttp2-client, when missing.
bench-deps:
	@command -v h2load >/dev/null || { \
	  echo "installing h2load (Debian's nghttp2-client) for the benchmark"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq nghttp2-client >/dev/null; }

lint: $(STAMP) proto-lint
	$(BIN)/ruff check service clients tests scripts bench
	$(BIN)/ruff format --check service clients tests scripts bench
	$(BIN)/mypy service clients

# buf (the real binary, from npm) checks the contract's naming and comments.
$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

proto-lint: $(BUF)
	$(BUF) lint

# The public contract (llmgateway.v1) stays wire- and JSON-compatible with the previous
# commit (PROTO_BREAKING_AGAINST=<ref> for another); a break needs a new package, v2.
proto-breaking: $(BUF)
	BUF=$(BUF) scripts/proto_breaking.sh

fmt: $(STAMP)
	$(BIN)/ruff check --fix service clients tests scripts bench
	$(BIN)/ruff format service clients tests scripts bench

# Regenerates generated/ from protos/ (Python messages, gRPC stubs and typed .pyi stubs)
# and the Go client's package clients/go/llmgatewayv1.
proto: $(STAMP) go-deps
	rm -rf generated/llmgateway
	$(BIN)/python scripts/gen_proto.py generated
	$(BIN)/python scripts/gen_go_proto.py clients/go/llmgatewayv1

# Fails when generated/ differs from what the protos produce now.
proto-check: $(STAMP) go-deps
	rm -rf .proto-check && mkdir -p .proto-check
	$(BIN)/python scripts/gen_proto.py .proto-check
	diff -r generated/llmgateway .proto-check/llmgateway || { echo 'generated/ is stale: run make proto'; exit 1; }
	$(BIN)/python scripts/gen_go_proto.py .proto-check/go
	diff -r clients/go/llmgatewayv1 .proto-check/go || { echo 'clients/go is stale: run make proto'; exit 1; }
	rm -rf .proto-check

clean:
	rm -rf $(VENV) .tools .proto-check .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

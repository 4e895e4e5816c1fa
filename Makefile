# LLM Gateway. Every target creates .venv from pyproject.toml when it is missing.
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

.PHONY: run token test test-deps bench bench-check bench-deps lint fmt proto proto-check proto-lint proto-breaking clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	@echo "LLM Gateway on :50051. A development token: make token (or: $(BIN)/python -m service token --sub alice --config $(CONFIG))"
	$(BIN)/python -m service --config $(CONFIG)

# A development token for subject $(SUB) (default alice), valid for an hour.
SUB ?= alice
token: $(STAMP)
	@$(BIN)/python -m service token --sub $(SUB) --config $(CONFIG)

test: $(STAMP) test-deps
	$(BIN)/python -m pytest -q

# The shared-limits tests run a real redis-server: Debian's package, installed when missing.
test-deps:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian's package) for the shared-limits tests"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq redis-server >/dev/null; }

# Side by side, in one run: straight to a fake upstream, a bare grpc.aio echo server (the
# floor) and the gateway (mock provider, and through the fake upstream); bench/results.md.
bench: $(STAMP) bench-deps
	$(BIN)/python -m bench.run

# The gateway's calls/s as a share of the echo server's, measured side by side: fails when
# the share falls below its floor (bench/ratio.py). Under a minute.
bench-check: $(STAMP) bench-deps
	$(BIN)/python -m bench.ratio

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

# Regenerates generated/ from protos/: Python messages, gRPC stubs and typed .pyi stubs.
proto: $(STAMP)
	rm -rf generated/llmgateway
	$(BIN)/python scripts/gen_proto.py generated

# Fails when generated/ differs from what the protos produce now.
proto-check: $(STAMP)
	rm -rf .proto-check && mkdir -p .proto-check
	$(BIN)/python scripts/gen_proto.py .proto-check
	diff -r generated/llmgateway .proto-check/llmgateway || { echo 'generated/ is stale: run make proto'; exit 1; }
	rm -rf .proto-check

clean:
	rm -rf $(VENV) .tools .proto-check .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

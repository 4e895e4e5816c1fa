#!/usr/bin/env bash
# Builds the Go example client (clients/go) offline, against Debian's Go packages
# (make go-deps), into the path given (default .tools/bin/gateway-example).
# Debian ships Go libraries as sources under /usr/share/gocode, so the build runs in
# GOPATH mode, with the client placed at its import path in a scratch GOPATH.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/.tools/bin/gateway-example}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/src/llmgateway/clients" "$(dirname "$out")"
ln -s "$root/clients/go" "$scratch/src/llmgateway/clients/go"
cd "$scratch/src/llmgateway/clients/go"
export GO111MODULE=off GOPATH="$scratch:/usr/share/gocode" GOFLAGS= GOCACHE="$root/.tools/go-cache"
go vet ./...
go build -o "$out" ./cmd/gateway-example

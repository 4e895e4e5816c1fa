#!/usr/bin/env bash
# buf breaking for the public contract (package llmgateway.v1, WIRE_JSON rules in
# buf.yaml): the protos as they are now against the protos of an earlier commit,
# by default the previous one (HEAD~1; PROTO_BREAKING_AGAINST names another ref).
# A shallow clone is deepened by one commit to reach it. A root commit has nothing
# to compare with and passes, saying so; any other missing ref fails.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-.tools/node_modules/.bin/buf}
against=${PROTO_BREAKING_AGAINST:-HEAD~1}
if ! git rev-parse --verify --quiet "$against^{commit}" >/dev/null; then
  if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
    echo "proto-breaking: shallow clone; fetching one more commit to reach $against"
    git fetch --quiet --deepen=1 || true
  fi
fi
if ! git rev-parse --verify --quiet "$against^{commit}" >/dev/null; then
  if [ "$against" = HEAD~1 ] && [ -z "$(git rev-list --parents -n 1 HEAD | cut -s -d' ' -f2)" ] \
     && [ "$(git rev-parse --is-shallow-repository)" = false ]; then
    echo "proto-breaking: HEAD is the first commit; nothing to compare with"
    exit 0
  fi
  echo "proto-breaking: cannot find $against (a shallow clone without its parent?);" \
       "clone with history or set PROTO_BREAKING_AGAINST" >&2
  exit 1
fi
commit=$(git rev-parse "$against^{commit}")
echo "proto-breaking: llmgateway.v1 against $against ($commit)"
"$BUF" breaking --against ".git#ref=$commit" --path protos/llmgateway/v1

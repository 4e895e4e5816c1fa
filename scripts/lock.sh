#!/usr/bin/env bash
# The lock files in requirements/: exact versions with hashes, resolved by uv from
# pyproject.toml (and requirements/build.in, what building the project needs).
#   scripts/lock.sh [DIR]      writes the lock files into DIR (default requirements/),
#                              keeping every version already pinned there
#   UPGRADE=1 scripts/lock.sh  lets every version move to the newest allowed
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/requirements}"
uv="${UV:-$root/.venv/bin/uv}"
cd "$root"
mkdir -p "$out"
for name in runtime dev build; do
  [ "$out" = "$root/requirements" ] || cp "requirements/$name.txt" "$out/$name.txt"
done
common=(--quiet --generate-hashes --universal --python-version 3.11
        --custom-compile-command "make lock")
[ -z "${UPGRADE:-}" ] || common+=(--upgrade)
"$uv" pip compile "${common[@]}" pyproject.toml -o "$out/runtime.txt"
"$uv" pip compile "${common[@]}" --extra dev pyproject.toml requirements/build.in -o "$out/dev.txt"
"$uv" pip compile "${common[@]}" requirements/build.in -o "$out/build.txt"

#!/usr/bin/env bash
# Fails when the lock files in requirements/ no longer match pyproject.toml: each is
# resolved again, keeping its pins, and must come out byte for byte the same; and every
# runtime pin must be the development pin too (tests run what the image ships).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
scripts/lock.sh "$scratch"
for name in runtime dev build; do
  diff -u "requirements/$name.txt" "$scratch/$name.txt" \
    || { echo "requirements/$name.txt does not match pyproject.toml: run make lock"; exit 1; }
done
pins() { grep -E '^[A-Za-z0-9_.-]+==' "$1" | sed 's/ .*//' | sort; }
unmatched="$(comm -23 <(pins requirements/runtime.txt) <(pins requirements/dev.txt))"
[ -z "$unmatched" ] || { echo "runtime pins missing from requirements/dev.txt: $unmatched"; exit 1; }
echo "requirements/: the lock files match pyproject.toml"

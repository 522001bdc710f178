#!/usr/bin/env bash
# Writes DIR for tools/ab_versions.py --before DIR: git revision REV's moefuse package renamed
# moefuse_before, and its cuda_src beside it (where the old package looks for its sources).
#   tools/prepare_before.sh REV DIR     (e.g. tools/prepare_before.sh HEAD~1 build/before)
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 REV DIR" >&2
  exit 2
fi
rev=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)
if [ -e "$dir/moefuse_before" ] || [ -e "$dir/cuda_src" ]; then
  echo "$0: $dir already holds moefuse_before or cuda_src; remove them first" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git -C "$(dirname "$0")/.." archive "$rev" moefuse cuda_src | tar -x -C "$tmp"
mv "$tmp/moefuse" "$dir/moefuse_before"
mv "$tmp/cuda_src" "$dir/cuda_src"
echo "$dir: moefuse_before and cuda_src of $(git -C "$(dirname "$0")/.." rev-parse --short "$rev")"

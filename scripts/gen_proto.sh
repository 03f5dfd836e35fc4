#!/usr/bin/env bash
# Regenerates the Python modules of our ALS wire-format .proto files.
# Usage: scripts/gen_proto.sh [OUTPUT_ROOT]   (default: src, in place)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-src}
python -m grpc_tools.protoc -I src --python_out="$out" --pyi_out="$out" \
  src/als2otel/receiver/_proto/core.proto \
  src/als2otel/receiver/_proto/accesslog.proto \
  src/als2otel/receiver/_proto/als.proto
# protoc's stubs use bare Mapping; tell mypy (strict) that this is expected there.
for stub in "$out"/als2otel/receiver/_proto/*_pb2.pyi; do
  sed -i '1i # mypy: disable-error-code="type-arg"' "$stub"
done

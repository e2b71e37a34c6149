#!/usr/bin/env bash
# The README's test command: set up (if needed) and run the whole test suite. GPU tests skip without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure_env.sh
exec "${PYTHON:-python3}" -m pytest -q -ra tests "$@"

#!/usr/bin/env bash
# The README's main command: set up (if needed) and run the demo (CPU, or the GPU when there is one).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure_env.sh
exec "${PYTHON:-python3}" -m nvfp4_compile demo "$@"

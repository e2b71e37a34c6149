#!/usr/bin/env bash
# Install what the project needs, without ever letting pip pull a CUDA build of torch:
# torch is installed first and pinned (the CPU 2.13.0 wheel on a fresh CPU machine); a machine that already
# has torch >= 2.11 (e.g. the GPU machine's 2.11+cu130) keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; v=tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(0 if v >= (2, 11) else 1)" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
if ! "$PY" -c "import nvfp4_compile" 2>/dev/null \
   || ! "$PY" -c "import importlib.metadata as m; assert any(e.name == 'nvfp4_marlin' for e in m.entry_points(group='torch_dynamo_backends'))" 2>/dev/null; then
  # --no-build-isolation: build against the torch above; --no-deps then the small deps by name,
  # so nothing can resolve `torch` again.
  "$PY" -m pip install -q --no-build-isolation --no-deps -e .
fi
# Small pure-Python deps by name, only those missing (the GPU machine has no network but has most of them;
# a carried wheel in .wheels/ is used first). transformers is for the tests on real model code.
links=(); [ -d .wheels ] && links=(--find-links .wheels)
for spec in "safetensors>=0.4:safetensors" "pytest>=7:pytest" "expecttest>=0.2:expecttest" "transformers>=5:transformers"; do
  "$PY" -c "import ${spec##*:}" 2>/dev/null || "$PY" -m pip install -q "${links[@]}" "${spec%%:*}"
done
# With nvcc present, the SASS check of the wgmma kernels (tests/test_wgmma_sass.py) needs a disassembler: the
# 5 MB nvidia-cuda-nvdisasm wheel when neither nvdisasm nor cuobjdump is there (best effort: offline, it skips).
if command -v nvcc >/dev/null && ! command -v nvdisasm >/dev/null && ! command -v cuobjdump >/dev/null \
   && ! "$PY" -c "import importlib.util as u, os, sys; s = u.find_spec('nvidia'); sys.exit(0 if s and any(os.path.exists(os.path.join(b, 'cu13', 'bin', 'nvdisasm')) for b in s.submodule_search_locations) else 1)" 2>/dev/null; then
  "$PY" -m pip install -q "nvidia-cuda-nvdisasm>=13" 2>/dev/null || echo "ensure_env: nvidia-cuda-nvdisasm not installed (offline?); the SASS check will skip"
fi

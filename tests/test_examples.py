"""The README's demo and the examples stay runnable (they exit non-zero when the compiled output is off)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv):
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_checkpoint_to_compiled_example_in_both_conventions():
    for convention in ("modelopt", "compressed-tensors"):
        out = _run("examples/checkpoint_to_compiled.py", "--device", "cpu", "--convention", convention)
        assert "10 rewritten, 0 left alone" in out
        rel = float(out.rsplit("relative error", 1)[1].split()[0])
        assert rel < 2e-2


def test_demo_command():
    out = _run("-m", "nvfp4_compile", "demo", "--device", "cpu", "--iters", "1", "--seq", "8")
    assert out.count("rel_err_vs_w4a16_ref") == 2
    assert "14 rewritten, 0 left alone" in out and "10 rewritten, 0 left alone" in out

"""Registration and options: the entry point in a fresh interpreter (no nvfp4_compile import), idempotent
registration, how mode/options reach the backend, option validation and the Inductor config they map to."""
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest
import torch

import nvfp4_compile
from nvfp4_compile import backend as backend_mod
from nvfp4_compile.backend import BackendOptions, nvfp4_marlin_backend


def entry_point_installed() -> bool:
    return any(ep.name == "nvfp4_marlin" for ep in entry_points(group="torch_dynamo_backends"))


def run_fresh(code: str) -> str:
    # One compile thread: a fresh interpreter would otherwise start Inductor's worker pool (one process per
    # core), which is what costs the time in a 16-core sandbox, not the tiny graphs compiled here.
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.skipif(not entry_point_installed(), reason="entry point not installed: run `pip install --no-build-isolation -e .`")
def test_entry_point_in_a_fresh_interpreter_then_import_does_not_reregister():
    out = run_fresh("""
        import sys, torch
        assert "nvfp4_marlin" in torch._dynamo.list_backends()
        f = torch.compile(lambda x: x * 2 + 1, backend="nvfp4_marlin", mode="reduce-overhead")
        print(f(torch.ones(3)).tolist())
        print("loaded by entry point:", "nvfp4_compile.backend" in sys.modules)
        import nvfp4_compile, importlib
        importlib.reload(nvfp4_compile.backend)  # importing (again) after torch loaded it must not raise
        g = torch.compile(lambda x: x - 1, backend="nvfp4_marlin", options={"target": "cpu"})
        print(g(torch.ones(2)).tolist())
    """)
    assert out.splitlines() == ["[3.0, 3.0, 3.0]", "loaded by entry point: True", "[0.0, 0.0]"]


def test_import_first_then_compile_by_name_in_a_fresh_interpreter():
    out = run_fresh("""
        import torch, nvfp4_compile
        from torch._dynamo.backends.registry import lookup_backend
        assert lookup_backend("nvfp4_marlin") is nvfp4_compile.backend.nvfp4_marlin_backend
        print(torch.compile(lambda x: x * 3, backend="nvfp4_marlin")(torch.ones(2)).tolist())
    """)
    assert out.strip() == "[3.0, 3.0]"


def test_register_is_idempotent():
    from torch._dynamo.backends.registry import lookup_backend

    backend_mod.register()
    backend_mod.register()
    assert lookup_backend("nvfp4_marlin") is nvfp4_marlin_backend


def test_mode_and_options_reach_the_backend(monkeypatch):
    seen = []
    real = backend_mod.compile_graph
    monkeypatch.setattr(backend_mod, "compile_graph", lambda gm, ex, opts, *a: seen.append(opts) or real(gm, ex, opts, *a))
    x = torch.ones(4)
    torch.compile(lambda t: t + 1, backend="nvfp4_marlin", mode="reduce-overhead")(x)
    torch._dynamo.reset()
    torch.compile(lambda t: t + 2, backend="nvfp4_marlin", options={"gemm": "bf16", "max_autotune": False})(x)
    torch._dynamo.reset()
    torch.compile(lambda t: t + 3, backend="nvfp4_marlin", options={"mode": "max-autotune-no-cudagraphs"})(x)
    torch._dynamo.reset()
    torch.compile(lambda t: t + 4, backend=nvfp4_compile.backend_with(mode="reduce-overhead", target="cpu"))(x)
    assert [o.mode for o in seen] == ["reduce-overhead", None, "max-autotune-no-cudagraphs", "reduce-overhead"]
    assert seen[1].gemm == "bf16" and seen[1].inductor == {"max_autotune": False}
    assert seen[3].target == "cpu"
    # torch.compile itself refuses mode and options together (as for Inductor): options["mode"] is the way.
    with pytest.raises(RuntimeError, match="Either mode or options"):
        torch.compile(lambda t: t, backend="nvfp4_marlin", mode="reduce-overhead", options={"target": "cpu"})


def test_options_map_to_inductor_config_like_torch_compile():
    opts = BackendOptions.parse("reduce-overhead", {"coordinate_descent_tuning": True, "dump_dir": "/tmp/x"})
    assert opts.dump_dir == "/tmp/x"
    assert opts.inductor_config() == {"triton.cudagraphs": True, "coordinate_descent_tuning": True}
    assert BackendOptions.parse(None, {"max-autotune": True}).inductor_config() == {"max_autotune": True}
    assert BackendOptions.parse().inductor_config() == {}


def test_dump_dir_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("NVFP4_COMPILE_DUMP_DIR", "/tmp/from_env")
    assert BackendOptions.parse().dump_dir == "/tmp/from_env"
    assert BackendOptions.parse(None, {"dump_dir": "/tmp/explicit"}).dump_dir == "/tmp/explicit"


@pytest.mark.parametrize(
    "mode, options, message",
    [
        (None, {"no_such_option": 1}, "unknown option 'no_such_option'"),
        (None, {"target": "sm100"}, "target must be one of"),
        (None, {"gemm": "cublas"}, "gemm must be one of"),
        ("fast", None, "mode must be one of"),
        ("default", {"mode": "reduce-overhead"}, "conflicts"),
    ],
)
def test_bad_options_raise_clear_errors(mode, options, message):
    with pytest.raises(ValueError, match=message):
        BackendOptions.parse(mode, options)

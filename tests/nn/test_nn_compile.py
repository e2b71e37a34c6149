"""Dynamo captures models with NVFP4 modules whole (fullgraph=True: a graph break is an error), the graph
holds the source ops the backend's passes look for, and the compiled model computes the same values."""
import pytest
import torch
from torch import nn

from nvfp4_compile import quantize_model

OPS = {"nvfp4": {"nvfp4.quantize", "nvfp4.gemm", "nvfp4.fused_moe"}, "bf16": {"nvfp4.dequantize", "nvfp4.fused_moe"}}


def _op_names(gm: torch.fx.GraphModule) -> set[str]:
    # Dynamo records the op packets the modules call (torch.ops.nvfp4.gemm), later stages the overloads.
    return {str(n.target).removesuffix(".default") for n in gm.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("act", ["nvfp4", "bf16"])
def test_fullgraph_capture(tiny_net, randn, act):
    torch._dynamo.reset()
    model = tiny_net()
    quantize_model(model, act=act)
    x = randn(2, 5, 64, dtype=torch.bfloat16, seed=1)
    want = model(x)

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    # The tiny MoE block routes with a Python loop over experts inside the *floating* experts module;
    # after conversion the experts are a single fused_moe call, so the whole model is one graph.
    got = torch.compile(model, backend=capture, fullgraph=True)(x)
    assert len(graphs) == 1
    found = _op_names(graphs[0])
    assert OPS[act] <= found, found
    assert ("nvfp4.quantize" in found) == (act == "nvfp4")
    assert torch.equal(got, want)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(model, backend="eager", fullgraph=True)(x), want)


def test_dynamic_batch_no_recompile_error(randn):
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(64, 32), nn.SiLU(), nn.Linear(32, 16)).to(torch.bfloat16)
    quantize_model(model, act="nvfp4", skip=())
    compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=True)
    for m in (3, 7, 130):
        x = randn(m, 64, dtype=torch.bfloat16, seed=m)
        assert torch.equal(compiled(x), model(x))

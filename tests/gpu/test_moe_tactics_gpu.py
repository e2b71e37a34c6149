"""Every tactic of nvfp4::marlin_moe on the GPU (ops/moe_tactics.py): each grouped-GEMM tile of the kernel
forced, and dequantize + torch._grouped_mm, against fused_moe's W4A16 reference; gemm="auto" and its cached
choice; the dequant tactic's expert stacks, out-of-range ids, determinism and CUDA-graph replay."""
import pytest
import torch

import nvfp4_compile  # noqa: F401  registers torch.ops.nvfp4.*
from nvfp4_compile.formats.marlin import marlin_dequantize
from nvfp4_compile.ops import _C, moe_tactics
from nvfp4_compile.ops.tactics import TacticCache, TacticSelector
from test_marlin_moe_gpu import DEV, check_close, gen, make_problem, poison_allocator, reference, routing

ops = torch.ops.nvfp4
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SHAPES = [(8, 2, 64, 256, 192), (16, 4, 300, 208, 240), (64, 8, 7, 128, 64), (8, 2, 1024, 512, 256)]


def tactic_names():
    assert moe_tactics.available(), f"CUDA available but the MoE tactics are missing: {_C.LOAD_ERROR}"
    return moe_tactics.tactic_set().names


def run_tactic(name, x, ids, weights, marlin, act, inter):
    poison_allocator()
    return moe_tactics.tactic_set().get(name).run(x, ids, weights, *marlin, act, inter)


def test_tactic_set_has_every_tile_and_dequant():
    assert tactic_names() == ("marlin.m16", "marlin.m32", "marlin.m64", "marlin.large", "dequant")


@pytest.mark.parametrize("e,k,m,h,i", SHAPES)
@pytest.mark.parametrize("activation", ["silu", "relu2"])
def test_every_tactic_matches_reference(e, k, m, h, i, activation):
    x, ids, weights, source, marlin, act, inter = make_problem(e, k, m, h, i, activation, seed=3 * e + m)
    ref = reference(x, ids, weights, source, act)
    for name in tactic_names():
        check_close(run_tactic(name, x, ids, weights, marlin, act, inter), ref)


@pytest.mark.parametrize("tile", range(4))
def test_forced_tiles_in_fp16_with_skewed_routing(tile):
    x, ids, weights, source, marlin, act, inter = make_problem(16, 2, 200, 256, 128, dtype=torch.float16,
                                                               skew=(3, 0.9), unused=(0, 11))
    poison_allocator()
    out = torch.ops.nvfp4_C.marlin_moe(x, ids, weights, *marlin, 0, inter, tile)
    check_close(out, reference(x, ids, weights, source, act))


def test_stack_dequantize_is_the_reference_dequantize():
    _, _, _, _, marlin, _, inter = make_problem(4, 2, 8, 208, 240)
    q13, s13, gs13, q2, s2, gs2 = marlin
    for q, s, gs, n, k in ((q13, s13, gs13, 2 * inter, 208), (q2, s2, gs2, 208, inter)):
        got = torch.ops.nvfp4_C.marlin_dequantize(q, s, gs, n, k, torch.bfloat16)
        assert torch.equal(got, marlin_dequantize(q, s, gs, n, k, torch.bfloat16))


def test_dequant_tactic_out_of_range_ids_and_determinism():
    x, ids, weights, source, marlin, act, inter = make_problem(8, 2, 33, 256, 128)
    bad = ids.clone()
    bad[::3, 1] = -1
    bad[1::5, 0] = 8
    out = ops.marlin_moe(x, bad, weights, *marlin, act, inter, "dequant")
    keep = (bad >= 0) & (bad < 8)
    check_close(out, reference(x, torch.where(keep, bad, ids), torch.where(keep, weights, torch.zeros_like(weights)),
                               source, act))
    assert torch.equal(out, ops.marlin_moe(x, bad, weights, *marlin, act, inter, "dequant"))


def test_dequant_for_fp16_runs_the_kernel():
    x, ids, weights, source, marlin, act, inter = make_problem(8, 2, 40, 256, 128, dtype=torch.float16)
    out = ops.marlin_moe(x, ids, weights, *marlin, act, inter, "dequant")
    assert torch.equal(out, ops.marlin_moe(x, ids, weights, *marlin, act, inter, "marlin"))


def test_auto_profiles_once_and_follows_the_cache(tmp_path):
    x, ids, weights, source, marlin, act, inter = make_problem(8, 2, 64, 256, 192)
    sel = TacticSelector(moe_tactics.tactic_set(), "test", TacticCache(str(tmp_path)))
    moe_tactics.set_selector(sel)
    try:
        out = ops.marlin_moe(x, ids, weights, *marlin, act, inter, "auto")
        key = moe_tactics.problem_key(x, ids, marlin[0], act, inter)
        choice = sel.choice(key)
        assert choice is not None and set(choice.times_ms) == set(tactic_names()) and not choice.failed
        check_close(out, reference(x, ids, weights, source, act))
        assert torch.equal(out, moe_tactics.tactic_set().get(choice.best).run(x, ids, weights, *marlin, act, inter))
        assert list(tmp_path.glob("*.json")), "the choice is kept on disk"
    finally:
        moe_tactics.set_selector(None)


def test_dequant_tactic_under_cuda_graph_replay():
    e, k, m = 16, 4, 96
    x, ids, weights, source, marlin, act, inter = make_problem(e, k, m, 256, 128)
    static = [x.clone(), ids.clone(), weights.clone()]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.marlin_moe(*static, *marlin, act, inter, "dequant")
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = ops.marlin_moe(*static, *marlin, act, inter, "dequant")
    hot = torch.zeros_like(ids)
    hot[:, 1:] = torch.arange(1, k, device=DEV)  # every token: expert 0 in slot 0
    for seed, new_ids in [(1, None), (2, hot)]:
        nx = torch.randn(m, 256, generator=gen(seed)).to(x.dtype).to(DEV)
        nids, nw = routing(m, e, k, seed) if new_ids is None else (new_ids, weights)
        for dst, src in zip(static, (nx, nids, nw)):
            dst.copy_(src)
        static_out.fill_(float("nan"))
        graph.replay()
        eager = ops.marlin_moe(nx, nids, nw, *marlin, act, inter, "dequant")
        torch.cuda.synchronize()
        assert torch.equal(static_out, eager), f"replay {seed} differs from the eager run"
        check_close(static_out, reference(nx, nids, nw, source, act))

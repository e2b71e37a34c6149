"""The CUDA MoE path of nvfp4::marlin_moe (csrc/moe/) against the torch reference (fused_moe's W4A16 path on
the same weights), the GPU token/expert alignment against its definition, and CUDA-graph replay.

GPU tests skip without CUDA; on a CUDA machine the compiled extension must be loaded (a missing build fails
loudly rather than silently testing the torch fallback). The CPU tests at the end cover the Python dispatch.
"""
import pytest
import torch

import nvfp4_compile  # noqa: F401  registers torch.ops.nvfp4.*
from nvfp4_compile.ops import _C
from nvfp4_compile.ops import marlin_moe as marlin_moe_module

ops = torch.ops.nvfp4
DEV = "cuda"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = 1e-2  # ||out - ref|| / ||ref||: the kernel rounds two intermediates to x.dtype, the reference does not


def gen(seed):
    return torch.Generator(device="cpu").manual_seed(seed)


def expert_stack(e, rows, k, seed, device=None):
    """Random packed FP4 bytes, positive E4M3 block scales over 2^-6..16, decode scales ~ 1/(3 sqrt(k))."""
    g = gen(seed)
    w = torch.randint(0, 256, (e, rows, k // 2), dtype=torch.uint8, generator=g)
    sf = torch.exp2(torch.rand(e, rows, k // 16, generator=g) * 10 - 6).to(torch.float8_e4m3fn)
    gs = (torch.rand(e, generator=g) + 0.5) / (3 * k**0.5)
    device = device or DEV
    return w.to(device), sf.to(device), gs.to(device)


def routing(m, e, k, seed, skew=None, unused=(), id_dtype=torch.int64, weight_dtype=torch.float32, device=None):
    """topk_ids [m, k] with distinct experts per token (never those in `unused`); skew=(expert, fraction)
    puts `expert` in slot 0 of that fraction of tokens. Router weights: softmax of random logits."""
    g = gen(seed)
    allowed = torch.tensor([x for x in range(e) if x not in set(unused)])
    assert allowed.numel() >= k
    ids = torch.stack([allowed[torch.randperm(allowed.numel(), generator=g)[:k]] for _ in range(m)])
    if skew is not None:
        hot, frac = skew
        for t in range(int(m * frac)):
            row = ids[t]
            where = (row == hot).nonzero()
            if where.numel():
                row[where[0, 0]] = row[0]
            row[0] = hot
    weights = torch.softmax(torch.randn(m, k, generator=g), dim=-1)
    device = device or DEV
    return ids.to(id_dtype).to(device), weights.to(weight_dtype).to(device)


def make_problem(e, k, m, h, i, activation="silu", dtype=torch.bfloat16, seed=0, **route):
    rows13 = 2 * i if activation == "silu" else i
    w13, w13_sf, w13_gs = expert_stack(e, rows13, h, seed + 1)
    w2, w2_sf, w2_gs = expert_stack(e, h, i, seed + 2)
    x = torch.randn(m, h, generator=gen(seed + 3)).to(dtype).to(DEV)
    ids, weights = routing(m, e, k, seed + 4, **route)
    q13, s13 = ops.marlin_repack(w13, w13_sf)
    q2, s2 = ops.marlin_repack(w2, w2_sf)
    source = (w13, w13_sf, w13_gs, w2, w2_sf, w2_gs)
    marlin = (q13, s13, w13_gs, q2, s2, w2_gs)
    return x, ids, weights, source, marlin, activation, i


def poison_allocator():
    """Fill freed caching-allocator blocks (large pool and a few small-pool blocks) with NaN bytes, so buffers
    allocated next from them show every element the kernels fail to write."""
    blocks = [torch.full((96 << 20,), 0xFF, dtype=torch.uint8, device=DEV)]
    blocks += [torch.full((1 << 19,), 0xFF, dtype=torch.uint8, device=DEV) for _ in range(16)]
    del blocks


def run_marlin(x, ids, weights, marlin, activation, inter):
    poison_allocator()
    return ops.marlin_moe(x, ids, weights, *marlin, activation, inter)


def reference(x, ids, weights, source, activation):
    return ops.fused_moe(x, ids, weights, *source, None, None, activation)


def rel_err(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def check_close(out, ref):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all(), "non-finite output: an element was not written or overflowed"
    err = rel_err(out, ref)
    assert err < TOL, f"relative error {err:.2e}"
    return err


# ------------------------------------------------------------------------------------------------------
# Alignment: sorted ids, padding, tile experts, total (the private op nvfp4_C.moe_align)
# ------------------------------------------------------------------------------------------------------


def check_alignment(ids, e, rows):
    sorted_ids, tile_expert, num_padded = torch.ops.nvfp4_C.moe_align(ids, e, rows)
    flat = ids.reshape(-1).long().cpu()
    n = flat.numel()
    valid = (flat >= 0) & (flat < e)
    counts = torch.bincount(flat[valid], minlength=e)
    padded = (counts + rows - 1) // rows * rows
    total = int(padded.sum())
    assert int(num_padded.item()) == total
    assert sorted_ids.numel() >= total and sorted_ids.numel() % rows == 0
    s = sorted_ids.cpu()[:total]
    t = tile_expert.cpu()[: total // rows]
    start = 0
    for x in range(e):
        run = s[start : start + int(padded[x])]
        real = run[run < n]
        assert real.numel() == int(counts[x]), f"expert {x}: {real.numel()} ids, expected {int(counts[x])}"
        assert torch.equal(real.sort().values, (flat == x).nonzero().reshape(-1).sort().values)
        assert torch.equal(run[real.numel():], torch.full((run.numel() - real.numel(),), n)), "pads last"
        assert (t[start // rows : (start + int(padded[x])) // rows] == x).all()
        start += int(padded[x])


@needs_gpu
@pytest.mark.parametrize("e,k,m,rows", [(8, 2, 1, 16), (512, 16, 300, 16), (128, 8, 4096, 128), (64, 4, 33, 64),
                                        (3, 1, 5000, 16)])
def test_align_matches_definition(e, k, m, rows):
    ids, _ = routing(m, e, k, seed=m, id_dtype=torch.int32)
    check_alignment(ids, e, rows)


@needs_gpu
def test_align_skewed_empty_and_out_of_range_experts():
    ids, _ = routing(2000, 64, 4, seed=1, skew=(5, 0.95), unused=(0, 7, 63))
    ids[3, 1] = -1  # routed nowhere
    ids[9, 0] = 64
    check_alignment(ids, 64, 16)


# ------------------------------------------------------------------------------------------------------
# marlin_moe vs the reference
# ------------------------------------------------------------------------------------------------------

# (E, top-k, M, H, I): each row tile config (16-row, 64-row, large) at least twice; H, I not multiples of 64
CASES = [
    (8, 2, 1, 512, 256),
    (8, 2, 64, 512, 256),
    (8, 2, 256, 256, 384),
    (8, 2, 512, 208, 240),
    (64, 8, 7, 256, 128),
    (128, 8, 64, 256, 128),
    (128, 1, 4096, 256, 128),
    (128, 8, 1024, 128, 64),
]


def test_case_ids():
    assert len(CASES) == len(set(CASES))


@needs_gpu
@pytest.mark.parametrize("e,k,m,h,i", CASES)
@pytest.mark.parametrize("activation", ["silu", "relu2"])
def test_matches_reference(e, k, m, h, i, activation):
    assert _C.has_kernel("marlin_moe"), f"CUDA available but the MoE kernel is missing: {_C.LOAD_ERROR}"
    x, ids, weights, source, marlin, act, inter = make_problem(e, k, m, h, i, activation, seed=e + k + m)
    out = run_marlin(x, ids, weights, marlin, act, inter)
    check_close(out, reference(x, ids, weights, source, act))


@needs_gpu
@pytest.mark.parametrize("dtype,id_dtype,weight_dtype", [(torch.float16, torch.int32, torch.float32),
                                                         (torch.bfloat16, torch.int32, torch.bfloat16),
                                                         (torch.float16, torch.int64, torch.float16)])
def test_dtypes(dtype, id_dtype, weight_dtype):
    x, ids, weights, source, marlin, act, inter = make_problem(
        16, 2, 40, 256, 192, dtype=dtype, id_dtype=id_dtype, weight_dtype=weight_dtype)
    check_close(run_marlin(x, ids, weights, marlin, act, inter), reference(x, ids, weights, source, act))


@needs_gpu
@pytest.mark.parametrize("m", [64, 4096])
def test_skewed_routing_and_idle_experts_deterministic(m):
    x, ids, weights, source, marlin, act, inter = make_problem(
        16, 2, m, 256, 128, skew=(3, 0.9), unused=(0, 11))
    out = run_marlin(x, ids, weights, marlin, act, inter)
    check_close(out, reference(x, ids, weights, source, act))
    again = run_marlin(x, ids, weights, marlin, act, inter)
    assert torch.equal(out, again), "same inputs, different bits: a race"


@needs_gpu
def test_out_of_range_ids_add_nothing():
    x, ids, weights, source, marlin, act, inter = make_problem(8, 2, 33, 256, 128)
    bad = ids.clone()
    bad[::3, 1] = -1
    bad[1::5, 0] = 8
    out = run_marlin(x, bad, weights, marlin, act, inter)
    keep = (bad >= 0) & (bad < 8)
    ref = reference(x, torch.where(keep, bad, ids), torch.where(keep, weights, torch.zeros_like(weights)), source, act)
    check_close(out, ref)


@needs_gpu
def test_empty_batch():
    x, ids, weights, _, marlin, act, inter = make_problem(8, 2, 4, 128, 64)
    out = ops.marlin_moe(x[:0], ids[:0], weights[:0], *marlin, act, inter)
    assert out.shape == (0, 128)


@needs_gpu
def test_cuda_graph_replay_follows_new_routing():
    """One capture, several routings (the worst case included: every token on one expert): the routing is
    computed on the GPU into buffers sized for the worst case, so replays must equal eager runs."""
    e, k, m = 32, 4, 96
    x, ids, weights, source, marlin, act, inter = make_problem(e, k, m, 256, 128)
    static_x, static_ids, static_w = x.clone(), ids.clone(), weights.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.marlin_moe(static_x, static_ids, static_w, *marlin, act, inter)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = ops.marlin_moe(static_x, static_ids, static_w, *marlin, act, inter)
    hot = torch.zeros_like(ids)
    hot[:, 1:] = torch.arange(1, k, device=DEV)  # every token: expert 0 in slot 0
    for seed, new_ids in [(1, None), (2, hot), (3, None)]:
        nx = torch.randn(m, 256, generator=gen(seed)).to(x.dtype).to(DEV)
        nids, nw = routing(m, e, k, seed) if new_ids is None else (new_ids, weights)
        static_x.copy_(nx)
        static_ids.copy_(nids)
        static_w.copy_(nw)
        static_out.fill_(float("nan"))
        graph.replay()
        eager = ops.marlin_moe(nx, nids, nw, *marlin, act, inter)
        torch.cuda.synchronize()
        assert torch.equal(static_out, eager), f"replay {seed} differs from the eager run"
        check_close(static_out, reference(nx, nids, nw, source, act))


class ExpertsModule(torch.nn.Module):
    """fused_moe over expert stacks held as buffers (what the moe pass rewrites)."""

    def __init__(self, source, activation):
        super().__init__()
        for name, t in zip(("w13", "w13_sf", "w13_gs", "w2", "w2_sf", "w2_gs"), source):
            self.register_buffer(name, t)
        self.activation = activation

    def forward(self, x, ids, weights):
        return ops.fused_moe(x, ids, weights, self.w13, self.w13_sf, self.w13_gs, self.w2, self.w2_sf, self.w2_gs,
                             None, None, self.activation)


@needs_gpu
def test_compiled_backend_runs_the_kernel():
    """fused_moe in a compiled module goes through the moe pass to this kernel: bits equal to marlin_moe."""
    x, ids, weights, source, marlin, act, inter = make_problem(8, 2, 16, 256, 128)
    compiled = torch.compile(ExpertsModule(source, act), backend="nvfp4_marlin")(x, ids, weights)
    assert torch.equal(compiled, run_marlin(x, ids, weights, marlin, act, inter))


# ------------------------------------------------------------------------------------------------------
# CPU: the CUDA registration without the extension (the dispatch to tactics: tests/ops/test_moe_tactics.py)
# ------------------------------------------------------------------------------------------------------


def cpu_problem(activation="silu"):
    e, k, m, h, i = 4, 2, 5, 64, 32
    rows13 = 2 * i if activation == "silu" else i
    w13 = expert_stack(e, rows13, h, 1, device="cpu")
    w2 = expert_stack(e, h, i, 2, device="cpu")
    x = torch.randn(m, h, generator=gen(3)).to(torch.bfloat16)
    ids, weights = routing(m, e, k, 4, device="cpu")
    q13, s13 = ops.marlin_repack(w13[0], w13[1])
    q2, s2 = ops.marlin_repack(w2[0], w2[1])
    return x, ids, weights, (*w13, *w2), (q13, s13, w13[2], q2, s2, w2[2]), activation, i


@pytest.mark.parametrize("activation", ["silu", "relu2"])
def test_cuda_registration_without_kernel_is_the_reference(monkeypatch, activation):
    monkeypatch.setattr(_C, "has_kernel", lambda name: False)
    x, ids, weights, source, marlin, act, inter = cpu_problem(activation)
    got = marlin_moe_module._marlin_moe_cuda(x, ids, weights, *marlin, act, inter)
    assert torch.equal(got, reference(x, ids, weights, source, act))

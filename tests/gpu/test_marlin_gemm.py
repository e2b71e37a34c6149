"""The CUDA Marlin kernels (csrc/) against the Python layout reference and an FP32 GEMM reference.

Kernel tests force gemm="marlin" (the W4A16 kernel, config by M) or call nvfp4_C.marlin_gemm with each tile
config forced; gemm="auto" may pick the dequantize + cuBLAS tactic and is checked separately.
Skips without CUDA. On a CUDA machine the compiled extension must be loaded (a missing build fails loudly
rather than silently testing the torch fallback)."""
import random

import pytest
import torch

import nvfp4_compile  # noqa: F401  registers torch.ops.nvfp4.*
from nvfp4_compile.formats import dequantize_nvfp4, quantize_nvfp4
from nvfp4_compile.formats.marlin import marlin_repack_reference, scale_values_from_codes
from nvfp4_compile.ops import _C

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ops = torch.ops.nvfp4
DEV = "cuda"
ALL_E4M3 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
FINITE_E4M3 = ALL_E4M3[~torch.isnan(ALL_E4M3.float())]


def gen(seed):
    return torch.Generator(device="cpu").manual_seed(seed)


def random_fp4(*shape_nk, seed, pool=None):
    """Random packed FP4 bytes and block scales drawn from `pool` (default: every finite E4M3 value)."""
    *lead, n, k = shape_nk
    g = gen(seed)
    w = torch.randint(0, 256, (*lead, n, k // 2), dtype=torch.uint8, generator=g)
    pool = FINITE_E4M3 if pool is None else pool
    sf = pool[torch.randint(0, pool.numel(), (*lead, n, k // 16), generator=g)]
    return w, sf


def poisoned_output_block(numel, dtype):
    """Fill a freed caching-allocator block of the output's size with NaN, so an output allocated next from
    it shows every element the kernel failed to write. Returns the block's address."""
    t = torch.full((numel,), float("nan"), dtype=dtype, device=DEV)
    ptr = t.data_ptr()
    del t
    return ptr


def test_extension_is_loaded():
    assert _C.LOADED, f"CUDA available but nvfp4_compile._C failed to load: {_C.LOAD_ERROR}"
    assert _C.has_kernel("marlin_gemm") and _C.has_kernel("marlin_repack")


# ------------------------------------------------------------------------------------------------------
# Repack: bytes identical to the Python reference
# ------------------------------------------------------------------------------------------------------

REPACK_SHAPES = [(1, 16), (64, 64), (63, 48), (100, 240), (192, 208), (130, 1856), (4096, 128), (320, 4096)]


@pytest.mark.parametrize("n,k", REPACK_SHAPES)
def test_repack_is_byte_identical_to_reference(n, k):
    w, sf = random_fp4(n, k, seed=n * 7 + k)
    q_ref, s_ref = marlin_repack_reference(w, sf)
    q, s = ops.marlin_repack(w.to(DEV), sf.to(DEV))
    assert torch.equal(q.cpu(), q_ref) and torch.equal(s.cpu(), s_ref)


@pytest.mark.parametrize("lead", [(3,), (2, 2)])
def test_repack_expert_stacks_are_byte_identical(lead):
    w, sf = random_fp4(*lead, 72, 80, seed=sum(lead))
    q_ref, s_ref = marlin_repack_reference(w, sf)
    q, s = ops.marlin_repack(w.to(DEV), sf.to(DEV))
    assert torch.equal(q.cpu(), q_ref) and torch.equal(s.cpu(), s_ref)


def test_repack_rejects_nan_scales():
    w, sf = random_fp4(64, 32, seed=1)
    sf = sf.clone()
    sf.view(torch.uint8)[0, 0] = 0x7F
    with pytest.raises(ValueError, match="w_sf holds 1 NaN"):
        ops.marlin_repack(w.to(DEV), sf.to(DEV))


# ------------------------------------------------------------------------------------------------------
# GEMM numerics
# ------------------------------------------------------------------------------------------------------


def reference_gemm(x, w, sf, gs, bias=None):
    """dequantize (exact) + FP32 matmul (no TF32) + global scale + bias, FP32."""
    wd = dequantize_nvfp4(w, sf, torch.ones((), device=w.device), torch.float32)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out = (x.float().reshape(-1, x.shape[-1]) @ wd.T) * gs.float()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    if bias is not None:
        out = out + bias.float()
    return out.reshape(*x.shape[:-1], w.shape[0])


def run_gemm(x, q, s, gs, bias, n, k, gemm="marlin", config=None):
    """The op (gemm tactic) or, with `config`, the kernel with that tile config forced; poisoned output."""
    poisoned = poisoned_output_block(x.numel() // k * n, x.dtype)
    if config is None:
        out = ops.marlin_gemm(x, q, s, gs, bias, n, k, gemm)
    else:
        out = torch.ops.nvfp4_C.marlin_gemm(x, q, s, gs.reshape(-1), bias, n, k, config)
    torch.cuda.synchronize()
    return out, out.data_ptr() == poisoned


def rel_err(out, ref):
    return ((out.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


M_VALUES = list(range(1, 18)) + [31, 33, 127, 128, 129, 1000, 4096]
N_VALUES = [64, 192, 4096, 14336]
K_VALUES = [128, 192, 4096, 14336]


def gemm_cases(count=56, seed=0):
    """A fixed random subset of M x N x K (with dtype and bias), capped in work so the suite stays fast."""
    rng = random.Random(seed)
    grid = [(m, n, k) for m in M_VALUES for n in N_VALUES for k in K_VALUES if m * n * k <= 2**34]
    picks = rng.sample(grid, count)
    return [(m, n, k, rng.choice(["bf16", "fp16"]), rng.random() < 0.5) for m, n, k in picks]


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("m,n,k,dtype,with_bias", gemm_cases())
def test_gemm_matches_fp32_reference(m, n, k, dtype, with_bias):
    dtype = DTYPES[dtype]
    g = torch.Generator(device=DEV).manual_seed(m * 1_000_003 + n * 101 + k)
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV, generator=g) * 0.02)
    q, s = ops.marlin_repack(w, sf)
    x = torch.randn(m, k, device=DEV, generator=g).to(dtype)
    bias = torch.randn(n, device=DEV, generator=g).to(dtype) if with_bias else None
    out, poisoned = run_gemm(x, q, s, gs, bias, n, k)
    ref = reference_gemm(x, w, sf, gs, bias)
    assert out.dtype == dtype and tuple(out.shape) == (m, n)
    assert not torch.isnan(out).any(), f"unwritten (NaN) outputs; poisoned block reused: {poisoned}"
    assert rel_err(out, ref) < 1e-2


# nvfp4_C.marlin_gemm_configs()
CONFIG_NAMES = ["m16", "m32", "m64", "large", "gemv8", "wg64x512", "wg64x256", "wg128x256", "wg256x128", "wg64x256w4",
                "wg128x256w4", "gemv16", "sw16x512", "gemv16b", "gemv8b", "wg128x128", "wg64x128"]
CONFIGS = range(len(CONFIG_NAMES))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 16, 40, 2304])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_NAMES)
def test_identity_gemm_reproduces_every_weight_exactly(dtype, m, config):
    """x = rows of the identity: out[i, n] = w[n, i] exactly (one product, no accumulation rounding). Block b
    of every row has the b-th finite E4M3 value as its scale (all 254: +-0, subnormals, up to +-448) over
    random nibbles, so every (nibble, scale) pair goes through the in-register dequantization."""
    n, k = 64, 16 * 256
    g = gen(m)
    w = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
    scales = torch.cat([FINITE_E4M3, torch.zeros(256 - FINITE_E4M3.numel()).to(torch.float8_e4m3fn)])
    sf = scales[torch.randperm(256, generator=g)].repeat(n, 1)
    w, sf = w.to(DEV), sf.to(DEV)
    q, s = ops.marlin_repack(w, sf)
    rows = torch.randperm(k, generator=g)[:m].sort().values.to(DEV)
    x = torch.eye(k, device=DEV, dtype=dtype)[rows]
    gs = torch.ones((), device=DEV)
    out, _ = run_gemm(x, q, s, gs, None, n, k, config=config)
    expected = dequantize_nvfp4(w, sf, gs, torch.float32).T[rows]
    assert torch.equal(out.float(), expected), (out.float() - expected).abs().max()


def test_config_names():
    assert list(torch.ops.nvfp4_C.marlin_gemm_configs()) == CONFIG_NAMES


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_NAMES)
@pytest.mark.parametrize("m,n,k", [(1, 192, 4096), (33, 100, 240), (200, 4096, 192), (7, 130, 1856)])
def test_every_tile_config_on_any_m(config, m, n, k):
    """Each config is correct for any M (tiles beyond M, N, K padding, split-K on and off), with bias."""
    g = torch.Generator(device=DEV).manual_seed(config * 7919 + m * 31 + n)
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV, generator=g))
    q, s = ops.marlin_repack(w, sf)
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(m, k, device=DEV, generator=g).to(dtype)
        bias = torch.randn(n, device=DEV, generator=g).to(dtype)
        out, _ = run_gemm(x, q, s, gs, bias, n, k, config=config)
        assert not torch.isnan(out).any()
        assert rel_err(out, reference_gemm(x, w, sf, gs, bias)) < 1e-2


# The decode kernel (csrc/marlin/gemv_kernel.cuh): weights streamed into registers, 8- or 16-row tiles.
GEMV8, GEMV16, GEMV16B, GEMV8B = (CONFIG_NAMES.index(c) for c in ("gemv8", "gemv16", "gemv16b", "gemv8b"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (8, 6144, 4096), (3, 4096, 14336), (5, 28672, 4096),
                                   (2, 100, 240), (7, 130, 1856), (9, 192, 4096), (17, 64, 112), (4, 14336, 16),
                                   (16, 8192, 8192), (12, 6144, 4096), (13, 130, 1856), (33, 192, 4096)])
@pytest.mark.parametrize("config", [GEMV8, GEMV16, GEMV16B, GEMV8B], ids=["gemv8", "gemv16", "gemv16b", "gemv8b"])
def test_gemv_config_on_decode_shapes(config, dtype, m, n, k):
    """The decode kernel on the decode GEMMs of an 8B model and on awkward ones: N and K not multiples of 64,
    M over one tile (and one row group), one k16 step, deep split-K; fresh random weights over the whole E4M3
    range."""
    w, sf = random_fp4(n, k, seed=m * 7 + n + k, pool=FINITE_E4M3[FINITE_E4M3.float().abs() > 0.5])
    w, sf = w.to(DEV), sf.to(DEV)
    q, s = ops.marlin_repack(w, sf)
    g = torch.Generator(device=DEV).manual_seed(m + k)
    x = torch.randn(m, k, device=DEV, generator=g).to(dtype)
    bias = torch.randn(n, device=DEV, generator=g).to(dtype)
    gs = torch.tensor(1e-3, device=DEV)
    out, _ = run_gemm(x, q, s, gs, bias, n, k, config=config)
    assert not torch.isnan(out).any()
    assert rel_err(out, reference_gemm(x, w, sf, gs, bias)) < 1e-2


def assert_graph_replays_reproduce(run, expected, replays=3):
    """Captures run() in a CUDA graph; every replay must reproduce `expected` bit for bit."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = run()
    for _ in range(replays):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out, expected)


@pytest.mark.parametrize("config,m,k", [
    (GEMV8, 4, 14336), (GEMV16, 12, 14336), (GEMV16B, 12, 14336), (GEMV8B, 5, 14336),
    *((CONFIG_NAMES.index(c), 200, 8192) for c in CONFIG_NAMES if c.startswith("wg")),
    *((CONFIG_NAMES.index(c), 12, 8192) for c in CONFIG_NAMES if c.startswith("sw"))],
                         ids=["gemv8", "gemv16", "gemv16b", "gemv8b",
                              *(c for c in CONFIG_NAMES if c.startswith(("wg", "sw")))])
def test_config_deterministic_under_cuda_graph_replay(config, m, k):
    """The decode and wgmma kernels (split-K in clusters or with atomic tile counters) replay bit-identically in a
    CUDA graph."""
    n = 4096
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV))
    q, s = ops.marlin_repack(w, sf)
    static_x = torch.randn(m, k, device=DEV).to(torch.bfloat16)
    run = lambda: torch.ops.nvfp4_C.marlin_gemm(static_x, q, s, gs.reshape(-1), None, n, k, config)  # noqa: E731
    eager = run()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    assert_graph_replays_reproduce(run, eager)
    assert rel_err(eager, reference_gemm(static_x, w, sf, gs)) < 1e-2


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_NAMES)
def test_split_k_in_clusters_is_bit_identical_to_workspace_path(config):
    """Split-K through thread-block clusters (Hopper default) and through the FP32 workspace + counters give the
    same bits: same partial sums, added in split order. Shapes give 1 .. 8 splits (clusters) and more (always
    the workspace path) for every config; both paths also match the FP32 reference."""
    if torch.cuda.get_device_capability()[0] != 9 and CONFIG_NAMES[config].startswith(("wg", "sw")):
        pytest.skip("wgmma configs need Hopper")
    cases = [(1, 4096, 4096), (3, 6144, 4096), (16, 14336, 2048), (64, 1024, 8192), (200, 4096, 8192),
             (5, 130, 1856), (1, 192, 14336)]
    for m, n, k in cases:
        w, sf = random_fp4(n, k, seed=m + n + k + config, pool=FINITE_E4M3[FINITE_E4M3.float().abs() > 0.5])
        w, sf = w.to(DEV), sf.to(DEV)
        q, s = ops.marlin_repack(w, sf)
        g = torch.Generator(device=DEV).manual_seed(m * 3 + config)
        x = torch.randn(m, k, device=DEV, generator=g).to(torch.bfloat16)
        bias = torch.randn(n, device=DEV, generator=g).to(torch.bfloat16)
        gs = torch.tensor(1e-3, device=DEV)
        previous = torch.ops.nvfp4_C.marlin_cluster_split_k(True)
        try:
            in_clusters, _ = run_gemm(x, q, s, gs, bias, n, k, config=config)
            torch.ops.nvfp4_C.marlin_cluster_split_k(False)
            by_workspace, _ = run_gemm(x, q, s, gs, bias, n, k, config=config)
        finally:
            torch.ops.nvfp4_C.marlin_cluster_split_k(previous)
        assert not torch.isnan(in_clusters).any() and not torch.isnan(by_workspace).any(), (m, n, k)
        assert torch.equal(in_clusters, by_workspace), (m, n, k)
        assert rel_err(in_clusters, reference_gemm(x, w, sf, gs, bias)) < 1e-2, (m, n, k)


def launched_with_clusters(run) -> bool:
    """Whether `run` launched a kernel through cudaLaunchKernelEx (the cluster path of split-K; the workspace path
    uses a plain launch), from the profiler's CUDA runtime events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    return any("LaunchKernelEx" in event.name for event in prof.events())


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] != 9, reason="Hopper")
@pytest.mark.parametrize("config,m,n,k", [(CONFIG_NAMES.index("wg256x128"), 256, 8192, 8192),
                                          (GEMV8, 1, 16384, 4096)], ids=["wg256x128", "gemv8"])
def test_split_k_in_clusters_replays_in_cuda_graph(config, m, n, k):
    """Shapes whose tiles split K in two (64 tiles of a 1-CTA/SM kernel, 128 of a 2-CTA/SM one: every cluster
    fits at once): the launch takes the cluster path, and a captured graph replays it bit-identically to the
    eager launch and to the workspace path."""
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV))
    q, s = ops.marlin_repack(w, sf)
    x = torch.randn(m, k, device=DEV).to(torch.bfloat16)
    run = lambda: torch.ops.nvfp4_C.marlin_gemm(x, q, s, gs.reshape(-1), None, n, k, config)  # noqa: E731
    previous = torch.ops.nvfp4_C.marlin_cluster_split_k(True)
    try:
        assert launched_with_clusters(run)
        eager = run()
        assert_graph_replays_reproduce(run, eager)
        torch.ops.nvfp4_C.marlin_cluster_split_k(False)
        assert not launched_with_clusters(run)
        assert torch.equal(run(), eager)
    finally:
        torch.ops.nvfp4_C.marlin_cluster_split_k(previous)
    assert rel_err(eager, reference_gemm(x, w, sf, gs)) < 1e-2


WGMMA_CONFIGS = [c for c in CONFIG_NAMES if c.startswith("wg")]


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] != 9, reason="Hopper")
@pytest.mark.parametrize("config", WGMMA_CONFIGS)
def test_fit_clusters_flag_splits_fewer_ways_in_clusters(config):
    """config | kConfigFitClusters: on shapes whose tiles split K into more clusters than fit at once (the plain
    config takes the workspace path there), the flagged launch takes the cluster path with fewer splits; results
    match the FP32 reference and replay bit-identically in a CUDA graph. Where the plain config's clusters fit,
    the flag changes nothing (same bits)."""
    flag = torch.ops.nvfp4_C.marlin_gemm_fit_clusters_flag()
    index = CONFIG_NAMES.index(config)
    took_fewer_splits = False
    for m, n, k in [(64, 4096, 4096), (256, 4096, 4096), (64, 8192, 8192), (100, 4096, 1024)]:
        w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV))
        q, s = ops.marlin_repack(w, sf)
        x = torch.randn(m, k, device=DEV).to(torch.bfloat16)
        bias = torch.randn(n, device=DEV).to(torch.bfloat16)
        plain = lambda: torch.ops.nvfp4_C.marlin_gemm(x, q, s, gs.reshape(-1), bias, n, k, index)  # noqa: E731
        fit = lambda: torch.ops.nvfp4_C.marlin_gemm(x, q, s, gs.reshape(-1), bias, n, k, index | flag)  # noqa: E731
        previous = torch.ops.nvfp4_C.marlin_cluster_split_k(True)
        try:
            plain_in_clusters = launched_with_clusters(plain)
            assert launched_with_clusters(fit), (m, n, k)
            expected = fit()
            assert_graph_replays_reproduce(fit, expected)
        finally:
            torch.ops.nvfp4_C.marlin_cluster_split_k(previous)
        if plain_in_clusters:
            assert torch.equal(plain(), expected), (m, n, k)
        took_fewer_splits |= not plain_in_clusters
        assert rel_err(expected, reference_gemm(x, w, sf, gs, bias)) < 1e-2, (m, n, k)
    assert took_fewer_splits, "no shape took the workspace path without the flag"


def test_config_flag_out_of_range_is_rejected():
    flag = torch.ops.nvfp4_C.marlin_gemm_fit_clusters_flag()
    x = torch.randn(1, 64, device=DEV).to(torch.bfloat16)
    q, s = ops.marlin_repack(*random_fp4(64, 64, seed=0))
    gs = torch.ones(1, device=DEV)
    for config in (len(CONFIG_NAMES), flag | len(CONFIG_NAMES), 2 * flag, -2):
        with pytest.raises(RuntimeError, match="config must be"):
            torch.ops.nvfp4_C.marlin_gemm(x, q.to(DEV), s.to(DEV), gs, None, 64, 64, config)


@pytest.mark.parametrize("config", [GEMV8, GEMV16, 0], ids=["gemv8", "gemv16", "m16"])
def test_split_k_counters_are_shared_safely_by_streams_and_graphs(config):
    """The workspace path's arrival counters are zeroed once and reused, not memset per launch
    (csrc/marlin/split_k_counters.h): launches racing on two streams, two captured graphs, and graph replays
    overlapping eager launches on another stream all give the eager result bit for bit."""
    n, k = 4096, 8192  # 32 or 64 tiles, split 4..8 ways
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV))
    q, s = ops.marlin_repack(w, sf)
    xs = [torch.randn(m, k, device=DEV).to(torch.bfloat16) for m in (1, 5, 8, 3)]
    run = lambda x: torch.ops.nvfp4_C.marlin_gemm(x, q, s, gs.reshape(-1), None, n, k, config)  # noqa: E731
    previous = torch.ops.nvfp4_C.marlin_cluster_split_k(False)
    try:
        expected = [run(x) for x in xs]
        for x, e in zip(xs, expected):
            assert rel_err(e, reference_gemm(x, w, sf, gs)) < 1e-2
        streams = [torch.cuda.Stream(), torch.cuda.Stream()]
        for stream in streams:
            stream.wait_stream(torch.cuda.current_stream())
        racing = [[], []]
        for _ in range(10):
            for i, stream in enumerate(streams):
                with torch.cuda.stream(stream):
                    racing[i] += [run(xs[i]), run(xs[i + 2])]
        torch.cuda.synchronize()
        for i in range(2):
            for j, out in enumerate(racing[i]):
                assert torch.equal(out, expected[i + 2 * (j % 2)])

        graphs, graph_outs = [torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()], []
        for g, (a, b) in zip(graphs, [(0, 1), (2, 3)]):
            with torch.cuda.graph(g):
                graph_outs.append((run(xs[a]), run(xs[b])))
        torch.cuda.synchronize()
        for _ in range(5):
            eager = []
            with torch.cuda.stream(streams[0]):
                graphs[0].replay()
            with torch.cuda.stream(streams[1]):
                graphs[1].replay()
                eager = [run(x) for x in xs]
            torch.cuda.synchronize()
            outs = [*graph_outs[0], *graph_outs[1]]
            for out, e in zip(outs + eager, expected + expected):
                assert torch.equal(out, e)
    finally:
        torch.ops.nvfp4_C.marlin_cluster_split_k(previous)


# The Hopper warpgroup-MMA kernels (csrc/marlin/wgmma_kernel.cuh, stream_wgmma_kernel.cuh)
WGMMA = {name: i for i, name in enumerate(CONFIG_NAMES) if name.startswith(("wg", "sw"))}


@pytest.mark.parametrize("config", WGMMA.values(), ids=WGMMA.keys())
@pytest.mark.parametrize("m,n,k", [(64, 4096, 4096), (256, 8192, 1024), (129, 14336, 4096), (1000, 4096, 14336),
                                   (64, 28672, 512), (4096, 1024, 2048), (33, 600, 1040), (255, 64, 64)])
def test_wgmma_configs_on_model_shapes(config, m, n, k):
    """The wgmma kernel where it is meant to run (M of 33 .. 4096, model-sized N and K: long k loops, every
    pipeline stage reused, split-K on and off) and on awkward sizes; BF16 and FP16, fresh weights over the
    whole E4M3 range, bias, poisoned outputs."""
    w, sf = random_fp4(n, k, seed=m * 13 + n + k + config, pool=FINITE_E4M3[FINITE_E4M3.float().abs() > 0.5])
    w, sf = w.to(DEV), sf.to(DEV)
    q, s = ops.marlin_repack(w, sf)
    g = torch.Generator(device=DEV).manual_seed(m + n + config)
    gs = torch.tensor(2e-3, device=DEV)
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(m, k, device=DEV, generator=g).to(dtype)
        bias = torch.randn(n, device=DEV, generator=g).to(dtype)
        out, poisoned = run_gemm(x, q, s, gs, bias, n, k, config=config)
        assert not torch.isnan(out).any(), f"unwritten (NaN) outputs; poisoned block reused: {poisoned}"
        assert rel_err(out, reference_gemm(x, w, sf, gs, bias)) < 1e-2


@pytest.mark.parametrize("tactic", [*CONFIGS, "dequant", "auto"], ids=[*CONFIG_NAMES, "dequant", "auto"])
@pytest.mark.parametrize("m,widths,k", [(1, (4096, 1024, 1024), 4096), (9, (40, 24, 96), 192), (300, (130, 70), 1856)])
def test_per_column_global_scale(tactic, m, widths, k):
    """Merged siblings (passes/merge_siblings.py): one global scale per output column, scales far apart."""
    g = torch.Generator(device=DEV).manual_seed(m * 131 + k)
    parts = [quantize_nvfp4(torch.randn(n, k, device=DEV, generator=g) * 10.0 ** (2 * i - 2))
             for i, n in enumerate(widths)]
    w, sf = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    gs = torch.cat([p[2].reshape(1).expand(n) for p, n in zip(parts, widths)]).contiguous()
    n = sum(widths)
    q, s = ops.marlin_repack(w, sf)
    x = torch.randn(m, k, device=DEV, generator=g).to(torch.bfloat16)
    bias = torch.randn(n, device=DEV, generator=g).to(torch.bfloat16)
    if tactic in ("dequant", "auto"):
        out, _ = run_gemm(x, q, s, gs, bias, n, k, gemm=tactic)
    else:
        out, _ = run_gemm(x, q, s, gs, bias, n, k, config=tactic)
    assert not torch.isnan(out).any()
    start = 0
    for (wp, sfp, gsp), width in zip(parts, widths):
        cols = slice(start, start + width)
        assert rel_err(out[:, cols], reference_gemm(x, wp, sfp, gsp, bias[cols])) < 1e-2
        start += width


@pytest.mark.parametrize("gemm", ["auto", "dequant"])
def test_other_tactics_agree(gemm):
    n, k = 4096, 4096
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV))
    q, s = ops.marlin_repack(w, sf)
    for m in (1, 300, 2048):
        x = torch.randn(m, k, device=DEV).to(torch.bfloat16)
        out, _ = run_gemm(x, q, s, gs, None, n, k, gemm=gemm)
        assert rel_err(out, reference_gemm(x, w, sf, gs)) < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("regime", ["subnormal", "large"])
def test_small_and_large_scale_checkpoints(dtype, regime):
    """Checkpoints whose block scales are all E4M3 subnormals (a tiny global amax) or near 448."""
    if regime == "subnormal":
        pool = ALL_E4M3[1:8]  # 2^-9 .. 7 * 2^-9
        gs = torch.tensor(1.5, device=DEV)
    else:
        pool = FINITE_E4M3[FINITE_E4M3.float().abs() >= 256]
        gs = torch.tensor(2.0**-12, device=DEV)
    n, k = 192, 4096
    w, sf = random_fp4(n, k, seed=5, pool=pool)
    w, sf = w.to(DEV), sf.to(DEV)
    q, s = ops.marlin_repack(w, sf)
    for m in (1, 7, 64, 300):
        x = torch.randn(m, k, device=DEV).to(dtype)
        out, _ = run_gemm(x, q, s, gs, None, n, k)
        ref = reference_gemm(x, w, sf, gs)
        assert torch.isfinite(out).all()
        assert rel_err(out, ref) < 1e-2, (m, rel_err(out, ref))


def test_bias_3d_and_non_contiguous_x():
    n, k = 192, 256
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV))
    q, s = ops.marlin_repack(w, sf)
    bias = torch.randn(n, device=DEV).to(torch.bfloat16)
    x3 = torch.randn(3, 5, k, device=DEV).to(torch.bfloat16)
    out3 = ops.marlin_gemm(x3, q, s, gs, bias, n, k, "marlin")
    assert tuple(out3.shape) == (3, 5, n)
    assert rel_err(out3, reference_gemm(x3, w, sf, gs, bias)) < 1e-2
    xt = torch.randn(k, 9, device=DEV).to(torch.bfloat16).t()
    assert torch.equal(ops.marlin_gemm(xt, q, s, gs, bias, n, k, "marlin"), ops.marlin_gemm(xt.contiguous(), q, s, gs, bias, n, k, "marlin"))
    xs = torch.randn(9, 2 * k, device=DEV).to(torch.bfloat16)[:, 1 : k + 1]  # misaligned rows
    assert torch.equal(ops.marlin_gemm(xs, q, s, gs, bias, n, k, "marlin"), ops.marlin_gemm(xs.contiguous(), q, s, gs, bias, n, k, "marlin"))


@pytest.mark.parametrize("m,n,k", [(1, 64, 14336), (65536, 64, 128), (5, 100, 240), (77, 130, 1856)])
def test_edge_shapes(m, n, k):
    """Deep split-K with one output tile, the largest M, N and K that need padding."""
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV))
    q, s = ops.marlin_repack(w, sf)
    x = torch.randn(m, k, device=DEV).to(torch.bfloat16)
    out, _ = run_gemm(x, q, s, gs, None, n, k)
    assert not torch.isnan(out).any()
    assert rel_err(out, reference_gemm(x, w, sf, gs)) < 1e-2


def test_deterministic_and_cuda_graph_replay_identical():
    n, k = 4096, 4096
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV))
    q, s = ops.marlin_repack(w, sf)
    for m in (1, 16, 64, 512):
        x = torch.randn(m, k, device=DEV).to(torch.bfloat16)
        eager = ops.marlin_gemm(x, q, s, gs, None, n, k, "marlin")
        assert torch.equal(eager, ops.marlin_gemm(x, q, s, gs, None, n, k, "marlin"))
        static_x = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            ops.marlin_gemm(static_x, q, s, gs, None, n, k, "marlin")  # warm-up outside capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = ops.marlin_gemm(static_x, q, s, gs, None, n, k, "marlin")
        for _ in range(3):
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(static_out, eager)
        x2 = torch.randn(m, k, device=DEV).to(torch.bfloat16)
        static_x.copy_(x2)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out, ops.marlin_gemm(x2, q, s, gs, None, n, k, "marlin"))


def test_scale_codes_decode_matches_e4m3_on_device():
    codes = torch.arange(0, 143, dtype=torch.uint8)
    assert torch.equal(scale_values_from_codes(codes.to(DEV)).cpu(), scale_values_from_codes(codes))

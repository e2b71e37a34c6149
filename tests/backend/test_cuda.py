"""The backend on a CUDA GPU (skipped without one): the arch decision, reduce-overhead (CUDA graphs) with
stale weights refreshed in place between replays, and release_source_weights freeing GPU memory."""
import pytest
import torch
from op_models import Block, QuantLinear, make_input, make_weight

import nvfp4_compile
from nvfp4_compile.formats import swizzle_scales
from nvfp4_compile.ops import _C

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_arch_decision_and_numerics_on_this_gpu():
    major, _ = torch.cuda.get_device_capability()
    model = Block().cuda()
    x, r = make_input(16, 64, seed=1).cuda(), make_input(16, 64, seed=2).cuda()
    reports = []
    fast = torch.compile(model, backend=nvfp4_compile.backend_with(on_report=reports.append))
    with torch.no_grad():
        y, res = fast(x, r)
        y_ref, res_ref = model.w4a16_reference(x, r)
    rewrite = 8 <= major < 10
    assert bool(reports[0].rewrites) == rewrite, reports[0].decision
    if rewrite:
        assert torch.equal(res, res_ref)
        torch.testing.assert_close(y.float(), y_ref.float(), atol=1e-3, rtol=8e-3)


@pytest.mark.parametrize("gemm", ["bf16", "marlin"])
def test_reduce_overhead_sees_weight_changes_between_replays(gemm):
    if gemm == "marlin" and not _C.has_kernel("marlin_gemm"):
        # The torch reference of marlin_gemm is not CUDA-graph capturable (it un-repacks every call).
        pytest.skip("CUDA Marlin kernels not built")
    model = QuantLinear(64, 96, act="nvfp4", bias=True).cuda()
    fast = torch.compile(model, backend="nvfp4_marlin",
                         options={"mode": "reduce-overhead", "target": "force", "gemm": gemm})
    x = make_input(8, 64).cuda()
    with torch.no_grad():
        for _ in range(3):  # warm up, record, replay
            y = fast(x).clone()
        torch.testing.assert_close(y.float(), model.w4a16_reference(x).float(), atol=1e-2, rtol=1e-2)
        w, sf, _ = make_weight(96, 64, seed=55)
        model.weight.copy_(w.cuda())
        model.weight_scale.copy_(swizzle_scales(sf).cuda())
        for _ in range(2):
            y2 = fast(x).clone()
        torch.testing.assert_close(y2.float(), model.w4a16_reference(x).float(), atol=1e-2, rtol=1e-2)
        assert not torch.equal(y, y2)


def test_release_source_weights_frees_gpu_memory():
    n, k = 4096, 4096
    model = QuantLinear(k, n, act="bf16", swizzled=False).cuda()
    x = make_input(4, k).cuda()
    with torch.no_grad():
        want = model.w4a16_reference(x)
        fast = torch.compile(model, backend="nvfp4_marlin", options={"release_source_weights": True, "target": "force"})
        y = fast(x)
        torch.cuda.synchronize()
        assert model.weight.untyped_storage().nbytes() == 0
        torch.testing.assert_close(y.float(), want.float(), atol=2e-2, rtol=2e-2)

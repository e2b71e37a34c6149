"""Whole models converted with quantize_model compile with fullgraph=True: the demo Llama-style MoE decoder,
and (when transformers is installed) a tiny Llama, a tiny Mixtral and a tiny Qwen3-MoE. The compiled W4A4 model must match
the eager W4A16 model built from the same FP4 weights (same function up to BF16 rounding), and every NVFP4
layer must be rewritten."""
import copy

import pytest
import torch

import nvfp4_compile
from nvfp4_compile import quantize_model


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def check_model(bf16_model, inputs, expected):
    """Compile the W4A4 conversion; compare with the eager W4A16 conversion; expected: {kind: count}."""
    w4a16 = copy.deepcopy(bf16_model)
    quantize_model(w4a16, act="bf16")
    w4a4 = copy.deepcopy(bf16_model)
    quantize_model(w4a4, act="nvfp4")
    reports = []
    fast = torch.compile(w4a4, backend=nvfp4_compile.backend_with(on_report=reports.append), fullgraph=True)
    with torch.no_grad():
        got = fast(**inputs)
        want = w4a16(**inputs)
    got, want = (getattr(o, "logits", o) for o in (got, want))
    assert len(reports) == 1
    counts = {kind: reports[0].count(kind) for kind in expected}
    assert counts == expected, str(reports[0])
    assert not reports[0].skipped, str(reports[0])
    assert rel_err(got, want) < 2e-2


def test_demo_moe_decoder():
    from nvfp4_compile.demo.models import build

    model = build("moe", hidden=64, intermediate=128, moe_intermediate=32, vocab=128, layers=2).to(torch.bfloat16)
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    # per layer: q, k, v, o projections; the router gate is a skip-listed linear; experts -> one marlin_moe
    check_model(model, {"input_ids": ids}, {"linear_w4a4": 8, "moe": 2})


def _tiny(config_cls, model_cls, **kw):
    torch.manual_seed(0)
    cfg = config_cls(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **kw)
    return model_cls(cfg).to(torch.bfloat16).eval()


def test_transformers_tiny_llama():
    transformers = pytest.importorskip("transformers")
    model = _tiny(transformers.LlamaConfig, transformers.LlamaForCausalLM)
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(1))
    # per layer: q, k, v, o, gate, up, down (lm_head is skip-listed by quantize_model); q/k/v and gate/up merged
    check_model(model, {"input_ids": ids, "use_cache": False}, {"linear_w4a4": 14, "moe": 0, "merge_siblings": 4})


def test_transformers_tiny_qwen3_moe():
    transformers = pytest.importorskip("transformers")
    model = _tiny(transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM, moe_intermediate_size=32,
                  num_experts=4, num_experts_per_tok=2, head_dim=16)
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(2))
    check_model(model, {"input_ids": ids, "use_cache": False}, {"linear_w4a4": 8, "moe": 2})


def test_transformers_tiny_mixtral():
    transformers = pytest.importorskip("transformers")
    model = _tiny(transformers.MixtralConfig, transformers.MixtralForCausalLM, num_local_experts=4,
                  num_experts_per_tok=2, head_dim=16)
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(3))
    # per layer: q, k, v, o (q/k/v merged); the router gate is skip-listed; the experts -> one marlin_moe
    check_model(model, {"input_ids": ids, "use_cache": False}, {"linear_w4a4": 8, "moe": 2})


@pytest.mark.parametrize("device,mode", [
    ("cpu", None),
    pytest.param("cuda", "reduce-overhead", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU")]),
])
def test_transformers_decode_steps_update_the_static_kv_cache(device, mode):
    """Decode with a StaticCache: the compiled steps must write the cache in place exactly like eager steps
    (the cache update is an index_copy_ whose result nothing uses: dead-code elimination must keep it);
    on CUDA under CUDA graphs too."""
    transformers = pytest.importorskip("transformers")
    w4a4 = _tiny(transformers.LlamaConfig, transformers.LlamaForCausalLM).to(device)
    w4a16 = copy.deepcopy(w4a4)  # the eager reference: the same FP4 weights, BF16 activations
    quantize_model(w4a4, act="nvfp4")
    quantize_model(w4a16, act="bf16")
    cfg = w4a4.config
    caches = [transformers.StaticCache(config=cfg, max_cache_len=16) for _ in range(2)]
    prompt = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(3)).to(device)
    step_ids = torch.randint(0, 128, (2, 3), generator=torch.Generator().manual_seed(4)).to(device)

    def step(model, ids, pos, cache):
        return model(input_ids=ids, past_key_values=cache, cache_position=pos, use_cache=True).logits

    compiled = torch.compile(step, backend="nvfp4_marlin", fullgraph=True, mode=mode)
    with torch.no_grad():
        for cache in caches:  # the same prompt, eagerly, fills both caches
            step(w4a16, prompt, torch.arange(5, device=device), cache)
        for i in range(3):
            pos = torch.tensor([5 + i], device=device)
            want = step(w4a16, step_ids[:, i:i + 1], pos, caches[0])
            got = compiled(w4a4, step_ids[:, i:i + 1], pos, caches[1])
            assert rel_err(got, want) < 2e-2
    for eager_layer, compiled_layer in zip(caches[0].layers, caches[1].layers):
        filled = slice(5, 8)  # written by the three decode steps
        assert compiled_layer.keys[:, :, filled].abs().sum() > 0
        assert rel_err(compiled_layer.keys[:, :, filled], eager_layer.keys[:, :, filled]) < 2e-2
        assert rel_err(compiled_layer.values[:, :, filled], eager_layer.values[:, :, filled]) < 2e-2

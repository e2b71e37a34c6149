"""Real transformers 5 MoE models (tiny Mixtral and Qwen3-MoE configs): quantize_model replaces their
stacked experts, NVFP4Experts computes what the transformers experts module computes with the dequantized
weights, logits stay close to the FP32 model, and a checkpoint round trip is bit-identical."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from nvfp4_compile import NVFP4Experts, NVFP4Linear, load_nvfp4_checkpoint, quantize_model, save_nvfp4_checkpoint  # noqa: E402
from nvfp4_compile.formats import dequantize_nvfp4  # noqa: E402
from tiny_models import rel_err  # noqa: E402

COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, max_position_embeddings=64, num_experts_per_tok=2)


def _model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "mixtral":
        cfg = transformers.MixtralConfig(**COMMON, intermediate_size=64, num_local_experts=4)
        return transformers.MixtralForCausalLM(cfg).eval()
    cfg = transformers.Qwen3MoeConfig(**COMMON, intermediate_size=128, moe_intermediate_size=32, num_experts=4,
                                      decoder_sparse_step=1, mlp_only_layers=[])
    return transformers.Qwen3MoeForCausalLM(cfg).eval()


def _ids(seed=0):
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
def test_experts_match_transformers_forward_on_dequantized_weights(kind, randn):
    """Drop-in semantics (gate rows first, activation, routing weights) checked against the real module:
    give the transformers experts module the dequantized weights and compare in FP32."""
    hf = _model(kind).model.layers[0].mlp.experts
    q = NVFP4Experts.from_experts(hf, act="bf16")
    for e in range(q.num_experts):
        hf.gate_up_proj.data[e] = dequantize_nvfp4(q.w13[e], q.w13_scale[e], q.w13_scale_2[e], torch.float32)
        hf.down_proj.data[e] = dequantize_nvfp4(q.w2[e], q.w2_scale[e], q.w2_scale_2[e], torch.float32)
    x = randn(20, 64, seed=3)
    probs = torch.softmax(randn(20, 4, seed=4), -1)
    w, idx = torch.topk(probs, 2, dim=-1)
    with torch.no_grad():
        want = hf(x, idx, w)
    torch.testing.assert_close(q(x, idx, w), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
@pytest.mark.parametrize("act,bound", [("bf16", 0.2), ("nvfp4", 0.28)])
def test_quantize_model_replaces_experts_and_stays_close(kind, act, bound):
    # Logits of the FP32 model vs the NVFP4 one. Every GEMM but the head is quantized (~0.095 relative
    # error per quantized operand, see test_linear); two layers of attention + MoE on random-init weights
    # compound to 0.10-0.15 (W4A16) and 0.13-0.21 (W4A4), measured over 3 seeds per model. Plain BF16
    # is at 0.006, so the bounds also catch a scale/order mistake (which gives errors of order 1).
    model = _model(kind)
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
        model.to(torch.bfloat16)
        report = quantize_model(model, act=act, calib_inputs=[ids] if act == "nvfp4" else None)
        out = model(ids).logits
    for layer in model.model.layers:
        assert isinstance(layer.mlp.experts, NVFP4Experts) and layer.mlp.experts.act == act
        assert isinstance(layer.self_attn.q_proj, NVFP4Linear)
    assert report.skipped_names == {"lm_head": "name matches skip pattern 'lm_head'"}
    assert len(report.converted) == 10  # per layer: q, k, v, o and the experts
    assert 0.02 < rel_err(out, ref) < bound


def test_checkpoint_round_trip_with_transformers_model(tmp_path):
    model = _model("qwen3_moe").to(torch.bfloat16)
    ids = _ids(1)
    quantize_model(model, act="nvfp4", calib_inputs=[ids])
    with torch.no_grad():
        want = model(ids).logits
    save_nvfp4_checkpoint(model, tmp_path, convention="compressed-tensors")
    fresh = _model("qwen3_moe", seed=7).to(torch.bfloat16)
    report = load_nvfp4_checkpoint(fresh, tmp_path)
    assert "model.layers.1.mlp.experts" in report.converted_names
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, want)

"""Checkpoints: export/load round trips per convention and expert layout (bit-identical outputs), the files
each convention writes, per-expert (Qwen and Mixtral names) vs stacked experts, fusing shards stored with
different per-tensor scales, config-driven activation modes, and clear errors for bad checkpoints."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nvfp4_compile import NVFP4Experts, NVFP4Linear, load_nvfp4_checkpoint, quantize_model, save_nvfp4_checkpoint
from nvfp4_compile.formats import dequantize_nvfp4, quantize_nvfp4
from nvfp4_compile.nn.checkpoint.modelopt import export_linear
from tiny_models import TinyNet

LAYOUTS = [("modelopt", "per_expert"), ("modelopt", "stacked"), ("compressed-tensors", "per_expert")]


def _quantized(act, randn, seed=0, **kw):
    model = TinyNet(seed=seed, **kw).to(torch.bfloat16).eval()
    calib = [randn(2, 6, 64, dtype=torch.bfloat16, seed=40 + s) for s in range(2)]
    quantize_model(model, act=act, calib_inputs=calib if act == "nvfp4" else None)
    return model


def _skeleton(**kw):
    return TinyNet(seed=123, **kw).to(torch.bfloat16).eval()  # different floating weights everywhere


@pytest.fixture
def x(randn):
    return randn(3, 7, 64, dtype=torch.bfloat16, seed=5)


@pytest.mark.parametrize("convention,layout", LAYOUTS)
@pytest.mark.parametrize("act", ["nvfp4", "bf16"])
def test_round_trip_is_bit_identical(tmp_path, randn, x, convention, layout, act):
    model = _quantized(act, randn)
    want = model(x)
    save_nvfp4_checkpoint(model, tmp_path, convention=convention, experts_layout=layout)
    fresh = _skeleton()
    report = load_nvfp4_checkpoint(fresh, tmp_path)
    assert report.converted_names == ["proj_in", "mlp.experts", "narrow"]
    assert isinstance(fresh.mlp.experts, NVFP4Experts) and fresh.mlp.experts.act == act
    assert isinstance(fresh.proj_in, NVFP4Linear) and fresh.proj_in.act == act
    assert type(fresh.widen) is nn.Linear
    a, b = model.state_dict(), fresh.state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert torch.equal(fresh(x), want)


def test_modelopt_files(tmp_path, randn):
    model = _quantized("nvfp4", randn)
    save_nvfp4_checkpoint(model, tmp_path, convention="modelopt")
    t = load_file(str(tmp_path / "model.safetensors"))
    assert t["proj_in.weight"].dtype == torch.uint8 and t["proj_in.weight_scale"].dtype == torch.float8_e4m3fn
    assert torch.equal(t["proj_in.weight_scale_2"], model.proj_in.weight_scale_2)
    assert torch.equal(t["proj_in.input_scale"], model.proj_in.input_scale)
    assert torch.equal(t["proj_in.bias"], model.proj_in.bias)
    e = model.mlp.experts
    # per expert: gate rows then up rows of w13, both with the expert's fused per-tensor scale
    assert torch.equal(t["mlp.experts.1.gate_proj.weight"], e.w13[1, :32])
    assert torch.equal(t["mlp.experts.1.up_proj.weight"], e.w13[1, 32:])
    assert float(t["mlp.experts.1.up_proj.weight_scale_2"]) == float(e.w13_scale_2[1])
    assert float(t["mlp.experts.3.down_proj.input_scale"]) == float(e.a2_scale[3])
    assert "lm_head.weight" in t and "widen.weight" in t and "mlp.gate.weight" in t
    cfg = json.loads((tmp_path / "hf_quant_config.json").read_text())["quantization"]
    assert cfg["quant_algo"] == "NVFP4" and cfg["group_size"] == 16
    assert sorted(cfg["exclude_modules"]) == ["lm_head", "mlp.gate", "widen"]


def test_modelopt_stacked_files(tmp_path, randn):
    model = _quantized("bf16", randn)
    save_nvfp4_checkpoint(model, tmp_path, convention="modelopt", experts_layout="stacked")
    t = load_file(str(tmp_path / "model.safetensors"))
    e = model.mlp.experts
    assert torch.equal(t["mlp.experts.gate_up_proj"], e.w13)
    assert torch.equal(t["mlp.experts.gate_up_proj_weight_scale"].view(torch.uint8), e.w13_scale.view(torch.uint8))
    assert torch.equal(t["mlp.experts.down_proj_weight_scale_2"], e.w2_scale_2)
    assert "mlp.experts.down_proj_input_scale" not in t
    assert json.loads((tmp_path / "hf_quant_config.json").read_text())["quantization"]["quant_algo"] == "W4A16_NVFP4"


def test_compressed_tensors_files(tmp_path, randn):
    model = _quantized("nvfp4", randn)
    save_nvfp4_checkpoint(model, tmp_path, convention="compressed-tensors")
    t = load_file(str(tmp_path / "model.safetensors"))
    assert t["proj_in.weight_packed"].dtype == torch.uint8 and "proj_in.weight" not in t
    g = t["proj_in.weight_global_scale"]
    assert g.shape == (1,) and float(g) == float(1.0 / model.proj_in.weight_scale_2)  # encode = 1/decode
    assert float(t["proj_in.input_global_scale"]) == float(1.0 / model.proj_in.input_scale)
    assert "mlp.experts.2.down_proj.weight_packed" in t
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "nvfp4-pack-quantized"
    (group,) = qc["config_groups"].values()
    assert group["input_activations"]["num_bits"] == 4 and group["weights"]["group_size"] == 16
    assert "proj_in" in group["targets"] and "mlp.experts.0.gate_proj" in group["targets"]
    assert sorted(qc["ignore"]) == ["lm_head", "mlp.gate", "widen"]
    with pytest.raises(ValueError, match="no stacked-experts form"):
        save_nvfp4_checkpoint(model, tmp_path, convention="compressed-tensors", experts_layout="stacked")


def test_compressed_tensors_config_drives_act(tmp_path, randn, x):
    model = _quantized("nvfp4", randn)
    save_nvfp4_checkpoint(model, tmp_path, convention="compressed-tensors")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (group,) = cfg["quantization_config"]["config_groups"].values()
    group["input_activations"] = None  # the NVFP4A16 scheme: the input scales in the file go unused
    group["targets"] = ["Linear"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    fresh = _skeleton()
    load_nvfp4_checkpoint(fresh, tmp_path)
    assert fresh.proj_in.act == "bf16" and fresh.mlp.experts.act == "bf16"
    cfg["quantization_config"]["ignore"].append("re:.*proj_in")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="proj_in: has NVFP4 tensors but is listed in the config's ignore list"):
        load_nvfp4_checkpoint(_skeleton(), tmp_path)


def test_sources_dict_and_single_file(tmp_path, randn, x):
    model = _quantized("nvfp4", randn)
    want = model(x)
    save_nvfp4_checkpoint(model, tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    from_dict = _skeleton()
    load_nvfp4_checkpoint(from_dict, sd)  # no config: act from the presence of input scales
    assert from_dict.proj_in.act == "nvfp4" and torch.equal(from_dict(x), want)
    from_file = _skeleton()
    load_nvfp4_checkpoint(from_file, tmp_path / "model.safetensors")
    assert torch.equal(from_file(x), want)


def test_directory_with_several_shards(tmp_path, randn, x):
    model = _quantized("nvfp4", randn)
    want = model(x)
    save_nvfp4_checkpoint(model, tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(sd)
    save_file({k: sd[k] for k in keys[::2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: sd[k] for k in keys[1::2]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    fresh = _skeleton()
    load_nvfp4_checkpoint(fresh, tmp_path)
    assert torch.equal(fresh(x), want)
    save_file({keys[0]: sd[keys[0]]}, str(tmp_path / "model-extra.safetensors"))
    with pytest.raises(ValueError, match="appear in more than one file"):
        load_nvfp4_checkpoint(_skeleton(), tmp_path)


def test_act_override_runs_w4a4_checkpoint_weight_only(tmp_path, randn, x):
    model = _quantized("nvfp4", randn)
    save_nvfp4_checkpoint(model, tmp_path)
    fresh = _skeleton()
    load_nvfp4_checkpoint(fresh, tmp_path, act="bf16")
    assert fresh.proj_in.act == "bf16" and fresh.mlp.experts.act == "bf16"
    assert "input_scale" not in fresh.proj_in.state_dict()
    assert torch.equal(fresh.proj_in.weight, model.proj_in.weight)
    xin = x.reshape(-1, 64)
    w = dequantize_nvfp4(model.proj_in.weight, model.proj_in.weight_scale, model.proj_in.weight_scale_2, torch.bfloat16)
    assert torch.equal(fresh.proj_in(xin), nn.functional.linear(xin, w, model.proj_in.bias))


def test_mixed_precision_config(tmp_path, randn, x):
    model = _quantized("nvfp4", randn)
    model.narrow = NVFP4Linear.from_linear(TinyNet(seed=0).narrow.to(torch.bfloat16), act="bf16")
    want = model(x)
    save_nvfp4_checkpoint(model, tmp_path)
    cfg = json.loads((tmp_path / "hf_quant_config.json").read_text())["quantization"]
    assert cfg["quant_algo"] == "MIXED_PRECISION"
    assert cfg["quantized_layers"]["narrow"]["quant_algo"] == "W4A16_NVFP4"
    assert cfg["quantized_layers"]["mlp.experts.0.gate_proj"]["quant_algo"] == "NVFP4"
    fresh = _skeleton()
    load_nvfp4_checkpoint(fresh, tmp_path)
    assert (fresh.narrow.act, fresh.proj_in.act, fresh.mlp.experts.act) == ("bf16", "nvfp4", "nvfp4")
    assert torch.equal(fresh(x), want)
    full = json.loads((tmp_path / "hf_quant_config.json").read_text())
    full["quantization"]["quantized_layers"]["proj_in"]["quant_algo"] = "FP8"
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(full))
    with pytest.raises(NotImplementedError, match="proj_in: quant_algo 'FP8' is not NVFP4"):
        load_nvfp4_checkpoint(_skeleton(), tmp_path)


def test_w4a4_config_without_input_scales_is_an_error(tmp_path, randn):
    save_nvfp4_checkpoint(_quantized("bf16", randn), tmp_path)
    full = json.loads((tmp_path / "hf_quant_config.json").read_text())
    full["quantization"]["quant_algo"] = "NVFP4"
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(full))
    with pytest.raises(ValueError, match="proj_in: W4A4 .* needs activation input scales"):
        load_nvfp4_checkpoint(_skeleton(), tmp_path)
    fresh = _skeleton()
    load_nvfp4_checkpoint(fresh, tmp_path, act="bf16")
    assert fresh.proj_in.act == "bf16"


def _mixtral_names(sd):
    """Rename per-expert gate_proj/up_proj/down_proj to Mixtral's w1/w3/w2."""
    ren = {".gate_proj.": ".w1.", ".up_proj.": ".w3.", ".down_proj.": ".w2."}
    out = {}
    for k, v in sd.items():
        for a, b in ren.items():
            if ".experts." in k:
                k = k.replace(a, b)
        out[k] = v
    return out


def test_per_expert_mixtral_names_and_stacked_load_the_same(tmp_path, randn, x):
    model = _quantized("nvfp4", randn)
    want = model(x)
    save_nvfp4_checkpoint(model, tmp_path / "stacked", experts_layout="stacked")
    save_nvfp4_checkpoint(model, tmp_path / "per")
    mixtral = _mixtral_names(load_file(str(tmp_path / "per" / "model.safetensors")))
    assert "mlp.experts.0.w1.weight" in mixtral and "mlp.experts.0.w2.input_scale" in mixtral
    outs = []
    for src in (tmp_path / "stacked", mixtral):
        fresh = _skeleton()
        report = load_nvfp4_checkpoint(fresh, src)
        assert ("per-expert" if isinstance(src, dict) else "stacked") in dict(
            (n, d) for n, _, d in report.converted)["mlp.experts"]
        outs.append(fresh(x))
    assert torch.equal(outs[0], want) and torch.equal(outs[1], want)


def _gate_up_with_scales(randn, ratio):
    """A ModelOpt state dict whose experts' gate and up shards were quantized with different scales."""
    model = _quantized("bf16", randn)
    sd = model.state_dict()
    e = model.mlp.experts
    tensors = {k: v for k, v in sd.items() if not k.startswith("mlp.experts.")}
    shards = {}
    for i in range(4):
        gate = randn(32, 64, scale=0.1, seed=60 + i)
        up = randn(32, 64, scale=0.1, seed=70 + i)
        d_gate = gate.abs().amax() / 2688
        for name, w, d in (("gate_proj", gate, d_gate), ("up_proj", up, d_gate * ratio)):
            q, sf, dd = quantize_nvfp4(w, d)
            shards[i, name] = (q, sf, dd)
            tensors.update(export_linear(f"mlp.experts.{i}.{name}", _qw(q, sf, dd)))
        down = (e.w2[i], e.w2_scale[i], e.w2_scale_2[i])
        tensors.update(export_linear(f"mlp.experts.{i}.down_proj", _qw(*down)))
    for k in ("proj_in", "narrow"):
        tensors.update({f"{k}.{n}": v for n, v in getattr(model, k).state_dict().items()})
    return tensors, shards


def _qw(q, sf, d):
    from nvfp4_compile.nn.checkpoint.common import QuantWeight

    return QuantWeight("x", q, sf, d.reshape(()))


@pytest.mark.parametrize("ratio", [0.5, 2.0, 0.3])
def test_fused_gate_up_shards_with_different_scales(randn, ratio):
    tensors, shards = _gate_up_with_scales(randn, ratio)
    fresh = _skeleton()
    load_nvfp4_checkpoint(fresh, tensors)
    e = fresh.mlp.experts
    for i in range(4):
        (qg, sg, dg), (qu, su, du) = shards[i, "gate_proj"], shards[i, "up_proj"]
        assert float(e.w13_scale_2[i]) == max(float(dg), float(du))  # d = max(d_gate, d_up), never one shard's
        want = torch.cat([dequantize_nvfp4(qg, sg, dg, torch.float32), dequantize_nvfp4(qu, su, du, torch.float32)])
        got = dequantize_nvfp4(e.w13[i], e.w13_scale[i], e.w13_scale_2[i], torch.float32)
        assert torch.equal(e.w13[i], torch.cat([qg, qu]))  # element codes untouched
        if ratio in (0.5, 2.0):
            assert torch.equal(got, want)  # power-of-two ratio: rescaled block scales are exact in E4M3
        else:
            # block scales rescaled by 0.3 and rounded to E4M3 (3 mantissa bits): <= 2^-4 relative each
            rel = ((got - want).abs() / want.abs().clamp_min(1e-30))[want != 0]
            assert 0 < rel.max() <= 2**-4
            assert torch.equal(got[:32], want[:32])  # the shard with the larger scale is unchanged


def test_fused_qkv_from_separate_shards(randn):
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv_proj = nn.Linear(64, 96, bias=False)

    ws = [randn(32, 64, seed=80 + i) * (i + 1) for i in range(3)]  # amax differs: three different scales
    tensors = {}
    for name, w in zip(("q_proj", "k_proj", "v_proj"), ws):
        q, sf, d = quantize_nvfp4(w)
        tensors.update(export_linear(f"attn.{name}", _qw(q, sf, d)))
        tensors[f"attn.{name}.input_scale"] = torch.tensor(0.01 * (len(tensors)))
    model = nn.Sequential()
    model.attn = Attn()
    report = load_nvfp4_checkpoint(model, tensors)
    assert report.converted == [("attn.qkv_proj", "NVFP4Linear", "[96x64] act=nvfp4, fused from 3 shards")]
    m = model.attn.qkv_proj
    assert float(m.input_scale) == max(float(tensors[f"attn.{n}.input_scale"]) for n in ("q_proj", "k_proj", "v_proj"))
    got = dequantize_nvfp4(m.weight, m.weight_scale, m.weight_scale_2, torch.float32)
    assert ((got - torch.cat(ws)).norm() / torch.cat(ws).norm()) < 0.11


def test_kv_cache_scales_are_ignored_with_a_note(randn, x):
    model = _quantized("nvfp4", randn)
    sd = load_nvfp4_round_trip_dict(model)
    sd["proj_in.k_scale"] = torch.tensor(1.0)
    fresh = _skeleton()
    report = load_nvfp4_checkpoint(fresh, sd)
    assert any("KV-cache" in n for n in report.notes)
    assert torch.equal(fresh(x), model(x))


def load_nvfp4_round_trip_dict(model):
    from nvfp4_compile.nn.checkpoint.save import _plain_tensors

    sd = dict(_plain_tensors(model, ["proj_in", "narrow", "mlp.experts"]))
    for name in ("proj_in", "narrow"):
        sd.update({f"{name}.{k}": v for k, v in getattr(model, name).state_dict().items()})
    sd.update({f"mlp.experts.{k}": v for k, v in _stacked_names(model.mlp.experts).items()})
    return sd


def _stacked_names(e):
    return {"gate_up_proj": e.w13, "gate_up_proj_weight_scale": e.w13_scale, "gate_up_proj_weight_scale_2": e.w13_scale_2,
            "gate_up_proj_input_scale": e.a13_scale, "down_proj": e.w2, "down_proj_weight_scale": e.w2_scale,
            "down_proj_weight_scale_2": e.w2_scale_2, "down_proj_input_scale": e.a2_scale}


def test_tied_embedding_saved_once(tmp_path, randn):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(48, 64)
            self.proj = nn.Linear(64, 64)
            self.lm_head = nn.Linear(64, 48, bias=False)
            self.lm_head.weight = self.embed.weight

        def forward(self, ids):
            return self.lm_head(self.proj(self.embed(ids)))

    torch.manual_seed(0)
    model = Tied().to(torch.bfloat16)
    quantize_model(model)
    ids = torch.arange(10).reshape(2, 5)
    save_nvfp4_checkpoint(model, tmp_path)
    t = load_file(str(tmp_path / "model.safetensors"))
    assert ("embed.weight" in t) != ("lm_head.weight" in t)
    torch.manual_seed(1)
    fresh = Tied().to(torch.bfloat16)
    load_nvfp4_checkpoint(fresh, tmp_path)
    assert torch.equal(fresh(ids), model(ids))


# ------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------


@pytest.fixture
def good(randn):
    model = _quantized("nvfp4", randn)
    return load_nvfp4_round_trip_dict(model)


def test_error_missing_quantized_tensor(good):
    del good["proj_in.weight_scale"]
    with pytest.raises(KeyError, match="missing tensor 'proj_in.weight_scale'"):
        load_nvfp4_checkpoint(_skeleton(), good)


def test_error_missing_and_unexpected_plain_tensors(good):
    bad = dict(good)
    del bad["lm_head.weight"]
    with pytest.raises(KeyError, match=r"missing tensors \['lm_head.weight'\]"):
        load_nvfp4_checkpoint(_skeleton(), bad)
    bad = dict(good, **{"extra.weight": torch.zeros(3)})
    with pytest.raises(KeyError, match=r"unexpected tensors \['extra.weight'\]"):
        load_nvfp4_checkpoint(_skeleton(), bad)
    model = _skeleton()
    report = load_nvfp4_checkpoint(model, {k: v for k, v in good.items() if k != "lm_head.weight"}, strict=False)
    assert "lm_head.weight" in report.notes[-1]


def test_error_shape_mismatch(good):
    small = _skeleton()
    small.narrow = nn.Linear(64, 40)
    with pytest.raises(ValueError, match=r"narrow: checkpoint weight is \[24 x 64\].*model's layer narrow is \[40 x 64\]"):
        load_nvfp4_checkpoint(small, good)
    other = _skeleton(vocab=50)
    with pytest.raises(ValueError, match="size mismatch for lm_head.weight"):
        load_nvfp4_checkpoint(other, good)
    wrong_experts = _skeleton(num_experts=3)
    with pytest.raises(ValueError, match=r"mlp.experts.gate_up_proj: checkpoint weights are \[4 x 64 x 64\]"):
        load_nvfp4_checkpoint(wrong_experts, good)


def test_error_bad_dtypes_and_scales(good):
    bad = dict(good, **{"proj_in.weight_scale": good["proj_in.weight_scale"].view(torch.uint8)})
    with pytest.raises(TypeError, match="proj_in: weight_scale must be float8_e4m3fn, got torch.uint8"):
        load_nvfp4_checkpoint(_skeleton(), bad)
    bad = dict(good, **{"proj_in.weight_scale": good["proj_in.weight_scale"][:, :2]})
    with pytest.raises(ValueError, match=r"proj_in: weight_scale has shape \(64, 2\), expected \(64, 4\)"):
        load_nvfp4_checkpoint(_skeleton(), bad)
    bad = dict(good, **{"proj_in.weight_scale_2": torch.tensor(-1.0)})
    with pytest.raises(ValueError, match="proj_in: weight_scale_2 must be positive and finite"):
        load_nvfp4_checkpoint(_skeleton(), bad)


def test_error_no_nvfp4_tensors_and_mixed_conventions(good):
    with pytest.raises(ValueError, match="holds no NVFP4 tensors"):
        load_nvfp4_checkpoint(_skeleton(), TinyNet().state_dict())
    bad = dict(good, **{"other.weight_packed": torch.zeros(2, 8, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="mixes ModelOpt and compressed-tensors"):
        load_nvfp4_checkpoint(_skeleton(), bad)


def test_error_experts_incomplete_or_extra(tmp_path, randn):
    save_nvfp4_checkpoint(_quantized("bf16", randn), tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    bad = {k: v for k, v in sd.items() if not k.startswith("mlp.experts.3.down_proj.")}
    with pytest.raises(KeyError, match=r"mlp.experts: the checkpoint lacks expert layers \['mlp.experts.3.down_proj'\]"):
        load_nvfp4_checkpoint(_skeleton(), bad)
    extra = dict(sd, **{k.replace("experts.3.", "experts.4."): v for k, v in sd.items() if ".experts.3." in k})
    with pytest.raises(KeyError, match=r"quantized tensors for \['mlp.experts.4.down_proj'"):
        load_nvfp4_checkpoint(_skeleton(), extra)
    transposed = _skeleton()
    transposed.mlp.experts.is_transposed = True
    with pytest.raises(ValueError, match="mlp.experts: the checkpoint has NVFP4 experts .* is_transposed=True"):
        load_nvfp4_checkpoint(transposed, sd)


def test_error_bias_mismatch(good):
    bad = {k: v for k, v in good.items() if k != "proj_in.bias"}
    with pytest.raises(ValueError, match=r"proj_in: the model layer has bias, the checkpoint has none"):
        load_nvfp4_checkpoint(_skeleton(), bad)

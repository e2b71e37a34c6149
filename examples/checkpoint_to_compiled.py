"""From an NVFP4 checkpoint to a compiled model, the way a user serving one on Hopper does it.

    python examples/checkpoint_to_compiled.py [--device cuda] [--convention compressed-tensors]

1. Make a checkpoint: quantize the demo MoE decoder and save it (ModelOpt or compressed-tensors names), as a
   Blackwell export would look. 2. Load it into a fresh BF16 model (the model code is not edited: the loader
   swaps in NVFP4 modules). 3. torch.compile with the nvfp4_marlin backend, print the explain report, and
   check the output against the eager W4A16 path of the same weights.
"""
import argparse
import tempfile

import torch

import nvfp4_compile
from nvfp4_compile.demo import models


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--convention", default="modelopt", choices=["modelopt", "compressed-tensors"])
    args = p.parse_args()
    device = torch.device(args.device)

    exported = models.build("moe", seed=1).to(device=device, dtype=torch.bfloat16)
    nvfp4_compile.quantize_model(exported, act="nvfp4")
    with tempfile.TemporaryDirectory() as ckpt, torch.no_grad():
        nvfp4_compile.save_nvfp4_checkpoint(exported, ckpt, convention=args.convention)

        model = models.build("moe", seed=2).to(device=device, dtype=torch.bfloat16)  # different random init
        print(nvfp4_compile.load_nvfp4_checkpoint(model, ckpt))
        reference = models.build("moe", seed=3).to(device=device, dtype=torch.bfloat16)
        nvfp4_compile.load_nvfp4_checkpoint(reference, ckpt, act="bf16")  # eager W4A16: dequantize + linear

    ids = torch.randint(0, 512, (2, 16), device=device)
    with torch.no_grad():
        print(nvfp4_compile.explain(model, ids))
        out = torch.compile(model, backend="nvfp4_marlin")(ids)
        ref = reference(ids)
    rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    print(f"compiled nvfp4_marlin vs eager W4A16 reference: relative error {rel:.2e}")
    if not rel < 2e-2:
        raise SystemExit("mismatch")


if __name__ == "__main__":
    main()

"""Instruction mix of the compiled Marlin GEMM kernels (cuobjdump -sass on the built extension): how many
non-MMA instructions each HMMA costs, loads per stage, spills (LDL/STL). Prints one line per kernel.

    python benchmarks/sass_stats.py [DIR]   also writes the SASS of the bf16 m16 and large kernels to DIR/
"""
import collections
import glob
import re
import subprocess
import sys

so = sorted(glob.glob("nvfp4_compile/_C*.so"))
if not so:
    sys.exit("no built extension (nvfp4_compile/_C*.so)")
sass = subprocess.run(["cuobjdump", "-sass", so[0]], capture_output=True, text=True, check=True).stdout
for body in re.split(r"\n\s*Function : ", sass)[1:]:
    name = body.split("\n", 1)[0]
    if "marlin_gemm_kernel" not in name:
        continue
    ops = collections.Counter(
        op.split(".")[0] for op in re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", body)
    )
    total = sum(ops.values())
    cfg = re.search(r"GemmConfigI(.*?)EEE", name)
    keys = ("HMMA", "LDSM", "LDS", "LOP3", "SHF", "HFMA2", "HMUL2", "PRMT", "IMAD", "LDGSTS", "BAR", "LDL", "STL")
    label = cfg.group(1) if cfg else name[:60]
    print(("bf16" if "bfloat16" in name else "fp16"), label, "total", total, " ".join(f"{k}={ops[k]}" for k in keys))
    dense = "ELb1E" not in name  # the grouped (MoE) instantiation has kMoe = true
    if len(sys.argv) > 1 and "bfloat16" in name and dense and label.startswith(("Li1ELi1E", "Li4ELi2E")):
        safe = re.sub(r"[^A-Za-z0-9]+", "_", label)[:40]
        with open(f"{sys.argv[1]}/sass_{safe}.txt", "w") as f:
            f.write(body)

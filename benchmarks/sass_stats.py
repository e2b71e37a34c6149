"""Instruction mix of the compiled Marlin GEMM kernels (cuobjdump -sass on the built extension): how many
non-MMA instructions each HMMA costs, loads per stage, spills (LDL/STL). Prints one line per kernel."""
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
    print(("bf16" if "bfloat16" in name else "fp16"), cfg.group(1) if cfg else name[:60], "total", total,
          " ".join(f"{k}={ops[k]}" for k in keys))

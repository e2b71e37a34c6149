"""Instruction mix of the compiled Marlin GEMM kernels (cuobjdump -sass on the built extension, or nvdisasm -c on
a cubin): how many non-MMA instructions each MMA costs, loads per stage, spills (LDL/STL); for the wgmma
kernels also a register-hazard check. Prints one line per kernel; exit status 1 if a hazard is found.

    python benchmarks/sass_stats.py [--sass FILE] [DIR]   DIR: also writes the SASS of the bf16 m16 and large kernels

Hazard check (wgmma_kernel.cuh): an HGMMA reads its A fragment from registers asynchronously, until a
WARPGROUP.DEPBAR retires its group, and ptxas does not always keep those registers from being reused before
that (it reused them across a loop's back edge in an earlier version). The check walks each loop containing
HGMMAs twice (to model the back edge) and flags any instruction writing a register of a still-running group.
"""
import argparse
import collections
import glob
import re
import subprocess
import sys

INSTR = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)\s*(.*)$")


def load_sass(path: str | None) -> str:
    """SASS text: the file at path (nvdisasm -c / cuobjdump -sass output), else cuobjdump of the built extension."""
    if path:
        return open(path).read()
    so = sorted(glob.glob("nvfp4_compile/_C*.so"))
    if not so:
        sys.exit("no built extension (nvfp4_compile/_C*.so)")
    return subprocess.run(["cuobjdump", "-sass", so[0]], capture_output=True, text=True, check=True).stdout


def kernels(sass):
    """(name, body) per function: cuobjdump's 'Function : name' or nvdisasm's '.section .text.name'."""
    parts = re.split(r"\n\s*(?:Function : |\.section\s+\.text\.)", sass)[1:]
    return [(p.split("\n", 1)[0].split(",")[0], p) for p in parts]


def regs(base, count):
    k = int(base[1:])
    return {f"R{k + j}" for j in range(count)}


def wgmma_hazards(body):
    """Writes to the A registers of HGMMA groups not yet retired, inside loops (each walked twice)."""
    lines, labels = [], {}
    for line in body.split("\n"):
        if line.strip().startswith(".L_") and line.strip().endswith(":"):
            labels[line.strip()[:-1]] = len(lines)
        m = INSTR.match(line)
        if m:
            lines.append((int(m.group(1), 16), m.group(2), m.group(3), line.strip()))
    index_of = {addr: i for i, (addr, *_rest) in enumerate(lines)}
    hazards = []
    for i, (_addr, op, operands, _text) in enumerate(lines):
        if op != "BRA":
            continue
        target = re.search(r"`\((\.L_x_\d+)\)|(0x[0-9a-f]+)", operands)
        start = labels.get(target.group(1)) if target and target.group(1) else \
            index_of.get(int(target.group(2), 16)) if target and target.group(2) else None
        if start is None or start > i or not any(ln[1].startswith("HGMMA") for ln in lines[start:i + 1]):
            continue
        pending, group = [], set()
        for _ in range(2):
            for _addr2, op2, ops2, text2 in lines[start:i + 1]:
                if op2.startswith("HGMMA"):
                    a = re.match(r"R\d+, (R\d+),", ops2)
                    if a:
                        group |= regs(a.group(1), 4)
                    if "gsb0" in ops2:
                        pending.append(group)
                        group = set()
                elif op2.startswith("WARPGROUP.DEPBAR"):
                    keep = int(re.search(r"0x(\d+)", ops2).group(1))
                    pending = pending[len(pending) - keep:] if keep else []
                elif not op2.startswith(("ST", "BRA", "LDGSTS", "BAR", "HGMMA")):
                    dst = re.match(r"(R\d+)", ops2)
                    if dst:
                        width = 4 if ".128" in op2 else 2 if ".64" in op2 else 1
                        if any(regs(dst.group(1), width) & g for g in pending):
                            hazards.append(text2)
    return hazards


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sass", help="read SASS from this file instead of the built extension")
    parser.add_argument("out_dir", nargs="?", help="also write the SASS of the bf16 m16 and large kernels here")
    args = parser.parse_args()
    out_dir = args.out_dir
    found = 0
    for name, body in kernels(load_sass(args.sass)):
        if not any(k in name for k in ("marlin_gemm_kernel", "marlin_wgmma_kernel", "marlin_stream_wgmma_kernel")):
            continue
        ops = collections.Counter(m.group(2).split(".")[0] for m in map(INSTR.match, body.split("\n")) if m)
        total = sum(ops.values())
        cfg = re.search(r"(?:Gemm|Wgmma|StreamWgmma)ConfigI(.*?)EEE", name)
        keys = ("HMMA", "HGMMA", "LDSM", "LDS", "LOP3", "SHF", "HFMA2", "HMUL2", "PRMT", "IMAD", "LDGSTS", "BAR", "LDL", "STL")
        label = ("stream-wgmma " if "stream_wgmma" in name else "wgmma " if "wgmma" in name else "") + (cfg.group(1) if cfg else name[:60])
        line = ("bf16" if "bfloat16" in name else "fp16") + f" {label} total {total} " + " ".join(f"{k}={ops[k]}" for k in keys)
        if "wgmma" in name:
            hazards = wgmma_hazards(body)
            found += len(hazards)
            line += f" register_hazards={len(hazards)}" + (f" first: {hazards[0]}" if hazards else "")
        print(line)
        dense = "ELb1E" not in name  # the grouped (MoE) instantiation has kMoe = true
        if out_dir and "bfloat16" in name and dense and label.startswith(("Li1ELi1E", "Li4ELi2E")):
            safe = re.sub(r"[^A-Za-z0-9]+", "_", label)[:40]
            with open(f"{out_dir}/sass_{safe}.txt", "w") as f:
                f.write(body)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()

"""The dense GEMM's config names (csrc/marlin/marlin.h: what `nvfp4_C.marlin_gemm_configs()` returns and the
`marlin.<name>` tactics force by index) match the launcher's dispatch (csrc/marlin/gemm_launch.cuh) index by
index, and each name is its config's alias (`Config` + Name, csrc/marlin/configs.cuh). Checked from the
sources, so CI catches a config added in one place only, which a GPU run would otherwise report as a wrong
tactic name or a "no tile config" error."""
from __future__ import annotations

import os
import re

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "marlin")


def read(name: str) -> str:
    with open(os.path.join(CSRC, name)) as f:
        return f.read()


def test_config_names_match_the_dispatch_and_the_aliases():
    names_src = re.search(r"marlin_gemm_config_names\(\)\s*\{\s*return\s*\{(.*?)\};", read("marlin.h"), re.S)
    names = re.findall(r'"(\w+)"', names_src.group(1))
    cases = re.findall(r"case (\d+): launch_(?:\w+_)?with_config<T, (Config\w+)>", read("gemm_launch.cuh"))
    aliases = set(re.findall(r"using (Config\w+) = ", read("configs.cuh")))
    assert [int(i) for i, _ in cases] == list(range(len(names)))
    assert [alias for _, alias in cases] == ["Config" + n[0].upper() + n[1:] for n in names]
    assert {alias for _, alias in cases} == aliases


def test_decode_configs_are_profiled_up_to_their_tile_rows():
    """gemm_tactics.CONFIG_MAX_M (the M buckets `auto` profiles a decode config for) names exactly the configs
    that stream the whole weight once per tile of rows, each up to the rows of its tile: GemvConfig<...,
    GROUPS> holds 8 * GROUPS rows (csrc/marlin/gemv_kernel.cuh), StreamWgmmaConfig<NTOK, ...> NTOK
    (stream_wgmma_kernel.cuh)."""
    from nvfp4_compile.ops.gemm_tactics import CONFIG_MAX_M

    gemv = re.findall(r"using Config(\w+) = GemvConfig<([^>]*)>", read("configs.cuh"))
    rows = {name[0].lower() + name[1:]: 8 * (int(args.split(",")[4]) if args.count(",") >= 4 else 1)
            for name, args in gemv}
    stream = re.findall(r"using Config(\w+) = StreamWgmmaConfig<(\d+),", read("configs.cuh"))
    rows.update({name[0].lower() + name[1:]: int(ntok) for name, ntok in stream})
    assert rows == CONFIG_MAX_M

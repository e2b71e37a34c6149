"""Command line:
    python -m nvfp4_compile demo [--device cpu|cuda] [--models llama,moe]
    python -m nvfp4_compile tactics      (the cached gemm="auto" choices on the current CUDA device)
"""
import sys


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "tactics"):
        raise SystemExit("usage: python -m nvfp4_compile demo [--help] | tactics")
    if sys.argv[1] == "tactics":
        from .tactic_report import tactic_choices

        print(tactic_choices())
        return
    from .demo.run import main as demo_main

    demo_main(sys.argv[2:])


if __name__ == "__main__":
    main()

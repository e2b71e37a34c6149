"""Command line: `python -m nvfp4_compile demo [--device cpu|cuda] [--models llama,moe]`."""
import sys


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo",):
        raise SystemExit("usage: python -m nvfp4_compile demo [--help]")
    from .demo.run import main as demo_main

    demo_main(sys.argv[2:])


if __name__ == "__main__":
    main()

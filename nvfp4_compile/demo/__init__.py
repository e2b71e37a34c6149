"""The demo behind `python -m nvfp4_compile demo` (see run.py)."""

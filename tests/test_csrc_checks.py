"""Every TORCH_CHECK in csrc/ has a one-part message (a literal, literals concatenated at compile time, or one
std::string).

Why: on the device machine (torch 2.11.0+cu130, g++ 13.3) an extension that formats a number through std::ostream
dies with SIGSEGV (scripts/probe_torch_check.py; docs/kernels.md, "Twelfth session"). A check with several message
parts formats them with c10::str, i.e. std::ostringstream: with a number among them, a bad argument killed the
process instead of raising (literal-only parts raised, but one rule for all checks is simpler to keep).
tests/gpu/test_cpp_checks.py runs bad calls on the GPU; this test keeps new checks in the safe form on CI."""
from __future__ import annotations

import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_arguments(source: str) -> list[tuple[int, list[str]]]:
    """(line, top-level arguments) of every TORCH_CHECK( ... ) call in C++ source."""
    calls = []
    start = source.find("TORCH_CHECK(")
    while start >= 0:
        i, depth, args, current, quote = start + len("TORCH_CHECK("), 1, [], "", ""
        while depth:
            c = source[i]
            if quote:
                if c == "\\":
                    current += source[i:i + 2]
                    i += 2
                    continue
                quote = "" if c == quote else quote
            elif c in "\"'":
                quote = c
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif c == "," and depth == 1:
                args.append(current.strip())
                current = ""
                i += 1
                continue
            if depth:
                current += c
            i += 1
        args.append(current.strip())
        calls.append((source.count("\n", 0, start) + 1, args))
        start = source.find("TORCH_CHECK(", i)
    return calls


def test_checker_splits_arguments_outside_strings_and_brackets():
    source = 'x;\nTORCH_CHECK(f(a, b) && s == "a, b", "one, \\"part\\"");\nTORCH_CHECK(ok, "n = ", n);'
    assert check_arguments(source) == [(2, ['f(a, b) && s == "a, b"', '"one, \\"part\\""']),
                                       (3, ["ok", '"n = "', "n"])]


def test_every_csrc_check_has_a_one_part_message():
    files = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.*"), recursive=True))
    calls = {f: check_arguments(open(f).read()) for f in files if f.endswith((".cpp", ".cu", ".cuh", ".h"))}
    assert sum(len(c) for c in calls.values()) >= 40  # the checker sees the checks
    several = [f"{os.path.relpath(f, ROOT)}:{line}: {args[1:]}" for f, c in calls.items() for line, args in c
               if len(args) != 2]
    assert not several, "TORCH_CHECK messages in several parts (format them as one string):\n" + "\n".join(several)

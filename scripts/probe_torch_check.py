"""Which TORCH_CHECK message forms raise and which kill the process, on this machine's torch and compiler.

Builds a small C++ extension (torch.utils.cpp_extension.load_inline, the compiler setup.py uses for csrc/*.cpp)
with one function per message form, then calls each in a fresh interpreter and prints how it ended: RAISED
(RuntimeError with the message) or DIED (the exit status). Context lines: compiler, libstdc++ mapped, torch ABI.
Results and background: docs/kernels.md, "Twelfth session"."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

FORMS = {
    "literal": 'TORCH_CHECK(false, "one literal");',
    "two_literals": 'TORCH_CHECK(false, "two ", "literals");',
    "literal_and_int": 'TORCH_CHECK(false, "n = ", n);',
    "std_string": 'TORCH_CHECK(false, std::string("std::") + "string");',
    "c10_str_only": 'auto s = c10::str("n = ", n); throw std::runtime_error(s);',
    "ostringstream_only": 'std::ostringstream os; os << "n = " << n; throw std::runtime_error(os.str());',
}
SOURCE = "#include <torch/extension.h>\n#include <sstream>\n" + "".join(
    f"void {name}(int64_t n) {{ {body} }}\n" for name, body in FORMS.items())


def load(build_dir: str):
    from torch.utils.cpp_extension import load_inline

    return load_inline("probe_torch_check", SOURCE, functions=list(FORMS), build_directory=build_dir, verbose=False)


def call_one(build_dir: str, form: str) -> None:
    """Child process: load the built module, call one form, report."""
    module = load(build_dir)
    try:
        getattr(module, form)(5)
    except RuntimeError as exc:
        print("RAISED", str(exc).splitlines()[0][:60])
    else:
        print("NO ERROR")


def main() -> None:
    if len(sys.argv) == 3:
        return call_one(*sys.argv[1:])
    import torch

    build_dir = tempfile.mkdtemp(prefix="probe_torch_check_")
    load(build_dir)  # build once; the children reuse it
    cxx = os.environ.get("CXX", "c++")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    print(f"torch {torch.__version__}, CXX11 ABI {torch._C._GLIBCXX_USE_CXX11_ABI}, compiler {cxx}: {version}")
    for form in FORMS:
        done = subprocess.run([sys.executable, __file__, build_dir, form], capture_output=True, text=True, timeout=120)
        result = done.stdout.strip() if done.returncode == 0 else f"DIED rc={done.returncode} {done.stderr[-200:]!r}"
        print(f"{form:20} {result}")
    maps = subprocess.run([sys.executable, "-c", "import torch; print(open('/proc/self/maps').read())"],
                          capture_output=True, text=True).stdout
    print("libstdc++ mapped:", sorted({line.split()[-1] for line in maps.splitlines() if "libstdc++" in line}))


if __name__ == "__main__":
    main()

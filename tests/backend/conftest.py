"""Backend tests reuse the op-level models of tests/passes (op_models.py)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "passes"))

from op_models import count_repacks  # noqa: E402


@pytest.fixture
def repack_calls(monkeypatch):
    return count_repacks(monkeypatch)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles from scratch (Dynamo caches code objects across tests otherwise)."""
    import torch

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()

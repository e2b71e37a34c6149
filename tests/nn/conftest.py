"""Fixtures for the nn tests (models in tiny_models.py)."""
import pytest
import torch
from tiny_models import TinyNet


@pytest.fixture
def tiny_net():
    def make(dtype=torch.bfloat16, **kw):
        return TinyNet(**kw).to(dtype).eval()

    return make

"""Shared test fixtures: seeded random tensors, so every test sees the same numbers on every run."""
import pytest
import torch


@pytest.fixture
def randn():
    """randn(*shape, dtype=torch.float32, scale=1.0, seed=0): N(0, scale^2) values from a fixed seed."""

    def make(*shape, dtype=torch.float32, scale=1.0, seed=0):
        gen = torch.Generator().manual_seed(seed)
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    return make


@pytest.fixture
def randint():
    """randint(low, high, *shape, dtype=torch.int64, seed=0): uniform integers from a fixed seed."""

    def make(low, high, *shape, dtype=torch.int64, seed=0):
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(low, high, shape, generator=gen).to(dtype)

    return make

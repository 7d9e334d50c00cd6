import numpy as np
import pytest
import torch

from clip_hba.data import load_concepts, load_spose


@pytest.fixture(scope="session")
def concepts():
    return load_concepts()


@pytest.fixture(scope="session")
def spose():
    return load_spose()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def torch_threads():
    """``torch_threads(n)`` sets torch's thread count for the test; restored after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)

import numpy as np
import pytest

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

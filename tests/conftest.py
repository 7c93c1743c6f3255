"""Shared fixtures: the bundled toy model and small toy stacks."""

from __future__ import annotations

import numpy as np
import pytest

SOURCE = {"mu0": 96, "sigma0": 18, "mu1": 138, "sigma1": 18}
BRIGHT = {"mu0": 136, "sigma0": 18, "mu1": 178, "sigma1": 18}


@pytest.fixture(scope="session")
def toy_model():
    """The bundled ``toy-perlin`` model on the CPU (tests must not modify it: they get copies)."""
    import napari_bnadapt as nb

    return nb.load_model("toy-perlin", device="cpu")


@pytest.fixture(scope="session")
def toy_model_5nm(toy_model):
    """A copy of the toy model whose card says it was trained at 5 x 5 nm pixels."""
    import copy

    model = copy.deepcopy(toy_model)
    model.meta["pixel_size_nm"] = [5.0, 5.0]
    return model


@pytest.fixture(scope="session")
def source_stack():
    from napari_bnadapt import synthetic

    return synthetic.generate(48, (64, 64), seed=11, **SOURCE)


@pytest.fixture(scope="session")
def bright_stack():
    from napari_bnadapt import synthetic

    return synthetic.generate(48, (64, 64), seed=12, **BRIGHT)


def state_bytes(model) -> dict[str, bytes]:
    """Every tensor of a model as bytes (to prove it did not change)."""
    return {k: v.detach().cpu().numpy().tobytes() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread: on a shared 2-core machine two threads run small passes several times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rng():
    return np.random.default_rng(0)

"""The inference copy (BatchNorm folded, concatenations split, channels-last) computes what the U-Net computes.

Checked for EVERY constructor option of :class:`~napari_bnadapt.model.unet.UNet` (a
product of values, each option at its default and at least one other value), with
random non-trivial BatchNorm statistics and affine parameters, in both memory
layouts. ``test_every_unet_option_is_covered`` fails when ``UNet`` gains a
constructor parameter that the equivalence test does not vary, so a new
architecture option cannot slip past the fast copy untested.
"""

import inspect
import itertools

import numpy as np
import pytest
import torch

import napari_bnadapt as nb
from napari_bnadapt.model.layout import SIZE_MULTIPLE
from napari_bnadapt.model.unet import UNet, Up
from napari_bnadapt.segmentation.fusion import fold_batchnorm, inference_copy

from ..conftest import state_bytes

#: Every constructor parameter of UNet and the values the equivalence test tries (default first).
UNET_OPTIONS = {
    "in_channels": [1, 3],
    "n_classes": [2, 1, 3],
    "width": [16, 1, 3, 8],  # 1 and 3: odd / minimal widths (channel halving in the bilinear layout)
    "bilinear": [False, True],
}
#: The full product, except width 16 (the default) only at the default in/out channels (it is the slowest).
CASES = [
    dict(zip(UNET_OPTIONS, values))
    for values in itertools.product(*UNET_OPTIONS.values())
    if values[2] != 16 or (values[0], values[1]) == (1, 2)
]


def _case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


def _randomise(model, seed, in_channels=1):
    """Non-trivial statistics and affine parameters in every BatchNorm, as after training or adaptation.

    The running statistics are first measured on random data (so that even a width-1
    network keeps a live channel after each ReLU), then perturbed per channel; the
    affine parameters are drawn away from the identity.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the measuring passes
        model.train()
        for _ in range(2):
            model(torch.rand(2, in_channels, 32, 32, generator=g) * 4 - 2)
        for m in bns:
            n = m.num_features
            m.momentum = 0.1
            sd = m.running_var.sqrt()
            m.running_mean.add_(sd * (torch.rand(n, generator=g) - 0.5))
            m.running_var.mul_(torch.rand(n, generator=g) * 0.8 + 0.6)
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.rand(n, generator=g) * 0.6 - 0.2)
    assert all(not torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in bns)
    return model


def test_every_unet_option_is_covered():
    """A new UNet constructor parameter must be added to UNET_OPTIONS (and so to the equivalence test)."""
    sig = inspect.signature(UNet.__init__)
    params = {n: p for n, p in sig.parameters.items() if n != "self"}
    assert not [p for p in params.values() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)], \
        "UNet takes *args/**kwargs: the fusion test cannot know which options exist"
    assert set(params) == set(UNET_OPTIONS), (
        f"UNet parameters {sorted(params)} != the options the fusion test covers {sorted(UNET_OPTIONS)}")
    for name, p in params.items():
        values = UNET_OPTIONS[name]
        assert p.default in values and len(set(values)) >= 2, name  # the default and another value
        assert set(values) <= {c[name] for c in CASES}, name  # every value is really tested
    # the config stored in model files is exactly these options
    assert set(UNet().config()) == set(UNET_OPTIONS)


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_inference_copy_equals_the_unet(case, channels_last, one_torch_thread):
    torch.manual_seed(0)
    model = _randomise(UNet(**case), seed=1, in_channels=case["in_channels"])
    model.train()  # the copy is eval whatever the model's mode; the model's mode is kept
    before = state_bytes(model)
    fast = inference_copy(model, torch.device("cpu"), channels_last=channels_last)
    assert fast is not model
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fast.modules())  # all folded
    assert not any(isinstance(m, Up) for m in fast.modules())  # every concatenation split
    assert not fast.training
    assert model.training and state_bytes(model) == before  # the caller's model is never changed

    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, case["in_channels"], 3 * SIZE_MULTIPLE, 2 * SIZE_MULTIPLE, generator=g) * 4 - 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = model.eval()(x.contiguous())
        got = fast(x)
    assert got.shape == ref.shape == (2, case["n_classes"], x.shape[2], x.shape[3])
    assert float(ref.std()) > 1e-3  # a real output, not a network whose ReLUs killed everything
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)


def test_the_copy_uses_the_running_statistics_of_a_model_in_train_mode(one_torch_thread):
    """Train mode normalises with batch statistics; the copy must fold the running ones (eval semantics)."""
    import copy

    torch.manual_seed(0)
    model = _randomise(UNet(width=4), seed=3).train()
    fast = inference_copy(model, torch.device("cpu"))
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        batch_stats = copy.deepcopy(model)(x)  # train mode (on a copy: it updates the running statistics)
    with torch.inference_mode():
        ref = model.eval()(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert not torch.allclose(batch_stats, ref, atol=1e-2)  # the two modes really differ here
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)


def test_predict_is_the_same_with_and_without_fusion(toy_model, one_torch_thread):
    from napari_bnadapt.io.stack_view import check_stack, resolve_normalization
    from napari_bnadapt.segmentation.engine import iter_slice_probabilities
    from napari_bnadapt.stats.source_statistics import model_normalization

    rng = np.random.default_rng(1)
    stack = rng.integers(60, 200, size=(2, 96, 80), dtype=np.uint8)
    view = check_stack(stack)
    norm = resolve_normalization(view, model_normalization(toy_model), None)
    out = {}
    for fused in (False, True):
        items = iter_slice_probabilities(toy_model, view, norm, fused=fused, device="cpu")
        out[fused] = np.stack([p for it in items if isinstance(it, tuple) for p in [it[1]]])
    assert out[False].std() > 0.1  # real probabilities, not a constant
    np.testing.assert_allclose(out[True], out[False], atol=1e-5)


def test_a_model_that_is_not_a_unet_is_used_as_is():
    m = torch.nn.Conv2d(1, 2, 3)
    assert inference_copy(m, torch.device("cpu")) is m
    assert isinstance(fold_batchnorm(nb.UNet(width=2)).inc.bn1, torch.nn.Identity)

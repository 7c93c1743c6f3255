import pytest
import torch

from napari_bnadapt.model.unet import UNet, batchnorm_layers, count_parameters


@pytest.mark.parametrize("bilinear", [False, True])
def test_output_shape_and_layout(bilinear):
    m = UNet(width=8, bilinear=bilinear).eval()
    with torch.no_grad():
        y = m(torch.zeros(2, 1, 48, 64))
    assert y.shape == (2, 2, 48, 64)
    assert len(batchnorm_layers(m)) == 18  # as in the papers' U-Net
    assert list(m.latent_modules()) == ["ls0", "ls1", "ls2", "ls3", "ls4", "dec"]


@pytest.mark.parametrize("config, n", [
    ({"width": 16}, 1_942_306),  # docs/method.md: the width-16 U-Net has 1.9 M parameters
    ({"width": 8}, 486_418),  # docs/models.md: toy-perlin, 486,418 parameters
    ({"width": 16, "bilinear": True}, 1_080_658),  # docs/models.md: lucchi-pp and vnc, 1,080,658
    ({"width": 64}, 31_036_546),  # docs/method.md: the papers' width, 31 M parameters
])
def test_parameter_counts(config, n):
    assert count_parameters(UNet(**config)) == n


def test_latent_taps_are_pre_relu():
    m = UNet(width=8).eval()
    seen = {}
    hooks = [bn.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, float(o.min())))
             for n, bn in m.latent_modules().items()]
    with torch.no_grad():
        m(torch.randn(1, 1, 32, 32))
    for h in hooks:
        h.remove()
    assert all(v < 0 for v in seen.values()), seen  # negative values exist before the ReLU

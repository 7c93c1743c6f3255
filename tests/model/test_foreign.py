"""Models built elsewhere: a U-Net written here in plain PyTorch, scripted, traced, and unusable ones."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import napari_bnadapt as nb
from napari_bnadapt import workflow
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.model import foreign
from napari_bnadapt.model.files import default_meta

from ..conftest import state_bytes

RANGE = (0, 255)  # the toy stacks are 8-bit; these models take grey values mapped to [0, 1]


class Block(nn.Module):
    """(conv 3x3 -> BatchNorm -> ReLU) twice."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TinyUNet(nn.Module):
    """A two-level U-Net that is not this project's class (and does not say how many channels it takes)."""

    def __init__(self, out_channels: int = 2, in_ch: int = 1, width: int = 8) -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.bottom = Block(in_ch, w), Block(w, 2 * w), Block(2 * w, 4 * w)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), Block(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), Block(2 * w, w)
        self.head = nn.Conv2d(w, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottom(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        return self.head(self.dec1(torch.cat([self.up1(d2), e1], 1)))


def _script(model: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated in new PyTorch
        return torch.jit.script(model)


def _trace(model: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model.eval(), torch.zeros(1, 1, 64, 64))


@pytest.fixture(scope="module")
def toy():
    return nb.sample_data.toy_source(), nb.sample_data.toy_brightness_target()


@pytest.fixture(scope="module")
def trained(toy, one_torch_thread):
    """TinyUNet (2 output channels) trained 100 steps on 64 px crops of the toy source, seeded."""
    (images, truth), _ = toy
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = TinyUNet(2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x_all = torch.from_numpy(images.astype(np.float32) / 255.0)
    y_all = torch.from_numpy(truth.astype(np.int64))
    model.train()
    for _ in range(100):
        z = rng.integers(0, images.shape[0], 8)
        ys, xs = rng.integers(0, images.shape[1] - 64, 8), rng.integers(0, images.shape[2] - 64, 8)
        x = torch.stack([x_all[a, b:b + 64, c:c + 64] for a, b, c in zip(z, ys, xs)])[:, None]
        y = torch.stack([y_all[a, b:b + 64, c:c + 64] for a, b, c in zip(z, ys, xs)])
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _only_statistics_changed(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    assert before.keys() == after.keys()
    changed = {k for k in before if before[k] != after[k]}
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed), changed
    assert not {k for k in before if k.endswith(("weight", "bias")) and before[k] != after[k]}


def test_a_plain_pytorch_unet_is_adapted_and_segments(trained, toy):
    (src, src_truth), (tgt, tgt_truth) = toy
    source_state = state_bytes(trained)
    assert nb.iou(nb.segment(trained, src, device="cpu", intensity_range=RANGE), src_truth) >= 0.93
    before = nb.iou(nb.segment(trained, tgt, device="cpu", intensity_range=RANGE), tgt_truth)
    adapted, report = nb.adapt(trained, tgt, device="cpu", intensity_range=RANGE)
    after = nb.iou(nb.segment(adapted, tgt, device="cpu", intensity_range=RANGE), tgt_truth)
    # measured: in-domain 0.96, on the brighter target 0.21 before (all foreground), 0.96 after
    assert before < 0.3
    assert after >= 0.93
    assert adapted is not trained and isinstance(adapted, TinyUNet)
    _only_statistics_changed(source_state, state_bytes(adapted))
    assert state_bytes(trained) == source_state and not trained.training  # the source model is untouched
    assert report.converged and len(report.layers) == 10
    assert any("built elsewhere" in n for n in report.notes) and "note:" in str(report)
    assert adapted.meta["normalization"] == foreign.FOREIGN_NORMALIZATION  # the card sticks to the copy
    assert adapted.meta["adaptation"]["report"]["intensity_range"] == (0.0, 255.0)


def test_a_single_output_channel_is_a_sigmoid_logit(trained, toy):
    """The same network with one output logit (l1 - l0): sigmoid(l1 - l0) == softmax(l0, l1)[1]."""
    (_, _), (tgt, _) = toy
    single = TinyUNet(1)
    single.load_state_dict({k: v for k, v in trained.state_dict().items() if not k.startswith("head.")}, strict=False)
    with torch.no_grad():
        single.head.weight.copy_(trained.head.weight[1:] - trained.head.weight[:1])
        single.head.bias.copy_(trained.head.bias[1:] - trained.head.bias[:1])
    single.eval()
    two = nb.predict(trained, tgt[:2], device="cpu", intensity_range=RANGE)
    one = nb.predict(single, tgt[:2], device="cpu", intensity_range=RANGE)
    np.testing.assert_allclose(one, two, atol=1e-5)
    adapted, _ = nb.adapt(single, tgt, device="cpu", intensity_range=RANGE)
    assert nb.segment(adapted, tgt[:2], intensity_range=RANGE).mean() < nb.segment(single, tgt[:2],
                                                                                      intensity_range=RANGE).mean()


def test_a_scripted_model_changes_only_batchnorm_statistics(trained, toy, tmp_path):
    """torch.jit.script, then saved and imported with torch.jit.load: the weights never change."""
    (_, _), (tgt, tgt_truth) = toy
    path = tmp_path / "tiny.pt"
    torch.jit.save(_script(trained), str(path))
    file_bytes = path.read_bytes()
    scripted = torch.jit.load(str(path))
    assert foreign.describe(scripted).kind == "scripted"
    source_state = state_bytes(scripted)
    adapted, report = nb.adapt(scripted, tgt, device="cpu", intensity_range=RANGE)
    assert isinstance(adapted, torch.jit.ScriptModule) and adapted is not scripted
    _only_statistics_changed(source_state, state_bytes(adapted))
    assert state_bytes(scripted) == source_state and not scripted.training
    assert path.read_bytes() == file_bytes
    assert any("TorchScript" in n for n in report.notes)
    # the same statistics as the hook-based estimator on the plain module (the batch's own variance
    # is PyTorch's unbiased one here: at least 2048 samples a batch, so within 1/2048)
    reference, _ = nb.adapt(trained, tgt, device="cpu", intensity_range=RANGE)
    ref = reference.state_dict()
    for k, v in adapted.state_dict().items():
        if k.endswith("running_mean"):
            sd = ref[k.replace("mean", "var")].sqrt()
            assert ((v - ref[k]).abs() / sd).max() < 1e-3, k
        elif k.endswith("running_var"):
            assert ((v / ref[k]) - 1).abs().max() < 2e-3, k
    after = nb.iou(nb.segment(adapted, tgt, device="cpu", intensity_range=RANGE), tgt_truth)
    assert after >= 0.93


@pytest.mark.parametrize("mode", ["cumulative", "ema", "prior"])
def test_scripted_estimators_match_the_plain_ones_over_several_batches(trained, toy, mode):
    (_, _), (tgt, _) = toy
    kw = dict(device="cpu", intensity_range=RANGE, mode=mode, patch_size=64, n_patches=300, batch_size=128)
    plain, rp = nb.adapt(trained, tgt, **kw)
    scripted, rs = nb.adapt(_script(trained), tgt, **kw)
    assert rp.n_patches == rs.n_patches == 300 and rs.batch_size == 128  # three batches
    assert np.isfinite(rs.drift) and np.isfinite(rp.drift)
    if mode == "ema":  # both judged after half of the batches
        assert rs.drift == pytest.approx(rp.drift, rel=1e-3)
    ref = plain.state_dict()
    for k, v in scripted.state_dict().items():
        if k.endswith("running_mean"):
            assert ((v - ref[k]).abs() / ref[k.replace("mean", "var")].sqrt()).max() < 2e-3, (mode, k)


def test_a_scripted_model_is_refused_class_balanced_statistics(trained, toy):
    (_, _), (tgt, _) = toy
    scripted = _script(trained)
    before = state_bytes(scripted)
    with pytest.raises(BNAdaptError, match="mode='balanced' needs Python hooks"):
        nb.adapt(scripted, tgt, device="cpu", intensity_range=RANGE, mode="balanced")
    assert state_bytes(scripted) == before


def test_a_traced_model_is_refused_and_still_segments(trained, toy, tmp_path):
    (_, _), (tgt, _) = toy
    traced = _trace(trained)
    path = tmp_path / "traced.pt"
    torch.jit.save(traced, str(path))
    imported = torch.jit.load(str(path))  # the type no longer says "traced": the graph does
    for model in (traced, imported):
        assert foreign.describe(model).kind == "traced"
        before = state_bytes(model)
        with pytest.raises(BNAdaptError, match="traced in eval mode: its BatchNorm layers cannot re-estimate") as exc:
            nb.adapt(model, tgt, device="cpu", intensity_range=RANGE)
        assert "torch.jit.script" in str(exc.value) and "state dict" in str(exc.value)
        assert state_bytes(model) == before
        np.testing.assert_allclose(nb.predict(model, tgt[:1], intensity_range=RANGE),
                                   nb.predict(trained, tgt[:1], intensity_range=RANGE), atol=1e-5)


def test_unusable_models_are_refused_with_a_clear_sentence(toy):
    (_, _), (tgt, _) = toy
    torch.manual_seed(1)
    cases = [
        (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)).eval(), "no BatchNorm layers", False),
        (TinyUNet(2, in_ch=3).eval(), "expects 3 input channels", True),
        (TinyUNet(5).eval(), "has 5 output channels", True),
    ]
    for model, message, segments in cases:
        before = state_bytes(model)
        with pytest.raises(BNAdaptError, match=message):
            nb.adapt(model, tgt[:1], device="cpu", intensity_range=RANGE)
        if segments:
            with pytest.raises(BNAdaptError, match=message):
                nb.segment(model, tgt[:1], device="cpu", intensity_range=RANGE)
        assert state_bytes(model) == before and not model.training
    declared = TinyUNet(2).eval()
    declared.in_channels = 3  # what a torch-em U-Net says about itself
    with pytest.raises(BNAdaptError, match="expects 3 input channels"):
        nb.predict(declared, tgt[:1], intensity_range=RANGE)
    with pytest.raises(BNAdaptError, match="torch.nn.Module"):
        nb.adapt("not a model", tgt[:1])


def test_the_default_card_maps_grey_values_to_0_1(trained, toy):
    (_, _), (tgt, _) = toy
    with pytest.raises(BNAdaptError, match=r"outside the model's training range 0\.\.1"):
        nb.predict(trained, tgt[:1])
    card = foreign.meta_for(trained, name="tiny", mean=0.5, std=0.25)
    assert card["normalization"] == {"mode": "fixed", "low": 0.0, "high": 1.0, "mean": 0.5, "std": 0.25}
    assert card["architecture"]["kind"] == "module" and card["name"] == "tiny"
    assert default_meta(trained)["normalization"] == foreign.FOREIGN_NORMALIZATION


def test_reliability_needs_this_projects_unet(trained, toy):
    (_, _), (tgt, tgt_truth) = toy
    adapted, _ = nb.adapt(trained, tgt[:2], device="cpu", intensity_range=RANGE)
    with pytest.raises(BNAdaptError, match="needs this project's U-Net .* this model .*has neither"):
        nb.reliability(trained, adapted, tgt[:2], intensity_range=RANGE)
    res = workflow.run(trained, tgt[:2], truth=tgt_truth[:2], device="cpu", intensity_range=RANGE)
    assert res.reliability is None and "this project's U-Net" in res.reliability_note
    assert res.iou_source_only < 0.3 and res.iou >= 0.9


def test_describe_and_copies(trained, toy_model):
    assert foreign.describe(toy_model).is_unet
    assert foreign.describe(trained).kind == "module"
    scripted = _script(trained)
    scripted.meta = {"name": "tiny"}
    copied = foreign.copy_model(scripted)
    assert copied.meta == {"name": "tiny"} and copied.meta is not scripted.meta
    assert all(p.is_leaf for p in copied.parameters())  # not autograd clones of the original
    with torch.no_grad():
        dict(copied.named_modules())["enc1.bn1"].running_mean.add_(1)
    assert state_bytes(scripted) == state_bytes(trained)


def test_save_model_refuses_a_foreign_model_and_writes_nothing(trained, tmp_path):
    with pytest.raises(BNAdaptError, match="save_model writes this project's U-Net"):
        nb.save_model(trained, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []

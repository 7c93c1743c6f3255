import copy
import hashlib

import numpy as np
import pytest
import torch

import napari_bnadapt as nb
from napari_bnadapt.adabn.adaptation import CONVERGENCE_TOLERANCE
from napari_bnadapt.adabn.estimators import adapt_batchnorm_iter
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.io.stack_view import Normalization
from napari_bnadapt.model.unet import batchnorm_layers
from napari_bnadapt.progress import Progress, Result, run_to_end

from ..conftest import state_bytes


def test_brightness_shift_collapses_and_adaptation_restores(toy_model, bright_stack):
    """Thesis experiment #2: both means +40 ruin the source model; AdaBN restores it."""
    images, truth = bright_stack
    before = nb.iou(nb.segment(toy_model, images, device="cpu"), truth)
    adapted, report = nb.adapt(toy_model, images, device="cpu")
    after = nb.iou(nb.segment(adapted, images, device="cpu"), truth)
    # measured (seeds 11/12, 48 images of 64 x 64): 0.217 before (all white: the foreground fraction is
    # 0.21), 0.981 after; docs/models.md: in-domain IoU 0.983, so AdaBN should restore almost all of it
    assert before < 0.3
    assert after >= 0.97
    assert report.converged and report.n_voxels == images.size
    assert np.isfinite(report.drift)  # one batch, but judged by pooling half of the patches on their own


def test_in_domain_iou(toy_model, source_stack):
    images, truth = source_stack
    # docs/models.md: test IoU 0.983 on fresh images; measured 0.983 on this stack
    assert nb.iou(nb.segment(toy_model, images, device="cpu"), truth) >= 0.97


def _exact_pooled_statistics(model, batches):
    """Reference: each BN layer's exact pooled float64 statistics, set layer by layer in forward order."""
    model = copy.deepcopy(model).eval()
    out = {}
    for name, bn in batchnorm_layers(model):
        acc = []
        h = bn.register_forward_pre_hook(lambda m, inp: acc.append(inp[0].double().transpose(0, 1).reshape(inp[0].shape[1], -1)))
        with torch.no_grad():
            for x in batches:
                model(x)
        h.remove()
        allx = torch.cat(acc, 1)
        mean, var = allx.mean(1), allx.var(1)
        bn.running_mean.copy_(mean.float())
        bn.running_var.copy_(var.float())
        out[name] = (mean, var)
    return out


def test_cumulative_matches_exact_pooled_statistics(toy_model):
    """Default-size patches (256 px), several batches: every channel of every layer within 1 % of sigma."""
    from napari_bnadapt import synthetic

    images = synthetic.generate(16, (256, 256), seed=12, cell_size=32, mu0=136, sigma0=18, mu1=178, sigma1=18)[0]
    norm = Normalization.from_meta(toy_model.meta["normalization"])
    x = torch.from_numpy(norm.apply(images)[:, None])
    batches = list(x.split(4))
    exact = _exact_pooled_statistics(toy_model, batches)
    adapted = copy.deepcopy(toy_model)
    run_to_end(adapt_batchnorm_iter(adapted, batches, len(batches), mode="cumulative"))
    worst = 0.0
    for name, bn in batchnorm_layers(adapted):
        m, v = exact[name]
        sd = v.sqrt()
        worst = max(worst, float(((bn.running_mean.double() - m).abs() / sd).max()))
        worst = max(worst, float(((bn.running_var.double().sqrt() - sd).abs() / sd).max()))
    assert worst < 0.01, f"cumulative statistics off by {worst:.4f} sigma"


def test_cumulative_keeps_between_batch_variance():
    """Per-image brightness changes: PyTorch's average of batch variances would give 1, the truth is 5."""
    bn = torch.nn.BatchNorm2d(1)
    model = torch.nn.Sequential(bn)
    offsets = [-4.0, -2.0, 0.0, 2.0, 4.0]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(1, 1, 64, 64, generator=g) + o for o in offsets]
    run_to_end(adapt_batchnorm_iter(model, batches, len(batches)))
    assert abs(bn.running_var.item() - 9.0) < 0.3  # 1 + var(offsets) = 1 + 8


def test_source_model_and_file_unchanged(tmp_path, bright_stack):
    path = tmp_path / "src.safetensors"
    nb.save_model(nb.load_model("toy-perlin", device="cpu"), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    model = nb.load_model(path, device="cpu")
    before = state_bytes(model)
    meta = copy.deepcopy(model.meta)
    adapted, _ = nb.adapt(model, bright_stack[0], device="cpu")
    assert state_bytes(model) == before
    arrays, arrays_before = model.meta.get("arrays", {}), meta.pop("arrays", {})
    assert {k: v for k, v in model.meta.items() if k != "arrays"} == meta
    assert arrays.keys() == arrays_before.keys() and all(np.array_equal(arrays[k], arrays_before[k]) for k in arrays)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert state_bytes(adapted) != before
    assert adapted.meta["adaptation"]["source_model"] == model.meta["name"]


def test_only_batchnorm_statistics_change(toy_model, bright_stack):
    adapted, _ = nb.adapt(toy_model, bright_stack[0], device="cpu")
    src, dst = toy_model.state_dict(), adapted.state_dict()
    changed = {k for k in src if not torch.equal(src[k], dst[k])}
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed)


def test_modes_and_reproducibility(toy_model, bright_stack):
    images, truth = bright_stack
    a1, r1 = nb.adapt(toy_model, images, device="cpu", n_patches=12, patch_size=64, seed=3)
    a2, _ = nb.adapt(toy_model, images, device="cpu", n_patches=12, patch_size=64, seed=3)
    assert state_bytes(a1) == state_bytes(a2)
    assert not r1.exhaustive and r1.n_patches == 12
    assert np.isfinite(r1.drift) and r1.converged == (r1.drift <= CONVERGENCE_TOLERANCE)
    ema, _ = nb.adapt(toy_model, images, device="cpu", mode="ema", alpha=0.1, batch_size=4)
    prior, rp = nb.adapt(toy_model, images, device="cpu", mode="prior", prior=16)
    # EMA and prior keep part of the source statistics: in between source and cumulative
    name = "inc.bn1"
    s = dict(toy_model.named_modules())[name].running_mean
    c = dict(a1.named_modules())[name].running_mean
    for m in (ema, prior):
        v = dict(m.named_modules())[name].running_mean
        assert 0 < float((v - s).norm()) < float((c - s).norm())
    assert rp.prior == 16


def test_prior_mode_is_the_documented_weighted_average(toy_model, bright_stack):
    """docs/method.md: mu = N/(N+n) mu_s + n/(N+n) mu_t (same for the variance), n = number of target patches.

    mu_t is what the cumulative estimator measures on the same patches, in every layer (both
    modes run the same train-mode passes; the prior is mixed in at the end).
    """
    images = bright_stack[0]
    cumulative, _ = nb.adapt(toy_model, images, device="cpu")
    prior, report = nb.adapt(toy_model, images, device="cpu", mode="prior", prior=16)
    assert report.n_patches == 48  # the whole stack: one patch per image
    w = report.n_patches / (16 + report.n_patches)
    src, cum, pri = (dict(batchnorm_layers(m)) for m in (toy_model, cumulative, prior))
    assert len(src) == 18
    for name in src:
        for stat in ("running_mean", "running_var"):
            s, c = getattr(src[name], stat).double(), getattr(cum[name], stat).double()
            assert not torch.allclose(s, c)  # the target really differs from the source here
            np.testing.assert_allclose(getattr(pri[name], stat).double(), (1 - w) * s + w * c,
                                       rtol=1e-5, atol=1e-6, err_msg=f"{name}.{stat}")


def test_small_patches_get_larger_batches(toy_model, bright_stack):
    _, report = nb.adapt(toy_model, bright_stack[0], device="cpu", batch_size=4)
    assert report.batch_size == 128  # 64-px patches: 16 deep samples each, 2048 needed per batch


def test_generator_yields_progress_then_result(toy_model):
    from napari_bnadapt import synthetic

    images = synthetic.generate(16, (256, 256), seed=1, cell_size=32)[0]
    items = list(nb.adapt_iter(toy_model, images, device="cpu", batch_size=8))
    assert isinstance(items[-1], Result)
    prog = [i for i in items if isinstance(i, Progress)]
    assert prog[0].done == 0 and prog[-1].done == prog[-1].total == 2


def test_model_without_batchnorm_is_refused(bright_stack):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    with pytest.raises(BNAdaptError, match="no BatchNorm"):
        nb.adapt(model, bright_stack[0])


def test_bad_settings(toy_model, bright_stack):
    with pytest.raises(BNAdaptError, match="mode"):
        nb.adapt(toy_model, bright_stack[0], mode="magic")
    with pytest.raises(BNAdaptError, match="n_patches"):
        nb.adapt(toy_model, bright_stack[0], n_patches=0)


def test_input_not_modified(toy_model, bright_stack):
    images = bright_stack[0].copy()
    nb.adapt(toy_model, images, device="cpu")
    np.testing.assert_array_equal(images, bright_stack[0])


def test_suspended_generators_leave_grad_mode_alone(toy_model, bright_stack):
    """A cancelled run stops at a yield; torch's thread-local modes must not leak from there."""
    for gen in (nb.adapt_iter(toy_model, bright_stack[0], device="cpu"),
                nb.predict_iter(toy_model, bright_stack[0], device="cpu", batch_size=2)):
        next(gen)
        next(gen)
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        gen.close()


def test_patches_come_from_the_stack_resampled_to_the_model_pixel_size(toy_model, toy_model_5nm):
    from napari_bnadapt import synthetic

    images, _ = synthetic.generate(2, (48, 48), seed=41)
    _, plain = nb.adapt(toy_model, images, device="cpu")
    _, same = nb.adapt(toy_model_5nm, images, device="cpu", pixel_size_nm=(5.0, 5.0))
    adapted, rep = nb.adapt(toy_model_5nm, images, device="cpu", pixel_size_nm=(10.0, 10.0))
    assert same.zoom is None and same.patch_size == plain.patch_size == (48, 48)
    assert [layer.mean_shift for layer in same.layers] == [layer.mean_shift for layer in plain.layers]
    # 48 x 48 at 10 nm is 96 x 96 at the model's 5 nm: the whole (resampled) stack in 96 px patches
    assert rep.zoom == (2.0, 2.0) and rep.patch_size == (96, 96) and rep.n_voxels == 2 * 96 * 96
    assert any("resampled to the model's 5 x 5 nm" in n for n in rep.notes) and "zoom 2 x 2" in str(rep)
    assert [layer.mean_shift for layer in rep.layers] != [layer.mean_shift for layer in plain.layers]
    assert adapted.meta["adaptation"]["target"]["pixel_size_nm"] == [10.0, 10.0]
    assert adapted.meta["adaptation"]["report"]["zoom"] == (2.0, 2.0)

"""Streaming Gaussian moments, effective sample size, and latent-space hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.progress import Progress, Result, run_to_end
from napari_bnadapt.stats.latent_moments import (
    LatentMoments,
    collect_latent_moments,
    collect_latent_moments_iter,
)
from napari_bnadapt.stats.moments import GaussianMoments


def _flat(x: np.ndarray) -> np.ndarray:
    """(N, C, ...) -> (samples, C) float64."""
    x = np.asarray(x, dtype=np.float64)
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


def test_streaming_equals_batch_statistics():
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((5, 5))
    chunks = []
    gm = GaussianMoments(5)
    for i in range(40):  # many small updates of varying size
        n = 1 + i % 3
        x = np.einsum("dc,nchw->ndhw", mix, rng.standard_normal((n, 5, 3 + i % 4, 4))) + 3.0
        x = x.astype(np.float32)
        chunks.append(_flat(x))
        gm.update(torch.from_numpy(x))
    allx = np.concatenate(chunks)
    assert gm.count == allx.shape[0]
    assert _rel(gm.mean, allx.mean(0)) < 1e-10
    assert _rel(gm.cov, np.cov(allx, rowvar=False)) < 1e-10
    assert _rel(gm.var, allx.var(0, ddof=1)) < 1e-10
    assert isinstance(gm.mean, np.ndarray) and gm.mean.dtype == np.float64


def test_large_offset_costs_no_precision():
    rng = np.random.default_rng(1)
    x = (1e4 + rng.standard_normal((64, 3, 16, 16))).astype(np.float32)
    gm = GaussianMoments(3)
    for i in range(0, 64, 4):
        gm.update(torch.from_numpy(x[i : i + 4]))
    ref = _flat(x)
    assert _rel(gm.mean, ref.mean(0)) < 1e-12
    assert _rel(gm.cov, np.cov(ref, rowvar=False)) < 1e-9
    # numpy input and (m, C) samples give the same
    gm2 = GaussianMoments(3)
    for i in range(0, ref.shape[0], 1000):
        gm2.update(ref[i : i + 1000])
    assert _rel(gm2.cov, np.cov(ref, rowvar=False)) < 1e-9


def test_merge_equals_single_stream():
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((2, 4, 5, 5)) * (1 + i) + i for i in range(6)]
    one = GaussianMoments(4)
    a, b = GaussianMoments(4), GaussianMoments(4)
    for i, x in enumerate(xs):
        one.update(x)
        (a if i < 2 else b).update(x)
    a.merge(b)
    assert a.count == one.count and a.n_images == one.n_images
    assert _rel(a.mean, one.mean) < 1e-13
    assert _rel(a.cov, one.cov) < 1e-12
    assert a.design_effect == pytest.approx(one.design_effect, rel=1e-10)
    # a diagonal stream absorbs a full one; the reverse is refused
    d = GaussianMoments(4, full_covariance=False).update(xs[0])
    d.merge(GaussianMoments(4).update(xs[1]))
    ref = GaussianMoments(4).update(xs[0]).update(xs[1])
    assert d.cov is None and _rel(d.var, ref.var) < 1e-12
    with pytest.raises(BNAdaptError):
        GaussianMoments(4).merge(GaussianMoments(4, full_covariance=False).update(xs[0]))


def test_shapes_5d_and_diagonal():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 4, 5, 6))
    gm = GaussianMoments(2, full_covariance=False).update(torch.from_numpy(x))
    ref = _flat(x)
    assert gm.count == 3 * 4 * 5 * 6 and gm.cov is None
    assert _rel(gm.var, ref.var(0, ddof=1)) < 1e-12
    with pytest.raises(BNAdaptError):
        gm.update(np.zeros((2, 3, 4, 4)))  # wrong channel count
    with pytest.raises(BNAdaptError):
        GaussianMoments(2).update(np.full((1, 2, 2, 2), np.nan))
    with pytest.raises(BNAdaptError):
        _ = GaussianMoments(2).mean  # empty


def test_large_images_are_chunked(monkeypatch):
    import napari_bnadapt.stats.moments as mm

    monkeypatch.setattr(mm, "_CHUNK_ELEMENTS", 50)  # force the per-image pixel-chunk path
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 3, 9, 7)) + np.arange(3)[:, None, None, None]
    gm = GaussianMoments(3).update(x)
    ref = _flat(x)
    assert _rel(gm.cov, np.cov(ref, rowvar=False)) < 1e-12
    monkeypatch.setattr(mm, "_CHUNK_ELEMENTS", 1 << 23)
    gm2 = GaussianMoments(3).update(x)
    assert gm.design_effect == pytest.approx(gm2.design_effect, rel=1e-10)


def test_dict_round_trip_and_continue():
    rng = np.random.default_rng(5)
    x1, x2 = rng.standard_normal((4, 3, 6, 6)), rng.standard_normal((4, 3, 6, 6)) + 1
    gm = GaussianMoments(3).update(x1)
    state = gm.to_dict()
    for k, v in state.items():
        assert isinstance(v, (int, float, bool, np.ndarray)), k
    back = GaussianMoments.from_dict(state)
    assert _rel(back.cov, gm.cov) == 0 and back.effective_count == pytest.approx(gm.effective_count)
    # stored as tensors (a model file) and continued
    as_tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}
    back = GaussianMoments.from_dict(as_tensors).update(x2)
    ref = GaussianMoments(3).update(x1).update(x2)
    assert _rel(back.cov, ref.cov) < 1e-13
    assert back.design_effect == pytest.approx(ref.design_effect, rel=1e-10)
    bad = dict(state)
    del bad["m2"]
    with pytest.raises(BNAdaptError):
        GaussianMoments.from_dict(bad)


def test_effective_count():
    rng = np.random.default_rng(6)
    n_img, c, h = 60, 3, 16
    p = h * h
    # independent pixels: design effect ~ 1
    iid = GaussianMoments(c).update(rng.standard_normal((n_img, c, h, h)))
    assert 0.99 <= iid.design_effect < 1.5
    assert iid.effective_count == pytest.approx(iid.count / iid.design_effect)
    # each image one value plus tiny noise: design effect ~ pixels per image
    const = rng.standard_normal((n_img, c, 1, 1)) + 1e-3 * rng.standard_normal((n_img, c, h, h))
    gm = GaussianMoments(c).update(const)
    assert gm.design_effect == pytest.approx(p, rel=0.02)
    assert gm.effective_count == pytest.approx(n_img, rel=0.02)
    # half the variance shared within an image (intra-class correlation 0.5): deff ~ 1 + (P-1)/2
    half = rng.standard_normal((n_img, c, 1, 1)) + rng.standard_normal((n_img, c, h, h))
    gm = GaussianMoments(c).update(half)
    assert 0.6 * (1 + (p - 1) * 0.5) < gm.design_effect < 1.5 * (1 + (p - 1) * 0.5)
    # (m, C) rows are independent samples; a single image cannot estimate it (conservative)
    assert GaussianMoments(c).update(rng.standard_normal((500, c))).design_effect < 1.5
    assert GaussianMoments(c).update(rng.standard_normal((1, c, h, h))).effective_count == pytest.approx(1.0)


# ------------------------------------------------------------------- hooks
def _toy_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([-1.0, 0.5, -2.0, 0.0]))
        model[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
    return model


def _batches(n=5, b=3, h=12):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, 1, h, h, generator=g) for _ in range(n)]


def test_hook_sees_pre_relu_output_despite_inplace_relu():
    model = _toy_model()
    model.train()  # collect must switch to eval and restore afterwards
    batches = _batches()
    stats = collect_latent_moments(model, batches, {"bn": model[1]})
    assert model.training and model[1].training
    assert not model[1]._forward_hooks  # hooks removed
    gm = stats["bn"]
    assert np.any(gm.mean < 0), "post-ReLU values were recorded (the in-place ReLU trap)"
    # equals the BatchNorm output computed directly in eval mode
    model.eval()
    with torch.no_grad():
        ref = np.concatenate([_flat(model[1](model[0](x)).numpy()) for x in batches])
    assert _rel(gm.mean, ref.mean(0)) < 1e-6
    assert _rel(gm.cov, np.cov(ref, rowvar=False)) < 1e-5
    # the trap itself: a hook that keeps a reference sees the ReLU's work
    kept = []
    h = model[1].register_forward_hook(lambda m, i, o: kept.append(o))
    with torch.no_grad():
        model(batches[0])
    h.remove()
    assert float(kept[0].min()) >= 0.0


def test_generator_progress_and_diagonal_switch():
    model = _toy_model()
    batches = _batches(n=4)
    items = list(collect_latent_moments_iter(model, batches, {"bn": model[1], "conv": model[0]}, full_cov_max_dim=3))
    progress = [it for it in items if isinstance(it, Progress)]
    assert [p.done for p in progress] == [1, 2, 3, 4] and all(p.total == 4 for p in progress)
    assert isinstance(items[-1], Result)
    stats = items[-1].value
    assert list(stats) == ["bn", "conv"]
    assert stats["bn"].cov is None and stats["bn"].var.shape == (4,)  # 4 > full_cov_max_dim
    # generators (unknown length) and run_to_end
    stats2 = run_to_end(collect_latent_moments_iter(model, iter(batches), {"bn": model[1]}))
    assert stats2["bn"].count == 4 * 3 * 12 * 12
    # cancelling mid-way removes the hooks
    gen = collect_latent_moments_iter(model, batches, {"bn": model[1]})
    next(gen)
    gen.close()
    assert not model[1]._forward_hooks
    with pytest.raises(BNAdaptError):
        collect_latent_moments(model, [], {"bn": model[1]})


def test_latent_moments_context_manager_and_distance():
    from napari_bnadapt.stats.wasserstein import distance

    model = _toy_model().eval()
    with LatentMoments({"bn": model[1]}) as lm, torch.inference_mode():
        for x in _batches(n=3):
            model(x)
    assert not model[1]._forward_hooks
    a = lm.moments["bn"]
    b = collect_latent_moments(model, [x + 0.5 for x in _batches(n=3)], {"bn": model[1]})["bn"]
    d = distance(a, b, "target")
    assert d.dim == 4 and d.floor > 0
    assert d.m_eff_ref == pytest.approx(a.effective_count)
    # the value, against an independent computation from the BatchNorm outputs themselves: tnW2^2
    # whitened by the SECOND Gaussian with its symmetric inverse square root (eigh, not Cholesky)
    with torch.no_grad():
        xa = np.concatenate([_flat(model[1](model[0](x)).numpy()) for x in _batches(n=3)])
        xb = np.concatenate([_flat(model[1](model[0](x + 0.5)).numpy()) for x in _batches(n=3)])
    w, v = np.linalg.eigh(np.cov(xb, rowvar=False))
    whiten = (v / np.sqrt(w)) @ v.T
    z = whiten @ (xa.mean(0) - xb.mean(0))
    lam = np.linalg.eigvalsh(whiten @ np.cov(xa, rowvar=False) @ whiten)
    want = float(z @ z + np.sum((np.sqrt(lam) - 1) ** 2))
    assert want > 10 * d.floor  # a real shift (+0.5 on the input), far above the noise
    assert d.value == pytest.approx(want, rel=1e-6)
    # a stored dict works as well
    d2 = distance(a.to_dict(), b.to_dict(), "target")
    assert d2.value == pytest.approx(d.value, rel=1e-12)


def test_floor_with_effective_count_matches_clustered_samples():
    """Two independent sets of correlated images of one distribution land near (below) the
    floor computed from the effective counts, far above the floor of the raw pixel counts."""
    from napari_bnadapt.stats.wasserstein import distance, noise_floor

    rng = np.random.default_rng(10)
    n, k, h, icc = 3, 60, 8, 0.5
    mix = rng.standard_normal((n, n))

    def images():
        x = np.sqrt(icc) * rng.standard_normal((k, n, 1, 1)) + np.sqrt(1 - icc) * rng.standard_normal((k, n, h, h))
        return np.einsum("dc,kchw->kdhw", mix, x)

    vals, floors, naive = [], [], []
    for _ in range(30):
        a, b = GaussianMoments(n).update(images()), GaussianMoments(n).update(images())
        d = distance(a, b, "target")
        assert d.meaningful
        vals.append(d.value)
        floors.append(d.floor)
        naive.append(noise_floor(n, a.count, b.count, "target"))
    ratio = np.mean(vals) / np.mean(floors)
    # the design effect of the mean is applied to the covariance part too: conservative (~0.65 here)
    assert 0.45 < ratio < 1.25, ratio
    assert np.mean(vals) / np.mean(naive) > 5


def test_default_modules_from_model():
    class Tiny(nn.Sequential):
        def latent_modules(self):
            return {"ls0": self[1]}

    model = Tiny(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(inplace=True))
    stats = collect_latent_moments(model, [b.numpy() for b in _batches(n=2)])
    assert list(stats) == ["ls0"] and stats["ls0"].count == 2 * 3 * 12 * 12

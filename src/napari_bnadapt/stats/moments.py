"""Streaming Gaussian moments of latent activations (docs/method.md, 'Latent spaces').

A latent space is the output of a BatchNorm layer taken BEFORE the ReLU that
follows it. An activation of shape (N, C, H, W) is N*H*W samples of a
C-dimensional vector. :class:`GaussianMoments` fits N(mean, cov) to such samples
in a single streaming pass with memory independent of the number of samples:

* Every update is reduced to (count, mean, centred second moment) in float64 on
  the activation's device (CPU for Apple MPS, which has no float64), and merged
  with the running state by the pairwise rule of Chan, Golub and LeVeque.
  Nothing is ever accumulated as raw sums, so a large common offset costs no
  precision (a float32 raw-sum accumulator loses everything at offset 100).
* Pixels of one image are correlated, so N*H*W overstates the information in
  the sample. The stream also tracks the per-image channel means and estimates
  a design effect (see :attr:`GaussianMoments.design_effect`) giving an
  effective sample size used by the Wasserstein noise floor.

:class:`LatentMoments` registers forward hooks that update one
:class:`GaussianMoments` per module INSIDE the hook. This matters: the op after
each BatchNorm of the U-Net is ``ReLU(inplace=True)``, which overwrites the
BatchNorm output tensor in place; a hook that only kept a reference would see
post-ReLU values. :func:`collect_latent_moments` runs a model over batches with
such hooks, in ``eval()`` and ``torch.inference_mode()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import BNAdaptError

_STATE_VERSION = 1


# float64 elements converted at a time (64 MiB); larger inputs are processed in chunks
_CHUNK_ELEMENTS = 1 << 23


def _accumulation_device(device: Any) -> torch.device:
    dev = torch.device(device)
    if dev.type == "mps":  # no float64 on MPS
        return torch.device("cpu")
    return dev


def _to_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    return t.detach().to("cpu", torch.float64).numpy().copy()


class GaussianMoments:
    """Streaming float64 mean and covariance of C-dimensional samples.

    Parameters
    ----------
    dim : int
        The number of channels C.
    full_covariance : bool
        Keep the full C x C covariance (memory C^2 float64). When False only the
        per-channel variances are kept and :attr:`cov` is None.
    device : str or torch.device, optional
        Where to accumulate. Default: the device of the first tensor passed to
        :meth:`update` (CPU for numpy input and for MPS tensors).

    Notes
    -----
    Statistics of one update are computed in float64 around the update's own
    mean and merged with the running state by Chan's pairwise formulas::

        delta = mean_b - mean_a,  n = n_a + n_b
        mean  = mean_a + delta * n_b / n
        M2    = M2_a + M2_b + delta delta^T * n_a n_b / n

    :attr:`cov` is ``M2 / (count - 1)`` (unbiased).

    **Effective sample size.** Each image (index along N) is a cluster of P
    correlated pixels. With K images of sizes n_i, per-image channel means
    y_i, overall mean y and pooled variance s^2 (per channel), the variance of
    the overall mean is estimated cluster-robustly as
    ``K/(K-1) * sum_i n_i^2 (y_i - y)^2 / N^2`` and the design effect of a
    channel is that variance divided by the i.i.d. value ``s^2 / N``::

        deff_c = K/(K-1) * sum_i n_i^2 (y_i - y)^2 / (N s^2)

    (for equal sizes P this is ``P * var(per-image means) / s^2``; it is 1 for
    independent pixels and P for pixels that are all equal within an image).
    :attr:`design_effect` is the mean of ``deff_c`` over channels with non-zero
    variance, clamped to [1, largest image size], and
    ``effective_count = count / design_effect``. The sums are streamed (a
    weighted Chan merge with weights n_i^2), so memory does not grow with K.

    Limits: the estimate measures the correlation of the *mean*; the noise of a
    covariance estimate has its own (usually smaller) design effect, so using
    it for the covariance part of the noise floor is conservative. It needs
    enough images (>= ~20) to be stable; with a single image it cannot be
    estimated and the largest image size is used (effective count = number of
    images). Real differences between images (e.g. brightness drift) count as
    correlation, which is the right thing for the question "how well is the
    population mean known". Samples given as (m, C) are independent clusters of
    size 1. If images are tiles of one larger image, tiles are the clusters and
    correlation between tiles is not seen.
    """

    def __init__(self, dim: int, full_covariance: bool = True, device: Any = None) -> None:
        dim = int(dim)
        if dim < 1:
            raise BNAdaptError(f"the number of channels must be at least 1, got {dim}")
        self.dim = dim
        self.full_covariance = bool(full_covariance)
        self._device: torch.device | None = None if device is None else _accumulation_device(device)
        self._count = 0
        self._mean: torch.Tensor | None = None  # (C,)
        self._m2: torch.Tensor | None = None  # (C, C) or (C,)
        # cluster (per-image) statistics, weights w_i = n_i^2
        self._n_clusters = 0
        self._cluster_weight = 0.0
        self._cluster_mean: torch.Tensor | None = None  # (C,) weighted mean of per-image means
        self._cluster_q: torch.Tensor | None = None  # (C,) sum w_i (y_i - cluster_mean)^2
        self._max_cluster = 0

    # ------------------------------------------------------------------ state
    def __repr__(self) -> str:
        kind = "full" if self.full_covariance else "diagonal"
        return (
            f"GaussianMoments(dim={self.dim}, {kind}, count={self._count:,}, "
            f"images={self._n_clusters:,}, effective_count={self.effective_count:,.0f})"
        )

    @property
    def device(self) -> torch.device | None:
        """Where the running sums live (None before the first update)."""
        return self._device

    @property
    def count(self) -> int:
        """Number of C-vectors seen (N*H*W summed over updates)."""
        return self._count

    @property
    def n_images(self) -> int:
        """Number of images (clusters) seen."""
        return self._n_clusters

    @property
    def mean(self) -> np.ndarray:
        """Mean vector, float64 numpy (C,)."""
        self._require(1)
        return _to_numpy(self._mean)

    @property
    def cov(self) -> np.ndarray | None:
        """Unbiased covariance, float64 numpy (C, C); None when diagonal-only."""
        if not self.full_covariance:
            return None
        self._require(2)
        c = self._m2 / (self._count - 1)
        return _to_numpy(0.5 * (c + c.T))

    @property
    def var(self) -> np.ndarray:
        """Unbiased per-channel variance, float64 numpy (C,)."""
        self._require(2)
        return _to_numpy(self._diag_m2() / (self._count - 1))

    @property
    def design_effect(self) -> float:
        """Estimated design effect (>= 1) from the spread of per-image means; see the class notes."""
        if self._count == 0:
            return 1.0
        hi = float(max(1, self._max_cluster))
        if self._n_clusters < 2:
            return hi
        n = float(self._count)
        var = self._diag_m2() / n
        spread = self._cluster_q + self._cluster_weight * (self._cluster_mean - self._mean) ** 2
        ok = var > 1e-12 * float(var.max()) if float(var.max()) > 0 else torch.zeros_like(var, dtype=torch.bool)
        if not bool(ok.any()):
            return 1.0
        k = float(self._n_clusters)
        deff_c = k / (k - 1.0) * spread[ok] / (n * var[ok])
        deff = float(deff_c.mean())
        if not math.isfinite(deff):
            return hi
        return min(max(deff, 1.0), hi)

    @property
    def effective_count(self) -> float:
        """count / design_effect: the number of independent samples worth the same."""
        if self._count == 0:
            return 0.0
        return self._count / self.design_effect

    def _require(self, n: int) -> None:
        if self._count < n:
            raise BNAdaptError(
                f"these statistics need at least {n} sample(s) but have {self._count}; "
                "pass more images"
            )

    def _diag_m2(self) -> torch.Tensor:
        return torch.diagonal(self._m2) if self.full_covariance else self._m2

    # ---------------------------------------------------------------- updates
    def update(self, x: Any) -> GaussianMoments:
        """Add samples.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray
            (N, C, H, W), (N, C, D, H, W) or any (N, C, ...): each of the N images
            gives prod(...) samples of a C-vector; or (m, C): m samples.

        Returns
        -------
        GaussianMoments
            self, for chaining.
        """
        if not isinstance(x, torch.Tensor):
            a = np.asarray(x)
            if not a.flags.writeable:  # torch warns on read-only arrays; it only reads them here
                a = a.copy()
            x = torch.as_tensor(a)
        if x.ndim < 2:
            raise BNAdaptError(f"activations must be (N, C, ...) or (m, C); got shape {tuple(x.shape)}")
        if x.shape[1] != self.dim:
            raise BNAdaptError(
                f"activations have {x.shape[1]} channels but these statistics have {self.dim}"
            )
        if self._device is None:
            self._device = _accumulation_device(x.device)
        x = x.detach()
        if x.device != self._device:
            x = x.to(self._device)
        if x.numel() == 0:
            return self
        if x.ndim == 2:
            self._update_rows(x)
        else:
            self._update_images(x.reshape(x.shape[0], self.dim, -1))
        return self

    def _update_rows(self, x: torch.Tensor) -> None:
        """(m, C) independent samples: each row is a cluster of size 1."""
        m = x.shape[0]
        step = max(1, _CHUNK_ELEMENTS // self.dim)
        for s in range(0, m, step):
            xc = x[s : s + step].to(torch.float64)
            k = xc.shape[0]
            mu = xc.mean(0)
            self._check_finite(mu)
            d = xc - mu
            m2 = d.T @ d if self.full_covariance else (d * d).sum(0)
            self._merge(k, mu, m2)
            # clusters of size 1: weights 1, cluster means = rows
            self._merge_clusters(k, float(k), mu, (d * d).sum(0), 1)

    def _update_images(self, x: torch.Tensor) -> None:
        """(N, C, P): N clusters of P samples."""
        n_img, c, p = x.shape
        per_img = c * p
        if per_img <= _CHUNK_ELEMENTS:
            step = max(1, _CHUNK_ELEMENTS // per_img)
            for s in range(0, n_img, step):
                xc = x[s : s + step].to(torch.float64)  # (k, C, P)
                k = xc.shape[0]
                img_means = xc.mean(-1)  # (k, C)
                self._check_finite(img_means)
                mu = img_means.mean(0)
                d = xc - mu[None, :, None]
                if self.full_covariance:
                    m2 = torch.matmul(d, d.transpose(1, 2)).sum(0)
                else:
                    m2 = (d * d).sum((0, 2))
                self._merge(k * p, mu, m2)
                self._add_image_means(img_means, p)
        else:
            # one image does not fit a chunk: merge pixel chunks per image
            step = max(1, _CHUNK_ELEMENTS // c)
            for i in range(n_img):
                n_i, mu_i, m2_i = 0, None, None
                for s in range(0, p, step):
                    xc = x[i, :, s : s + step].to(torch.float64)  # (C, q)
                    q = xc.shape[1]
                    mu = xc.mean(-1)
                    self._check_finite(mu)
                    d = xc - mu[:, None]
                    m2 = d @ d.T if self.full_covariance else (d * d).sum(-1)
                    if mu_i is None:
                        n_i, mu_i, m2_i = q, mu, m2
                    else:
                        n_i, mu_i, m2_i = _chan(n_i, mu_i, m2_i, q, mu, m2, self.full_covariance)
                self._merge(n_i, mu_i, m2_i)
                self._add_image_means(mu_i[None, :], p)

    @staticmethod
    def _check_finite(t: torch.Tensor) -> None:
        if not bool(torch.isfinite(t).all()):
            raise BNAdaptError(
                "the activations contain NaN or infinite values; check the input image and the model"
            )

    def _add_image_means(self, img_means: torch.Tensor, size: int) -> None:
        k = img_means.shape[0]
        w = float(size) ** 2
        mu = img_means.mean(0)
        q = w * ((img_means - mu) ** 2).sum(0)
        self._merge_clusters(k, w * k, mu, q, size)

    def _merge(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        if self._count == 0:
            self._count, self._mean, self._m2 = int(n_b), mean_b.clone(), m2_b.clone()
            return
        self._count, self._mean, self._m2 = _chan(
            self._count, self._mean, self._m2, n_b, mean_b, m2_b, self.full_covariance
        )

    def _merge_clusters(self, k: int, w_b: float, mean_b: torch.Tensor, q_b: torch.Tensor, size: int) -> None:
        self._max_cluster = max(self._max_cluster, int(size))
        if self._n_clusters == 0:
            self._n_clusters, self._cluster_weight = int(k), float(w_b)
            self._cluster_mean, self._cluster_q = mean_b.clone(), q_b.clone()
            return
        w_a = self._cluster_weight
        w = w_a + w_b
        delta = mean_b - self._cluster_mean
        self._cluster_mean = self._cluster_mean + delta * (w_b / w)
        self._cluster_q = self._cluster_q + q_b + delta**2 * (w_a * w_b / w)
        self._cluster_weight = w
        self._n_clusters += int(k)

    def merge(self, other: GaussianMoments) -> GaussianMoments:
        """Merge another stream of the same channels into this one (in place); returns self.

        A full-covariance stream cannot absorb a diagonal one; a diagonal stream
        absorbs a full one by taking its diagonal.
        """
        if not isinstance(other, GaussianMoments):
            raise TypeError(f"can only merge GaussianMoments, not {type(other).__name__}")
        if other.dim != self.dim:
            raise BNAdaptError(f"cannot merge statistics of {other.dim} channels into {self.dim}")
        if self.full_covariance and not other.full_covariance:
            raise BNAdaptError("cannot merge diagonal-only statistics into full-covariance statistics")
        if other._count == 0:
            return self
        if self._device is None:
            self._device = other._device
        dev = self._device

        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(dev, torch.float64)

        m2 = mv(other._m2)
        if not self.full_covariance and other.full_covariance:
            m2 = torch.diagonal(m2).clone()
        self._merge(other._count, mv(other._mean), m2)
        self._merge_clusters(
            other._n_clusters, other._cluster_weight, mv(other._cluster_mean), mv(other._cluster_q), other._max_cluster
        )
        return self

    # ---------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """The state as plain data: numpy float64 arrays and Python scalars.

        Arrays (``mean``, ``m2``, ``cluster_mean``, ``cluster_q``) can be stored as
        tensors, everything else as JSON. ``m2`` is the centred sum of squares
        (C x C, or C when diagonal-only); see :meth:`from_dict`.
        """
        c = self.dim
        zeros_m2 = np.zeros((c, c) if self.full_covariance else (c,))
        return {
            "version": _STATE_VERSION,
            "dim": c,
            "full_covariance": self.full_covariance,
            "count": int(self._count),
            "n_images": int(self._n_clusters),
            "max_image_size": int(self._max_cluster),
            "cluster_weight": float(self._cluster_weight),
            "mean": _to_numpy(self._mean) if self._mean is not None else np.zeros(c),
            "m2": _to_numpy(self._m2) if self._m2 is not None else zeros_m2,
            "cluster_mean": _to_numpy(self._cluster_mean) if self._cluster_mean is not None else np.zeros(c),
            "cluster_q": _to_numpy(self._cluster_q) if self._cluster_q is not None else np.zeros(c),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], device: Any = None) -> GaussianMoments:
        """Rebuild from :meth:`to_dict` output (arrays may be numpy arrays, lists or tensors)."""
        try:
            version = int(state.get("version", _STATE_VERSION))
            if version > _STATE_VERSION:
                raise BNAdaptError(
                    f"these latent statistics were written by a newer version (format {version}); update napari-bnadapt"
                )
            dim = int(state["dim"])
            full = bool(state["full_covariance"])
            obj = cls(dim, full_covariance=full, device=device if device is not None else "cpu")

            def arr(key: str, shape: tuple[int, ...]) -> torch.Tensor:
                v = state[key]
                if isinstance(v, torch.Tensor):
                    v = v.detach().cpu().numpy()
                a = np.asarray(v, dtype=np.float64)
                if a.shape != shape:
                    raise BNAdaptError(f"latent statistics field {key!r} has shape {a.shape}, expected {shape}")
                if not np.all(np.isfinite(a)):
                    raise BNAdaptError(f"latent statistics field {key!r} contains NaN or infinite values")
                return torch.from_numpy(a.copy()).to(obj._device)

            count = int(state["count"])
            if count < 0:
                raise BNAdaptError("latent statistics have a negative sample count")
            if count > 0:
                obj._count = count
                obj._mean = arr("mean", (dim,))
                obj._m2 = arr("m2", (dim, dim) if full else (dim,))
                obj._n_clusters = int(state["n_images"])
                obj._max_cluster = int(state["max_image_size"])
                obj._cluster_weight = float(state["cluster_weight"])
                obj._cluster_mean = arr("cluster_mean", (dim,))
                obj._cluster_q = arr("cluster_q", (dim,))
        except KeyError as exc:
            raise BNAdaptError(f"latent statistics are missing the field {exc.args[0]!r}") from None
        return obj

    @classmethod
    def from_samples(cls, x: Any, full_covariance: bool = True, device: Any = None) -> GaussianMoments:
        """Statistics of one array (same shapes as :meth:`update`)."""
        dim = int(x.shape[1])
        return cls(dim, full_covariance=full_covariance, device=device).update(x)


def _chan(
    n_a: int, mean_a: torch.Tensor, m2_a: torch.Tensor, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor, full: bool
) -> tuple[int, torch.Tensor, torch.Tensor]:
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    f = n_a * n_b / n
    if full:
        m2 = m2_a + m2_b + torch.outer(delta, delta) * f
    else:
        m2 = m2_a + m2_b + delta * delta * f
    return n, mean, m2

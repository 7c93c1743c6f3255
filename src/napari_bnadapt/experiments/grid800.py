"""The thesis' 1-800 experiment (section 5.4) and its triangles-and-circles variant (5.4.3).

One source model, trained on (mu0, sigma0, mu1, sigma1) = (96, 18, 138, 18), is
applied to 800 targets before and after BatchNorm adaptation:
mu0 in {64, 80, ..., 160}, mu1 = mu0 + d with d in {24, 32, 42, 55, 73, 97, 128}
and mu1 <= 192 (32 mean pairs), sigma0, sigma1 in {6, 12, 18, 24, 30} (25 pairs).

``shapes``: the same source parameters and target grid with triangles as the
labelled objects and circles as unlabelled distractors of the same grey values
(``generate(shapes="triangles", distractors=True)``), so the network must tell
the shapes apart ("shape recognition on top of shape detection"; the thesis
does not say which shape was labelled: our choice).
"""

from __future__ import annotations

from ..synthetic.grid import GRID_D, GRID_MU0, GRID_MU_MAX, GRID_SIGMA, GRID_SOURCE
from .datasets import Dataset, UNetScale
from .unet_runner import UNetSpec

SOURCE = GRID_SOURCE
MU0 = GRID_MU0
DIST = GRID_D
SIGMAS = GRID_SIGMA
MU_MAX = GRID_MU_MAX


def targets(shapes: str = "perlin", distractors: bool = False) -> tuple[Dataset, ...]:
    """The 800 targets, ordered by mu0, d, sigma0, sigma1."""
    out = []
    for m0 in MU0:
        for d in DIST:
            if m0 + d > MU_MAX:
                continue
            for s0 in SIGMAS:
                for s1 in SIGMAS:
                    out.append(Dataset(f"m{m0}_d{d}_s{s0}_{s1}", f"({m0},{s0},{m0 + d},{s1})", m0, s0, m0 + d, s1,
                                       shapes=shapes, distractors=distractors))
    return tuple(out)


def spec(name: str) -> UNetSpec:
    if name == "grid800":
        kw: dict = {}
        title = f"The 1-800 experiment (source {SOURCE})"
    elif name == "shapes":
        kw = {"shapes": "triangles", "distractors": True}
        title = "The 1-800 experiment, triangles (labelled) and circles (distractors)"
    else:  # pragma: no cover - guarded by the registry
        raise KeyError(name)
    src = Dataset("source", "({},{},{},{})".format(*SOURCE), *SOURCE, **kw)
    return UNetSpec(name, (src,), targets(**kw), "grid", title)


#: Reduced default scale: all 800 targets with 16 images of 64 x 64 each; the
#: source model as in the matrix experiments but trained longer (one model only).
DEFAULT = UNetScale(image_size=64, n_train=512, n_test=16, width=8, steps=500, batch_size=8, lr=3e-3,
                    eval_every=50, patience=20)
#: The thesis' numbers: 5000 source images, 1000 test images per target, width 64,
#: batch size 1, 5 epochs, no augmentation, RMSprop lr 1e-5 momentum 0.999.
FULL = UNetScale(image_size=64, n_train=5000, n_test=1000, width=64, epochs=5, batch_size=1, lr=1e-5,
                 evals_per_epoch=5, patience=5, adapt_batch_size=8, augment=False, optimizer="rmsprop")

"""Tests of the toy sample data (napari_bnadapt.synthetic.samples)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_bnadapt.synthetic import samples as sample_data


@pytest.mark.parametrize("name", sorted(sample_data.SAMPLES))
def test_samples_shapes_dtypes_and_reproducible(name):
    func, display, params = sample_data.SAMPLES[name]
    assert callable(func) and func.__name__ == name
    assert isinstance(display, str) and display
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no clipping warning for any sample
        image, labels = func()
    assert image.shape == labels.shape == tuple(params["shape"])
    assert image.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1}
    assert 0.1 < labels.mean() < 0.35
    image2, labels2 = func()
    assert np.array_equal(image, image2) and np.array_equal(labels, labels2)
    # the grey values follow the documented parameters
    assert image[labels == 0].mean() == pytest.approx(params["mu0"], abs=1.0)
    assert image[labels == 1].mean() == pytest.approx(params["mu1"], abs=1.0)
    assert image[labels == 0].std() == pytest.approx(params["sigma0"], rel=0.05)


def test_default_shapes():
    assert sample_data.toy_source()[0].shape == (8, 256, 256)
    assert sample_data.toy_stack_3d()[0].shape == (32, 256, 256)


def test_targets_differ_from_source_as_documented():
    src, _ = sample_data.toy_source()
    bright, _ = sample_data.toy_brightness_target()
    contrast, _ = sample_data.toy_contrast_target()
    assert bright.mean() - src.mean() == pytest.approx(40, abs=3)
    assert contrast.std() > src.std()
    assert sample_data.SAMPLES["toy_brightness_target"][2]["mu0"] == 136


def test_custom_shape_and_seed():
    image, labels = sample_data.toy_source(shape=(2, 64, 96), seed=1)
    assert image.shape == labels.shape == (2, 64, 96)
    other, _ = sample_data.toy_source(shape=(2, 64, 96), seed=2)
    assert not np.array_equal(image, other)


def test_stack_3d_is_coherent():
    _, labels = sample_data.toy_stack_3d()
    inter = np.logical_and(labels[:-1], labels[1:]).sum()
    union = np.logical_or(labels[:-1], labels[1:]).sum()
    assert inter / union > 0.65


def test_import_is_light():
    """Importing the sample data pulls in neither napari, Qt nor torch."""
    code = (
        "import sys, napari_bnadapt.synthetic.samples, napari_bnadapt.synthetic;"
        "bad = [m for m in ('napari', 'torch', 'qtpy', 'PyQt5', 'PyQt6', 'scipy') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    src = str(Path(sample_data.__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr

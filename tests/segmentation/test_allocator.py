"""glibc's allocator is tuned once, on Linux/glibc only, and can be left alone."""

import platform
import subprocess
import sys

import pytest

CHECK = """
import resource, sys
import numpy as np
import napari_bnadapt as nb
from napari_bnadapt.segmentation import allocator
m = nb.load_model("toy-perlin", device="cpu")
stack = np.full((12, 544, 544), 120, np.uint8)
nb.segment(m, stack, device="cpu", tile_size=544)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
nb.segment(m, stack, device="cpu", tile_size=544)
print(allocator._state.get("tuned"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(env_value):
    env = {"NAPARI_BNADAPT_MALLOC": env_value, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, check=True)
    tuned, faults = out.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuned_allocator_reuses_memory_instead_of_faulting_it_in_again():
    tuned, faults = _run("")
    plain, plain_faults = _run("default")
    assert tuned and not plain
    # 12 forward passes of a 544 px tile; glibc's defaults fault in 18k-56k pages for 4 passes, 64k-152k for 12
    assert plain_faults > 20000 and faults < plain_faults / 10

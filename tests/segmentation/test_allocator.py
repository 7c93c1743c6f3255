"""glibc's allocator is tuned once, as the ``BNADAPT_MALLOC`` setting says, on Linux/glibc only.

The CI tests check what is deterministic: ``mallopt`` is called with the intended
values when the setting asks for it, not called otherwise, once per process, and never
off glibc (a fake ``mallopt`` stands in, so the test process's allocator is not touched).
What the tuning buys, page faults saved, depends on the machine: that is measured by the
slow test at the end and by ``benchmarks/bench_cpu_throughput.py`` and
``benchmarks/bench_allocator_napari.py``.
"""

import platform
import subprocess
import sys

import pytest

from napari_bnadapt.segmentation import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.fixture
def fake_mallopt(monkeypatch):
    """A fresh process state and a recording stand-in for glibc's ``mallopt``."""
    calls = []
    loads = []

    def mallopt(param, value):
        calls.append((param, value))
        return 1  # glibc: 1 on success

    def load():
        loads.append(1)
        return mallopt

    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.setattr(allocator, "_glibc_mallopt", load)
    monkeypatch.delenv("BNADAPT_MALLOC", raising=False)
    return calls, loads


INTENDED = [(-3, 32 * 2**20), (-1, 512 * 2**20)]  # M_MMAP_THRESHOLD 32 MiB, then M_TRIM_THRESHOLD 512 MiB


@pytest.mark.parametrize("value", ["tuned", " TUNED "])
def test_tuned_when_the_setting_asks_for_it(fake_mallopt, monkeypatch, value):
    calls, _ = fake_mallopt
    monkeypatch.setenv("BNADAPT_MALLOC", value)
    assert allocator.tune_cpu_allocator() is True
    assert calls == INTENDED
    assert allocator.MMAP_THRESHOLD == 32 * 2**20 and allocator.TRIM_THRESHOLD == 512 * 2**20


@pytest.mark.parametrize("value", [None, "", "default", "Default"])
def test_left_alone_by_default_and_when_the_setting_says_default(fake_mallopt, monkeypatch, value):
    calls, loads = fake_mallopt
    if value is not None:
        monkeypatch.setenv("BNADAPT_MALLOC", value)
    assert allocator.tune_cpu_allocator() is False
    assert calls == [] and loads == []  # libc is not even loaded


def test_applied_once_per_process(fake_mallopt, monkeypatch):
    calls, loads = fake_mallopt
    monkeypatch.setenv("BNADAPT_MALLOC", "tuned")
    assert allocator.tune_cpu_allocator() is True
    monkeypatch.setenv("BNADAPT_MALLOC", "default")  # too late: the first call decided
    assert allocator.tune_cpu_allocator() is True
    assert allocator.tune_cpu_allocator() is True
    assert calls == INTENDED and len(loads) == 1


def test_decision_to_leave_it_alone_is_also_once(fake_mallopt, monkeypatch):
    calls, _ = fake_mallopt
    monkeypatch.setenv("BNADAPT_MALLOC", "default")
    assert allocator.tune_cpu_allocator() is False
    monkeypatch.setenv("BNADAPT_MALLOC", "tuned")
    assert allocator.tune_cpu_allocator() is False
    assert calls == []


def test_a_refused_mallopt_reports_not_tuned(monkeypatch):
    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: lambda param, value: 0)
    monkeypatch.setenv("BNADAPT_MALLOC", "tuned")
    assert allocator.tune_cpu_allocator() is False


def test_unknown_value_warns_and_uses_the_default(fake_mallopt, monkeypatch):
    calls, _ = fake_mallopt
    monkeypatch.setenv("BNADAPT_MALLOC", "on")
    with pytest.warns(RuntimeWarning, match="BNADAPT_MALLOC='on'.*tuned, default"):
        assert allocator.tune_cpu_allocator() is False
    assert calls == []


@pytest.mark.parametrize("system, libc", [("Darwin", ("", "")), ("Windows", ("", "")), ("Linux", ("", ""))])
def test_no_op_off_glibc(monkeypatch, system, libc):
    """macOS, Windows, and Linux with another C library (musl reports no libc_ver): libc is never loaded."""
    import ctypes

    def no_cdll(*a, **k):
        raise AssertionError("libc must not be loaded off glibc")

    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.setattr(allocator.platform, "system", lambda: system)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda *a, **k: libc)
    monkeypatch.setattr(ctypes, "CDLL", no_cdll)
    monkeypatch.setenv("BNADAPT_MALLOC", "tuned")
    assert allocator._glibc_mallopt() is None
    assert allocator.tune_cpu_allocator() is False


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_glibc_mallopt_is_found_on_glibc():
    assert callable(allocator._glibc_mallopt())  # found, not called


def test_cpu_device_applies_it(fake_mallopt, monkeypatch):
    from napari_bnadapt.model.device import get_device

    calls, _ = fake_mallopt
    monkeypatch.setenv("BNADAPT_MALLOC", "tuned")
    assert str(get_device("cpu")) == "cpu"
    assert calls == INTENDED
    get_device("cpu")
    assert calls == INTENDED


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
    env = {"BNADAPT_MALLOC": env_value, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, check=True)
    tuned, faults = out.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuned_allocator_reuses_memory_instead_of_faulting_it_in_again():
    """Machine-dependent (page-fault counts), hence slow and out of the CI run: ``pytest -m slow``."""
    tuned, faults = _run("tuned")
    plain, plain_faults = _run("default")
    assert tuned and not plain
    # 12 forward passes of a 544 px tile; glibc's defaults faulted in 18k-56k pages for 4 passes, 64k-152k
    # for 12 on the machines seen so far; the tuned allocator a small fraction of that
    assert faults < plain_faults / 10, (faults, plain_faults)

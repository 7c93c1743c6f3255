"""Reading a memory-mapped stack does not keep what was read resident (and never changes it)."""

import sys

import numpy as np
import pytest
import tifffile

from napari_bnadapt.io.memmap_pages import release
from napari_bnadapt.io.stack_view import check_stack


def _rss_file_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident-set accounting of /proc is Linux's")
@pytest.mark.parametrize("mode", ["r", "r+"])
def test_reading_every_slice_leaves_the_pages_out_of_the_resident_set(tmp_path, mode):
    path = tmp_path / "stack.tif"
    mm = tifffile.memmap(path, shape=(64, 1024, 1024), dtype=np.uint8)  # 64 MiB
    for z in range(64):
        mm[z] = z
    mm.flush()
    del mm
    data = tifffile.memmap(path, mode=mode)
    view = check_stack(data)
    before = _rss_file_mib()
    total = 0
    for z in range(64):
        s = view.read(z)
        assert not isinstance(s, np.memmap) and s.shape == (1024, 1024)
        total += int(s[5, 5])
    grown = _rss_file_mib() - before
    assert total == sum(range(64))
    assert grown < 16, f"reading 64 MiB left {grown:.0f} MiB of the file resident"
    assert int(data[63, 0, 0]) == 63  # still readable after release (from the page cache)


def test_private_mappings_and_plain_arrays_are_never_released(tmp_path):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.zeros((2, 64, 64), np.uint8))
    private = tifffile.memmap(path, mode="c")
    private[0] = 9  # an edit only this process has: releasing would lose it
    assert release(private[0]) is False
    assert int(private[0, 0, 0]) == 9
    assert release(np.zeros((64, 64), np.uint8)) is False

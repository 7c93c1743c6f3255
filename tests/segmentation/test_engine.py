"""The inference engine's out-of-memory recognition (segmentation/engine.py)."""

import pytest
import torch

from napari_bnadapt.segmentation.engine import _is_out_of_memory


@pytest.mark.parametrize("exc, oom", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (MemoryError(), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE"), True),
    (RuntimeError("Given groups=1, weight of size [8, 1, 3, 3], expected input to have 1 channels"), False),
    (ValueError("out of memory"), False),
])
def test_out_of_memory_in_all_its_words(exc, oom):
    assert _is_out_of_memory(exc) is oom

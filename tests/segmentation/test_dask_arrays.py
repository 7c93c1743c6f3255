"""Dask arrays are segmented chunk by chunk, locally and on a dask.distributed cluster, as in memory."""

import dask.array as da
import distributed
import numpy as np
import pytest

import napari_bnadapt as nb


@pytest.fixture(scope="module")
def stack():
    from napari_bnadapt import synthetic

    return synthetic.generate(6, (128, 128), seed=8, cell_size=32, mu0=136, sigma0=18, mu1=178, sigma1=18)[0]


def test_dask_equals_in_memory(toy_model, stack):
    lazy = da.from_array(stack, chunks=(2, 64, 64))  # chunks that cut slices: rechunked to whole slices
    out = nb.segment_dask(toy_model, lazy, device="cpu")
    assert isinstance(out, da.Array) and out.chunks[1] == (128,)
    np.testing.assert_array_equal(out.compute(), nb.segment(toy_model, stack, device="cpu"))
    prob = nb.predict_dask(toy_model, lazy, device="cpu", intensity_range="auto").compute()
    np.testing.assert_allclose(prob, nb.predict(toy_model, stack, device="cpu", intensity_range="auto"), atol=1e-5)


def test_local_cluster_of_two_workers(toy_model, stack):
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        lazy = da.from_array(stack, chunks=(3, 128, 128))
        labels = nb.segment_dask(toy_model, lazy, device="cpu").compute()
    np.testing.assert_array_equal(labels, nb.segment(toy_model, stack, device="cpu"))

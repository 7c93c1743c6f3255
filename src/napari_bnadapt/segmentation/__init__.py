"""Running a network over a whole stack.

- ``tiling``: torch-free tile geometry (tile starts, balanced grids, blending ramps).
- ``engine``: the slice-by-slice inference loop with its out-of-memory back-off and tile defaults.
- ``predict``: ``predict`` / ``segment`` (and their ``_iter`` twins).
- ``dask_arrays``: ``predict_dask`` / ``segment_dask``, chunk by chunk.
- ``fusion``: the fast inference copy (BatchNorm folded, concatenation-free decoder).
- ``allocator``: the glibc allocator tuning for CPU inference.
"""

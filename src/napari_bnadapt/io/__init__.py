"""Reading EM stacks with their voxel size, and checking them before a network sees them.

- ``read``: ``read_stack`` (one entry point for every format).
- ``detect``: which format a path holds (suffixes, magic bytes, folders).
- one module per format: ``tiff``, ``slices`` (folders of slices, PNG), ``mrc``, ``hdf5``, ``zarr_store``;
  ``attributes`` reads voxel sizes and axes from HDF5/zarr attributes.
- ``stack_info``: ``StackInfo`` (what a file says about itself) and ``units``: the one unit table.
- ``lazy_stack``: ``LazyStack``, a plane-by-plane view of compressed/sliced stacks.
- ``crop``: ``crop_and_downsample``.
- ``stack_view``: ``check_stack`` (bad input -> clear message) and intensity ``Normalization``.
- ``pixel_size``: pixel sizes of layers and models, the mismatch check and ``rescale``.
- ``resample``: ``ModelGrid``: a network runs at its training pixel size, results come back on the image's grid.
- ``plane_stack``: ``PlaneStack``, a stack whose slices are computed when read; ``smoothed``: the stack seen
  through a Gaussian blur (``SmoothedStack``).
- ``memmap_pages``: give memory-mapped pages back to the OS after reading them.
"""

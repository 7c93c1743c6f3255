"""Everything that touches napari or Qt: the dock widgets, the reader, the sample data, the runner.

- ``adapt_widget``, ``train_widget``, ``reliability_widget``: the dock widgets.
- ``loading``: the stack loader (crop/downsample on open) used by the adapt widget.
- ``runner``: runs a core generator in a napari thread worker with progress and Cancel.
- ``layers``: layer-data tuples that keep the image's scale and translate.
- ``reader``, ``samples``: napari's reader and sample-data contributions.
- ``demo``: the napari demo of ``bnadapt demo``.

The core never imports this package.
"""

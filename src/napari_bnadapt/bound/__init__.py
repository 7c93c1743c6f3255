"""The Wasserstein reliability bound: how far the adapted segmentation can be trusted.

Named ``bound`` (not ``reliability``) so that it never shadows the function
``napari_bnadapt.reliability``.

- ``names``: latent-space names, distance keys and labels, verdict thresholds (defined once).
- ``curve``: the calibrated lower-bound step function (fit, evaluate, plot points).
- ``decision``: the label-free signals, the gate and the verdict.
- ``report``: the typed report a user reads (``ReliabilityReport``, ``LatentDistance``).
- ``assess``: ``reliability`` / ``reliability_iter``: measure a (source, adapted, stack) triple.
- ``shifts``: the synthetic shifts a calibration applies (toy grid, EM grey-value shifts).
- ``cases``: one calibration case (shift -> adapt -> distances, true IoU).
- ``selection``: cross-validated choice of the distance, normalisation and gate.
- ``calibration``: ``calibrate`` / ``calibrate_iter``: the whole calibration run.
"""

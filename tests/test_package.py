import subprocess
import sys


def test_import_does_not_import_torch():
    code = "import sys, napari_bnadapt as nb; nb.list_models; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api_names():
    import napari_bnadapt as nb

    for name in ["list_models", "load_model", "save_model", "adapt", "predict", "segment", "train", "iou", "dice"]:
        assert callable(getattr(nb, name))
    assert callable(nb.synthetic.generate)


def test_reliability_stays_a_function_after_internal_imports():
    import napari_bnadapt as nb
    import napari_bnadapt.bound.assess  # noqa: F401
    import napari_bnadapt.bound.calibration  # noqa: F401

    assert callable(nb.reliability) and nb.reliability.__name__ == "reliability"


def test_every_lazy_public_name_resolves():
    import napari_bnadapt as nb
    from napari_bnadapt import experiments

    for name in nb.__all__:
        assert getattr(nb, name) is not None, name
    for name in ("Dataset", "UNetScale", "ExperimentResult", "ToyScale"):
        assert isinstance(getattr(experiments, name), type), name

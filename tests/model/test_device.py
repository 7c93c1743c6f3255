"""Choosing and comparing devices (model/device.py)."""

import torch

from napari_bnadapt.model.device import _same_device, model_on


def test_cuda_without_index_is_the_current_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert _same_device(torch.device("cuda:0"), torch.device("cuda"))
    assert _same_device(torch.device("cuda"), torch.device("cuda:0"))
    assert not _same_device(torch.device("cuda:1"), torch.device("cuda"))
    assert not _same_device(torch.device("cpu"), torch.device("cuda"))
    assert _same_device(torch.device("cpu"), torch.device("cpu"))


def test_a_model_already_on_the_device_is_used_as_is_and_its_modes_restored(toy_model):
    toy_model.inc.train()  # one submodule in train mode: restored afterwards
    try:
        with model_on(toy_model, torch.device("cpu")) as m:
            assert m is toy_model and not any(sub.training for sub in m.modules())
        assert toy_model.inc.training and not toy_model.outc.training
    finally:
        toy_model.eval()

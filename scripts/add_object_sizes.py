"""Add the object-size summary of their training labels to the cards of the first bundled EM models.

Usage::

    python scripts/add_object_sizes.py [lucchi vnc]

Models trained since the scale search exists carry it already (``train`` measures it); ``lucchi-pp``
and ``vnc`` were trained before. This reads their training labels from ``../shared/data/real/``,
measures :func:`napari_bnadapt.object_size_summary` (2-D objects per slice, border-corrected) and
rewrites the bundled file with only ``meta["objects"]`` added: the weights are unchanged (checked).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from em_data import BUNDLED, RECIPES, load_split  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import napari_bnadapt as nb
    from napari_bnadapt.adabn.scale_search import OBJECTS_KEY

    for key in (argv if argv is not None else sys.argv[1:]) or ["lucchi", "vnc"]:
        r = RECIPES[key]
        path = BUNDLED / f"{r['name']}.safetensors"
        model = nb.load_model(path, device="cpu")
        before = {k: v.clone() for k, v in model.state_dict().items()}
        _, labels = load_split(key, "train")
        model.meta[OBJECTS_KEY] = nb.object_size_summary(labels > 0)
        assert all((before[k] == v).all() for k, v in model.state_dict().items())
        nb.save_model(model, path, overwrite=True)
        s = model.meta[OBJECTS_KEY]
        print(f"{r['name']}: {s['count']} objects, median diameter {s['median_diameter_px']:.1f} px "
              f"(quartiles {s['q25_diameter_px']:.1f}-{s['q75_diameter_px']:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

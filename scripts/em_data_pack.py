"""Pack the real EM training data small enough to travel to a GPU machine, and unpack it there.

Usage::

    python scripts/em_data_pack.py pack DIR      # here: DIR/<folder>/<image>.webp-slices + label files
    python scripts/em_data_pack.py unpack DIR OUT  # there: OUT laid out as ../shared/data/real (train slices)

Only the TRAINING slices of each dataset travel (Lucchi++ train volume, VNC slices 0-13), as
lossless WebP (about 0.7 of the raw bytes, against 0.76 for xz), so the test slices never leave
this machine and the models trained there are evaluated here. Unpacking checks each slice's
SHA-256 against the one recorded when packing: the GPU trains on exactly these pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from em_data import DATA, RECIPES  # noqa: E402

MANIFEST = "manifest.json"


def pack(out: Path, data: Path = DATA) -> None:
    """Write every dataset's training slices to ``out`` as lossless WebP, with a manifest of checksums."""
    import tifffile
    from PIL import Image

    manifest: dict[str, dict[str, object]] = {}
    for r in RECIPES.values():
        image_file, label_file, z = r["train"]
        folder = out / r["folder"]
        folder.mkdir(parents=True, exist_ok=True)
        volume = tifffile.memmap(data / r["folder"] / image_file, mode="r")[z]
        sums = []
        for i, s in enumerate(volume):
            s = np.ascontiguousarray(s)
            buf = io.BytesIO()
            Image.fromarray(s).save(buf, format="WEBP", lossless=True, quality=100, method=4)
            (folder / f"{image_file}.{i:03d}.webp").write_bytes(buf.getvalue())
            sums.append(hashlib.sha256(s.tobytes()).hexdigest())
        shutil.copyfile(data / r["folder"] / label_file, folder / label_file)
        manifest[r["folder"]] = {"image": image_file, "shape": list(volume.shape), "sha256": sums}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))


def unpack(src: Path, out: Path) -> None:
    """Rebuild ``out/<folder>/<image>.tif`` (the training slices only) and its labels from a packed ``src``."""
    import tifffile
    from PIL import Image

    for folder, m in json.loads((src / MANIFEST).read_text()).items():
        slices = []
        for i, digest in enumerate(m["sha256"]):
            s = np.asarray(Image.open(src / folder / f"{m['image']}.{i:03d}.webp").convert("L"))
            if hashlib.sha256(np.ascontiguousarray(s).tobytes()).hexdigest() != digest:
                raise SystemExit(f"{folder} slice {i}: checksum differs from the packed one")
            slices.append(s)
        (out / folder).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(out / folder / m["image"], np.stack(slices), photometric="minisblack")
        for f in (src / folder).iterdir():
            if not f.name.endswith(".webp"):
                shutil.copyfile(f, out / folder / f.name)
        print(f"{folder}: {len(slices)} slices {tuple(m['shape'][1:])}, checksums match", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "pack":
        pack(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "unpack":
        unpack(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        raise SystemExit(__doc__)

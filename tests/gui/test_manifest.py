"""The napari manifest is valid and found by npe2, from the editable install and from a built wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

import npe2

from napari_bnadapt.gui.reader import READER_SUFFIXES

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_valid_and_found_in_this_install():
    pm = npe2.PluginManifest.from_distribution("napari-bnadapt")
    assert pm.name == "napari-bnadapt"
    # docs/napari.md: three dock widgets, four samples, one reader for files and folders
    assert {w.display_name for w in pm.contributions.widgets} >= {"Adapt & segment", "Train a source model",
                                                                  "Reliability"}
    assert {s.key for s in pm.contributions.sample_data} >= {"toy_source", "toy_brightness_target",
                                                             "toy_contrast_target", "toy_stack_3d"}
    commands = {c.id: c.python_name for c in pm.contributions.commands}
    ours = [r for r in pm.contributions.readers
            if commands.get(r.command) == "napari_bnadapt.gui.reader:get_reader"]
    assert len(ours) == 1 and ours[0].accepts_directories
    for cmd in pm.contributions.commands:  # every command points at something importable
        mod, _, attr = cmd.python_name.partition(":")
        assert hasattr(__import__(mod, fromlist=[attr]), attr), cmd.python_name
    # the top-level napari.yaml is the package's manifest
    assert (ROOT / "napari.yaml").resolve() == (ROOT / "src/napari_bnadapt/napari.yaml").resolve()


def test_manifest_and_model_in_built_wheel(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("napari_bnadapt-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_bnadapt/napari.yaml" in names
        assert "napari_bnadapt/model/bundled/toy-perlin.safetensors" in names
        ep = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        assert "napari.manifest" in ep and "napari_bnadapt:napari.yaml" in ep
        zf.extractall(tmp_path / "site")
    code = (
        "import npe2; pm = npe2.PluginManifest.from_distribution('napari-bnadapt');"
        "import napari_bnadapt, pathlib; print(pathlib.Path(napari_bnadapt.__file__).parent); print(len(pm.contributions.widgets))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[0].startswith(str(tmp_path / "site")) and int(out[1]) >= 2


def test_installed_manifest_routes_every_documented_suffix_to_the_reader():
    pm = npe2.PluginManifest.from_distribution("napari-bnadapt")
    reader = next(r for r in pm.contributions.readers if r.command == "napari-bnadapt.read_stack")
    assert sorted(reader.filename_patterns) == sorted("*" + s for s in READER_SUFFIXES)

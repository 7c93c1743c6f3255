"""The package's environment switches: one module reads them all, each with the prefix ``BNADAPT_``."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from napari_bnadapt import settings

SRC = Path(settings.__file__).parent


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*settings.SWITCHES, "NAPARI_BNADAPT_MALLOC"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_every_switch_has_the_prefix_and_is_documented():
    assert settings.PREFIX == "BNADAPT_"
    assert set(settings.SWITCHES) == {"BNADAPT_MODEL_DIR", "BNADAPT_MALLOC"}
    for name in settings.SWITCHES:
        assert name.startswith(settings.PREFIX)
        assert f"``{name}``" in settings.__doc__  # a row of the module docstring's table


def test_defaults(clean_env):
    assert settings.model_dir() is None
    assert settings.malloc_tuning() is False  # glibc left alone by default: benchmarks/results/bench_allocator_napari.txt


def test_model_dir(clean_env, tmp_path):
    clean_env.setenv("BNADAPT_MODEL_DIR", str(tmp_path))
    assert settings.model_dir() == tmp_path
    clean_env.setenv("BNADAPT_MODEL_DIR", "~/my-models")
    assert settings.model_dir() == Path.home() / "my-models"
    clean_env.setenv("BNADAPT_MODEL_DIR", "  ")
    assert settings.model_dir() is None  # blank counts as unset


def test_user_model_dir_reads_the_setting(clean_env, tmp_path):
    from napari_bnadapt.model.files import user_model_dir

    assert user_model_dir() == Path.home() / ".napari-bnadapt" / "models"
    clean_env.setenv("BNADAPT_MODEL_DIR", str(tmp_path))
    assert user_model_dir() == tmp_path


@pytest.mark.parametrize("value, tuned", [("tuned", True), ("default", False), (" Default ", False), ("TUNED", True),
                                          ("", False)])
def test_malloc_values(clean_env, value, tuned):
    clean_env.setenv("BNADAPT_MALLOC", value)
    assert settings.malloc_tuning() is tuned


def test_malloc_unknown_value_warns_and_falls_back_to_the_default(clean_env):
    clean_env.setenv("BNADAPT_MALLOC", "on")
    with pytest.warns(RuntimeWarning, match=r"BNADAPT_MALLOC='on' is not one of tuned, default; using the default"):
        assert settings.malloc_tuning() is False


def test_old_unprefixed_name_is_not_read(clean_env):
    clean_env.setenv("NAPARI_BNADAPT_MALLOC", "tuned")
    assert settings.malloc_tuning() is False


def test_read_at_call_time(clean_env):
    assert settings.malloc_tuning() is False
    clean_env.setenv("BNADAPT_MALLOC", "tuned")
    assert settings.malloc_tuning() is True


_ENV_READ = re.compile(r"""(?:environ(?:\.get)?\s*[\[(]|getenv\s*\()\s*["']([A-Za-z_]*BNADAPT[A-Za-z_]*)""")


def test_no_other_module_reads_a_package_switch():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "settings.py" and path.parent == SRC:
            continue
        for name in _ENV_READ.findall(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(SRC)}: {name}")
    assert not offenders, "read environment switches through napari_bnadapt.settings: " + "; ".join(offenders)


def test_importing_settings_is_light():
    code = "import sys, napari_bnadapt.settings; print(sorted(m for m in ('torch', 'numpy', 'napari') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

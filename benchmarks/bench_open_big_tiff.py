"""Benchmark: a 2 GiB TIFF opens in napari in seconds without being read into memory.

Writes a ~2 GiB uncompressed uint8 ImageJ TIFF (512 slices of 2048 x 2048, voxel
10 x 5 x 5 nm) into a temporary folder, evicts it from the OS page cache
(posix_fadvise DONTNEED, so the open is "cold"), then, in a fresh Python process:

1. times ``read_stack(path)`` (3 runs) and checks voxel size and storage;
2. times reading one slice;
3. times opening the file in napari the way File > Open / drag-and-drop does:
   ``viewer.open(path, plugin=...)`` through npe2 in a ``napari.Viewer(show=False)``
   (under ``xvfb-run`` when there is no display; without any display it falls
   back to building ``napari.layers.Image`` from the reader's layer data);
4. records resident memory (psutil RSS sampled every 2 ms, and the kernel's
   peak ``ru_maxrss``) before and after, to show the stack was not loaded.

Results go to benchmarks/results/bench_open_big_tiff.txt; the TIFF is deleted.

    python benchmarks/bench_open_big_tiff.py            # 2 GiB
    python benchmarks/bench_open_big_tiff.py --slices 64  # quick check (256 MiB)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "bench_open_big_tiff.txt"
SRC = HERE.parent / "src"
MIB = 2**20

MANIFEST = {
    "name": "bnadapt-bench",
    "display_name": "bnadapt bench reader",
    "contributions": {
        "commands": [{
            "id": "bnadapt-bench.read_stack",
            "title": "Open an EM stack",
            "python_name": "napari_bnadapt.gui.reader:get_reader",
        }],
        "readers": [{
            "command": "bnadapt-bench.read_stack",
            "accepts_directories": True,
            "filename_patterns": ["*.tif", "*.tiff"],
        }],
    },
}


# ----------------------------------------------------------------- parent: write the file


def write_tiff(path: Path, slices: int, size: int) -> float:
    import numpy as np
    import tifffile

    t0 = time.perf_counter()
    mm = tifffile.memmap(
        path, shape=(slices, size, size), dtype=np.uint8, imagej=True,
        resolution=(1 / 0.005, 1 / 0.005), metadata={"spacing": 0.010, "unit": "um", "axes": "ZYX"},
    )
    yy, xx = np.mgrid[0:size, 0:size]
    base = ((xx // 16 + yy // 16) % 2 * 100 + (xx * 7 + yy * 3) % 50).astype(np.uint8)
    for z0 in range(0, slices, 32):
        z1 = min(z0 + 32, slices)
        mm[z0:z1] = base[None] + (np.arange(z0, z1) % 256).astype(np.uint8)[:, None, None]
    mm.flush()
    del mm
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    return time.perf_counter() - t0


def evict_from_page_cache(path: Path) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    finally:
        os.close(fd)


# ----------------------------------------------------------------- child: measure


class RSSSampler:
    """Samples this process's RSS every few ms (peak during an operation)."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def __enter__(self) -> RSSSampler:
        self.peak = self.rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def maxrss_bytes() -> int:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if sys.platform == "darwin" else kb * 1024


def child(path: str, mode: str) -> dict:
    sys.path.insert(0, str(SRC))
    import numpy as np

    out: dict = {"mode": mode}
    sampler = RSSSampler()
    if mode != "none":
        import napari

        out["napari_version"] = napari.__version__
    from napari_bnadapt.gui.reader import get_reader
    from napari_bnadapt.io.read import read_stack

    viewer = None
    plugin = None
    if mode == "viewer":
        import npe2

        t0 = time.perf_counter()
        viewer = napari.Viewer(show=False)  # also discovers installed plugins
        out["viewer_create_s"] = time.perf_counter() - t0
        pm = npe2.PluginManager.instance()
        try:
            pm.get_command("napari-bnadapt.read_stack")
            plugin = "napari-bnadapt"  # the installed plugin and its napari.yaml
        except KeyError:
            pm.register(npe2.PluginManifest(**MANIFEST))
            plugin = MANIFEST["name"]
        out["plugin"] = plugin

    # 1. read_stack, cold then warm
    base_rss, base_max = sampler.rss(), maxrss_bytes()
    times = []
    with sampler:
        for _ in range(3):
            t0 = time.perf_counter()
            arr, info = read_stack(path)
            times.append(time.perf_counter() - t0)
    out.update(
        read_stack_s=times,
        type=type(arr).__name__,
        shape=list(info.shape),
        dtype=str(info.dtype),
        voxel_size_nm=info.voxel_size_nm,
        storage=info.storage,
        read_stack_rss_increase_mib=(sampler.peak - base_rss) / MIB,
    )
    # 2. one slice
    t0 = time.perf_counter()
    sl = np.array(arr[info.shape[0] // 2])  # a copy: really reads the pages
    out["one_slice_s"] = time.perf_counter() - t0
    out["one_slice_mib"] = sl.nbytes / MIB
    del arr, sl

    # 3. into napari
    base_rss, base_max = sampler.rss(), maxrss_bytes()
    with sampler:
        t0 = time.perf_counter()
        if mode == "viewer":
            from qtpy.QtWidgets import QApplication

            layers = viewer.open(path, plugin=plugin)
            QApplication.processEvents()
            layer = layers[0]
        elif mode == "layer":
            reader = get_reader(path)
            data, kw, _ = reader(path)[0]
            layer = napari.layers.Image(data, **kw)
        else:
            layer = None
        out["napari_open_s"] = time.perf_counter() - t0
    out["napari_open_rss_increase_mib"] = (sampler.peak - base_rss) / MIB
    out["napari_open_maxrss_increase_mib"] = (maxrss_bytes() - base_max) / MIB
    out["final_rss_mib"] = sampler.rss() / MIB
    out["file_mib"] = os.path.getsize(path) / MIB
    if layer is not None:
        out["layer_scale"] = [float(s) for s in layer.scale]
        out["layer_data_type"] = type(layer.data).__name__
    if mode == "viewer":  # a second open: napari's one-off start-up costs are paid
        from qtpy.QtWidgets import QApplication

        t0 = time.perf_counter()
        viewer.open(path, plugin=plugin)
        QApplication.processEvents()
        out["napari_open_again_s"] = time.perf_counter() - t0
    if viewer is not None:
        viewer.close()
    return out


# ----------------------------------------------------------------- parent: orchestrate


def versions() -> dict:
    import numpy
    import tifffile

    v = {"python": platform.python_version(), "numpy": numpy.__version__, "tifffile": tifffile.__version__}
    try:
        from importlib.metadata import version

        v["napari"] = version("napari")
    except Exception:  # noqa: BLE001
        pass
    return v


def machine() -> str:
    try:
        import psutil

        ram = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        ram = "RAM unknown"
    return f"{platform.platform()}; {os.cpu_count()} CPUs; {ram}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=512)
    ap.add_argument("--size", type=int, default=2048, help="slice width = height")
    ap.add_argument("--dir", default=None, help="folder for the temporary TIFF (default: system temp)")
    ap.add_argument("--mode", choices=["auto", "viewer", "layer", "none"], default="auto")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.mode)))
        return 0

    mode = args.mode
    cmd_prefix: list[str] = []
    if mode == "auto":
        try:
            import napari  # noqa: F401

            has_napari = True
        except ImportError:
            has_napari = False
        if not has_napari:
            mode = "none"
        elif os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
            mode = "viewer"
        elif shutil.which("xvfb-run"):
            mode, cmd_prefix = "viewer", ["xvfb-run", "-a"]
        else:
            mode = "layer"
    elif mode == "viewer" and not os.environ.get("DISPLAY") and shutil.which("xvfb-run"):
        cmd_prefix = ["xvfb-run", "-a"]

    tmpdir = Path(tempfile.mkdtemp(prefix="bnadapt-bench-", dir=args.dir))
    path = tmpdir / "big_stack.tif"
    try:
        write_s = write_tiff(path, args.slices, args.size)
        cold = evict_from_page_cache(path)
        cmd = cmd_prefix + [sys.executable, __file__, "--child", str(path), "--mode", mode]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            return 1
        res = json.loads(line[len("RESULT "):])
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    how = {
        "viewer": f"napari.Viewer(show=False){' under xvfb-run' if cmd_prefix else ''}; "
                  f"viewer.open(path, plugin={res.get('plugin')!r}) via npe2 + processEvents",
        "layer": "no display: napari.layers.Image(*reader layer data), no viewer",
        "none": "napari not installed: read_stack only",
    }[mode]
    rs = res["read_stack_s"]
    lines = [
        "bench_open_big_tiff: open a large uncompressed TIFF without reading it into memory",
        f"date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: {machine()}",
        f"versions: {json.dumps(versions())}",
        f"file: {res['file_mib']:.0f} MiB ImageJ TIFF, shape {res['shape']} {res['dtype']}, "
        f"written in {write_s:.1f} s; evicted from page cache before opening: {cold}",
        "",
        f"read_stack: {rs[0] * 1e3:.1f} ms cold, {min(rs[1:]) * 1e3:.1f} ms warm  "
        f"-> {res['type']} (storage={res['storage']}), voxel_size_nm={res['voxel_size_nm']}",
        f"read_stack peak RSS increase: {res['read_stack_rss_increase_mib']:.1f} MiB",
        f"read one slice ({res['one_slice_mib']:.0f} MiB): {res['one_slice_s'] * 1e3:.1f} ms",
        "",
        f"napari route: {how}",
    ]
    if "viewer_create_s" in res:
        lines.append(f"  (not counted: creating the viewer, {res['viewer_create_s']:.1f} s)")
    if mode != "none":
        lines += [
            f"open in napari: {res['napari_open_s']:.2f} s"
            + (f" (first layer of the session); opening it again: {res['napari_open_again_s']:.2f} s"
               if "napari_open_again_s" in res else ""),
            f"open in napari peak RSS increase: {res['napari_open_rss_increase_mib']:.1f} MiB (psutil, 2 ms sampling); "
            f"ru_maxrss increase: {res['napari_open_maxrss_increase_mib']:.1f} MiB",
            f"layer: scale {res.get('layer_scale')}, data type {res.get('layer_data_type')}",
        ]
    lines += [
        f"process RSS at the end: {res['final_rss_mib']:.0f} MiB (includes Python, numpy, napari, Qt)",
        "",
        "verdict: "
        + ("PASS" if (res.get("napari_open_s", rs[0]) < 5 and max(res["read_stack_rss_increase_mib"], res.get("napari_open_rss_increase_mib", 0)) < 0.1 * res["file_mib"]) else "FAIL")
        + f" (open < 5 s and memory growth < 10 % of the {res['file_mib']:.0f} MiB file)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

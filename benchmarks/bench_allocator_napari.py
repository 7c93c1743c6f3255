"""napari's resident memory and run time after Adapt & segment, with glibc's allocator tuned and not.

Run under a display (xvfb-run on a headless machine):

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_allocator_napari.py [--repeats 5]

Ten napari processes, one after the other. The committed run took 21 min on the 2-core machine
at a load average of 5 (other jobs); a quiet machine is faster, and ``--repeats 3`` takes three
fifths of the time.

Each measurement is a fresh process (``BNADAPT_MALLOC=tuned`` or ``=default``; the two
alternate, the first of each pair alternating too, so drifts in the machine's load hit both).
The process opens a napari viewer, adds a 16 x 1024 x 1024 uint8 toy target stack and does
what the "Adapt & segment" widget does on the CPU, with the core functions: in a worker
thread, while the GUI thread runs napari's event loop, load the bundled ``toy-perlin`` model,
adapt it (``nb.adapt``, AdaBN) and segment the stack (``nb.segment``); then add the Labels
layer on the GUI thread. (The widget itself is not driven, so that its own options, e.g. the
reliability check, do not enter the measurement.) The run is done twice in the same viewer
(a user tries again). Reported from ``/proc/self/status``: VmRSS before the first run, after
each run (once the Labels layer is added and the event loop has idled 1 s), and VmHWM (the
peak) at the end; the time of each run. Medians over the repeats.

The decision rule for the default of ``BNADAPT_MALLOC`` (fixed before measuring) is printed
with the numbers: keep the tuning on by default only if the median run is at least 10 %
faster with it, and the median RSS after the run grows by at most 10 % of the untuned RSS
after the run and by a smaller percentage than the time saved.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import header, write  # noqa: E402

SHAPE = (16, 1024, 1024)
SETTINGS = ("tuned", "default")
MAX_RSS_RISE = 0.10  # of the untuned RSS after the run
MIN_TIME_GAIN = 0.10  # of the untuned CPU time of the run

CHILD = r"""
import json, resource, sys, threading, time

def status(key):  # MiB from /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

import napari
from qtpy.QtWidgets import QApplication
import napari_bnadapt as nb
from napari_bnadapt import synthetic
from napari_bnadapt.segmentation import allocator

shape = tuple(json.loads(sys.argv[1]))
images, _ = synthetic.generate(shape[0], shape[1:], seed=5, cell_size=32, mu0=136, sigma0=18, mu1=178, sigma1=18)
viewer = napari.Viewer(show=True)
layer = viewer.add_image(images, name="target", contrast_limits=(0, 255))
del images
app = QApplication.instance()

def idle(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)

def job(result):  # what the widget's worker thread does: load, adapt, segment
    source = nb.load_model("toy-perlin", device="cpu")
    model, _report = nb.adapt(source, layer.data, device="cpu")
    result["labels"] = nb.segment(model, layer.data, device="cpu")

idle(1.0)
out = {"rss_start_mib": status("VmRSS:"), "runs": []}
for i in range(2):
    result = {}
    t, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    worker = threading.Thread(target=job, args=(result,))
    worker.start()
    while worker.is_alive():
        app.processEvents()
        time.sleep(0.002)
    viewer.add_labels(result.pop("labels"), name=f"target [toy-perlin adapted {i + 1}]")
    app.processEvents()
    dt, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    idle(1.0)
    out["runs"].append({"seconds": dt, "cpu_s": cpu, "sys_s": r1.ru_stime - r0.ru_stime,
                        "minflt": r1.ru_minflt - r0.ru_minflt, "rss_mib": status("VmRSS:")})
out["hwm_mib"] = status("VmHWM:")
out["tuned"] = allocator._state.get("tuned")
out["foreground"] = float(viewer.layers[-1].data.mean())
print(json.dumps(out))
viewer.close()
"""


def _child(setting: str) -> dict:
    env = dict(os.environ, BNADAPT_MALLOC=setting)
    env.pop("NAPARI_BNADAPT_MALLOC", None)
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(SHAPE)], env=env, capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        raise SystemExit(f"child ({setting}) failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="processes per setting")
    args = p.parse_args()
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise SystemExit('no display: run under xvfb-run -a -s "-screen 0 1600x1000x24"')
    command = "python benchmarks/bench_allocator_napari.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    head = header("napari's resident memory after Adapt & segment, glibc allocator tuned vs glibc's defaults")
    t0 = time.perf_counter()
    res: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    rows = []
    for i in range(args.repeats):
        for s in (SETTINGS if i % 2 == 0 else SETTINGS[::-1]):
            r = _child(s)
            if r["tuned"] != (s == "tuned"):
                raise SystemExit(f"BNADAPT_MALLOC={s} but the allocator reports tuned={r['tuned']}")
            res[s].append(r)
            rows.append(
                f"  {i + 1:>2}  {s:<8} {r['rss_start_mib']:>6.0f} {r['runs'][0]['rss_mib']:>6.0f} "
                f"{r['runs'][1]['rss_mib']:>6.0f} {r['hwm_mib']:>6.0f}   "
                + "   ".join(f"{u['seconds']:>6.1f} {u['cpu_s']:>6.1f} {u['sys_s']:>5.1f} {u['minflt'] / 1000:>6.0f}"
                           for u in r["runs"])
            )
            print(rows[-1], flush=True)

    def med(s: str, f) -> float:
        return statistics.median(f(r) for r in res[s])

    keys = {
        "RSS before run 1 (MiB)": lambda r: r["rss_start_mib"],
        "RSS after run 1 (MiB)": lambda r: r["runs"][0]["rss_mib"],
        "RSS after run 2 (MiB)": lambda r: r["runs"][1]["rss_mib"],
        "peak RSS, VmHWM (MiB)": lambda r: r["hwm_mib"],
        "run 1 wall time (s)": lambda r: r["runs"][0]["seconds"],
        "run 1 CPU time (s)": lambda r: r["runs"][0]["cpu_s"],
        "run 1 system time (s)": lambda r: r["runs"][0]["sys_s"],
        "run 1 page faults (k)": lambda r: r["runs"][0]["minflt"] / 1000,
        "run 2 wall time (s)": lambda r: r["runs"][1]["seconds"],
        "run 2 CPU time (s)": lambda r: r["runs"][1]["cpu_s"],
        "run 2 page faults (k)": lambda r: r["runs"][1]["minflt"] / 1000,
    }
    table = [f"  {'median of ' + str(args.repeats) + ' processes':<26} {'tuned':>8} {'default':>8}   tuned - default"]
    for k, f in keys.items():
        a, b = med("tuned", f), med("default", f)
        table.append(f"  {k:<26} {a:>8.1f} {b:>8.1f}   {a - b:>+8.1f} ({(a - b) / b:+.0%})")

    rss_t, rss_d = med("tuned", keys["RSS after run 1 (MiB)"]), med("default", keys["RSS after run 1 (MiB)"])
    cpu_t, cpu_d = med("tuned", keys["run 1 CPU time (s)"]), med("default", keys["run 1 CPU time (s)"])
    rise, gain = (rss_t - rss_d) / rss_d, (cpu_d - cpu_t) / cpu_d
    keep = gain >= MIN_TIME_GAIN and rise <= MAX_RSS_RISE and rise < gain
    verdict = [
        f"rule (fixed before measuring): tuned by default only if run 1 takes >= {MIN_TIME_GAIN:.0%} less CPU time with it,",
        f"  and the RSS after run 1 grows by <= {MAX_RSS_RISE:.0%} of the untuned RSS and by a smaller share than the",
        "  CPU time saved. (CPU time, user + system, of the whole process during the run: on this shared",
        "  machine the wall time depends on the other jobs; both are listed.)",
        (f"run 1: CPU time {cpu_d:.1f} -> {cpu_t:.1f} s ({gain:.0%} less); RSS after it {rss_d:.0f} -> {rss_t:.0f} MiB "
         f"({rss_t - rss_d:+.0f} MiB, {rise:+.1%})"),
        f"=> default BNADAPT_MALLOC={'tuned' if keep else 'default'}",
    ]
    lines = [
        f"# command: xvfb-run -a -s \"-screen 0 1600x1000x24\" {command.strip()}",
        head.rstrip("\n"),
        f"# per process: napari viewer (xvfb), {SHAPE} uint8 toy target; in a worker thread, as the widget:",
        "# load toy-perlin, nb.adapt, nb.segment on the CPU; Labels layer added on the GUI thread; done twice.",
        "# RSS from /proc/self/status after the Labels layer is added and 1 s of idle event loop",
        f"# total wall time {time.perf_counter() - t0:.0f} s; load average at the end {os.getloadavg()[0]:.2f}",
        "",
        "                  RSS (MiB)                     run 1 (s, k faults)           run 2 (s, k faults)",
        "   #  setting   start after1 after2  VmHWM     wall    CPU   sys faults     wall    CPU   sys faults",
        *rows,
        "",
        *table,
        "",
        *verdict,
        (f"foreground share of the last segmentation: tuned {res['tuned'][-1]['foreground']:.4f}, "
         f"default {res['default'][-1]['foreground']:.4f}"),
    ]
    write("bench_allocator_napari", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Does a short self-training pass after AdaBN help on volumes the models never saw? (issue #14)

Run: python benchmarks/bench_self_training.py [--models lucchi-pp vnc em-generalist] [--models-dir DIR]

Needs ``../shared/data/real/``. The targets are those of ``bench_real_generalisation.py`` (held-out
slices only; real ones and simulated other labs, clearly labelled), by default the two real
volumes and the two simulations that change grey values ("low dose", "combined"). Per (model,
target): IoU of AdaBN and of AdaBN + :func:`napari_bnadapt.adabn.self_train.self_train` at its
defaults (30 steps of 4 patches, lr 1e-4, confidence 0.9: chosen before this benchmark ran, not
tuned on it), with the time of the pass on this machine. With ``--tta N`` (N = 2, 4 or 8) both are
also scored with test-time augmentation over N views (the two options together:
``workflow.run(self_train=True, tta=N)``, ``bnadapt segment --adapt --self-train --tta N``). Rows are
appended to ``<name>.partial.jsonl`` as they finish; a rerun with the same arguments skips them.

Writes ``benchmarks/results/<name>.{txt,json}`` (``--name``, default ``bench_self_training``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import RESULTS, add_model_arguments, header, load_em_model, read_partial, write  # noqa: E402
from bench_real_generalisation import domain_of, targets  # noqa: E402
from em_data import real_data_ready  # noqa: E402

import napari_bnadapt as nb  # noqa: E402

NAME = "bench_self_training"
DEFAULT_TARGETS = ["Lucchi++ test", "VNC test", "low dose", "combined"]


def evaluate(model: Any, t: dict[str, Any], tta: int = 1) -> dict[str, Any]:
    """AdaBN and AdaBN + self-training on one target (each also with ``tta`` views when > 1): IoU, seconds, report."""
    from napari_bnadapt.adabn.self_train import self_train
    from napari_bnadapt.segmentation.tta import predict_tta

    x, y, px = t["image"], t["labels"], t["pixel_size_nm"]
    if px is None:
        px = (getattr(model, "meta", None) or {}).get("pixel_size_nm")
    score = lambda m: nb.iou(nb.predict(m, x, device="cpu", pixel_size_nm=px) > 0.5, y > 0)  # noqa: E731
    t0 = time.perf_counter()
    adapted, _ = nb.adapt(model, x, device="cpu", pixel_size_nm=px, seed=0)
    s_adapt = time.perf_counter() - t0
    iou_adabn = score(adapted)
    before = {k: v.clone() for k, v in adapted.state_dict().items()}
    tuned, report = self_train(adapted, x, device="cpu", pixel_size_nm=px)
    assert all(np.array_equal(before[k].numpy(), v.numpy()) for k, v in adapted.state_dict().items())
    out = {"adabn": iou_adabn, "self_train": score(tuned), "adapt_s": s_adapt, "self_train_s": report.seconds,
           "reverted": report.reverted, "confident": report.confident_fraction,
           "foreground": [report.foreground_before, report.foreground_after]}
    if tta > 1:
        for key, m in (("adabn_tta", adapted), ("self_train_tta", tuned)):
            out[key] = nb.iou(np.asarray(predict_tta(m, x, transforms=tta, device="cpu", pixel_size_nm=px)) > 0.5, y > 0)
        out["tta"] = tta
    return out


def run(models: list[str], models_dir: Path | None, only: list[str], name: str = NAME, tta: int = 1) -> dict[str, Any]:
    tg = [t for t in targets(3, 1) if any(o in t["name"] for o in only)]
    partial = RESULTS / f"{name}.partial.jsonl"
    done = read_partial(partial)
    rows, reused = [], 0
    for model_name in models:
        model = load_em_model(model_name, models_dir)
        for t in tg:
            old = [r for r in done if r["model"] == model_name and r["target"] == t["name"]
                   and r.get("tta", 1) == tta]  # a row of a run with other views is not this one
            if old:
                rows.append(old[0])
                reused += 1
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = evaluate(model, t, tta)
            domain = domain_of(model_name, t["volume"])
            rows.append({"model": model_name, "target": t["name"], "kind": t["kind"], "domain": domain, **res})
            with partial.open("a") as f:
                f.write(json.dumps(rows[-1], default=float) + "\n")
            print(f"{model_name:>16} | {t['name']:<28} | AdaBN {res['adabn']:.3f} -> self-train {res['self_train']:.3f} "
                  f"({res['self_train_s']:.0f} s)" + (f"; with TTA {res['adabn_tta']:.3f} -> {res['self_train_tta']:.3f}"
                                                      if tta > 1 else ""), flush=True)
    return {"rows": rows, "reused": reused}


def table(result: dict[str, Any]) -> str:
    tta = all("self_train_tta" in r for r in result["rows"]) and bool(result["rows"])
    views = f" ({result['rows'][0]['tta']} views)" if tta else ""
    extra = f" AdaBN + TTA{views} | + self-training + TTA{views} |" if tta else ""
    lines = ["| model | target | kind | AdaBN | + self-training | change | pass s | guard reverted |" + extra,
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if tta else "")]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['target']} | {r['kind']}, {r['domain']} | {r['adabn']:.3f} | "
                     f"{r['self_train']:.3f} | {r['self_train'] - r['adabn']:+.3f} | {r['self_train_s']:.0f} | "
                     f"{'yes' if r['reverted'] else 'no'} |"
                     + (f" {r['adabn_tta']:.3f} | {r['self_train_tta']:.3f} |" if tta else ""))
    d = np.array([r["self_train"] - r["adabn"] for r in result["rows"]])
    if len(d):
        lines += ["", f"Change over {len(d)} (model, target) pairs: median {np.median(d):+.3f}, mean {d.mean():+.3f}, "
                  f"worst {d.min():+.3f}, best {d.max():+.3f}; better in {int((d > 0.01).sum())}, "
                  f"worse in {int((d < -0.01).sum())} (by more than 0.01)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap, ["lucchi-pp", "vnc", "em-generalist"], name=NAME)
    ap.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS,
                    help="targets whose name contains one of these (default: %(default)s)")
    ap.add_argument("--tta", type=int, choices=(1, 2, 4, 8), default=1,
                    help="also score both with test-time augmentation over this many views (1: no)")
    args = ap.parse_args(argv)
    if not real_data_ready(args.threads):
        return 2
    t0 = time.perf_counter()
    result = run(args.models, args.models_dir, args.targets, args.name, args.tta)
    result["command"] = "python benchmarks/bench_self_training.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result["seconds"] = round(time.perf_counter() - t0)
    text = header("Self-training after AdaBN on held-out EM slices (real and simulated other labs)") + (
        f"# command: {result['command']}\n# wall time: {result['seconds']} s"
        + (f" ({result['reused']} of {len(result['rows'])} rows read back from {args.name}.partial.jsonl)"
           if result["reused"] else "") + "\n\n" + table(result) + "\n")
    write(args.name, text)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

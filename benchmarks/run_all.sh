#!/usr/bin/env bash
# Rerun every benchmark; each writes benchmarks/results/<name>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
for b in bench_unet_width bench_cpu_throughput bench_adapt_segment bench_adapt_scaling bench_segment_memory bench_generate bench_wasserstein bench_reliability bench_open_big_tiff; do
  echo "== $b"; "$PY" "benchmarks/$b.py"
done
if [ -d ../shared/data/real ]; then
  echo "== bench_real_cross_domain"; "$PY" benchmarks/bench_real_cross_domain.py
else
  echo "(../shared/data/real not found: skipped bench_real_cross_domain)"
fi
if [ -n "${DISPLAY:-}" ]; then
  echo "== bench_gui_responsiveness"; "$PY" benchmarks/bench_gui_responsiveness.py
  echo "== bench_allocator_napari"; "$PY" benchmarks/bench_allocator_napari.py
else
  echo "(no display: skipped bench_gui_responsiveness and bench_allocator_napari; run this script under xvfb-run -a)"
fi

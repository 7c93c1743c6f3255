#!/usr/bin/env bash
# Regenerate every committed output (benchmarks/results/, docs/results/, docs/images/) with the
# settings the committed files and the docs quote. benchmarks/README.md lists output -> command.
#
#   bash benchmarks/run_all.sh [SECTION ...]        default: all
#
# Sections (times: this project's shared 2-core CPU):
#   quick        short CPU benchmarks (~7 min)
#   slow         long CPU benchmarks (~30 min)
#   gui          napari benchmarks, need a display or xvfb-run (~25 min)
#   experiments  the seven `bnadapt experiment` runs, default scale (~32 min + compare)
#   calibration  reliability figures: toy model; EM models with the real data (~8 min + ~10 min)
#   screenshots  napari screenshots for the docs, need a display or xvfb-run (~3 min; real EM part needs the data)
#   real         real EM cross-domain and generalisation benchmarks, need ../shared/data/real (~1.5 h)
#   gpu          benchmarks/gpu_check.py, only where CUDA is available (a few minutes)
#   all          every section above, in this order (about 2 h)
#
# PYTHON=path/to/python picks the interpreter (default .venv/bin/python). A failing step does not stop
# the others; the script lists the failed steps at the end and exits with status 1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
REAL=../shared/data/real
TMPDIR_MODELS="${TMPDIR:-/tmp}/bnadapt-models"
XVFB=(xvfb-run -a -s "-screen 0 1600x1000x24")
FAILED=()

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

# step NAME COMMAND...: run one command, remember it if it fails
step() {
  local name=$1; shift
  echo; echo "== $name"
  if ! "$@"; then
    echo "!! $name failed"
    FAILED+=("$name")
  fi
}
have_real() { [ -d "$REAL" ]; }
have_display() { [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ] || command -v xvfb-run >/dev/null 2>&1; }
# on_display COMMAND...: on the current display, else in a 1600x1000x24 virtual one (xvfb-run)
on_display() {
  if [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; then "$@"; else "${XVFB[@]}" "$@"; fi
}

# quick (~7 min): each writes benchmarks/results/<name>.txt
section_quick() {
  # bench_unet_width.txt (~1 min)
  step bench_unet_width "$PY" benchmarks/bench_unet_width.py
  # bench_adapt_segment_cpu.txt (~1 min); the committed run had glibc's allocator tuned (the library
  # default then, what the bnadapt CLI still sets)
  step bench_adapt_segment env BNADAPT_MALLOC=tuned "$PY" benchmarks/bench_adapt_segment.py --model toy-perlin --repeats 3 --device cpu
  # bench_generate.txt (~2 min)
  step bench_generate "$PY" benchmarks/bench_generate.py --repeats 5 --ref-images 500
  # bench_wasserstein.txt (~1 min)
  step bench_wasserstein "$PY" benchmarks/bench_wasserstein.py --repeats 7 --threads 1
  # bench_open_big_tiff.txt (~1 min); writes and deletes a 2 GiB TIFF, opens it in napari (under
  # xvfb-run by itself when there is no display)
  step bench_open_big_tiff "$PY" benchmarks/bench_open_big_tiff.py --slices 512 --size 2048
}

# slow (~30 min): each writes benchmarks/results/<name>.txt
section_slow() {
  # bench_cpu_throughput.txt (~10 min); tunes the allocator itself; its Lucchi++ IoU lines need
  # ../shared/data/real (without it they say "skipped")
  step bench_cpu_throughput "$PY" benchmarks/bench_cpu_throughput.py --models toy-perlin lucchi-pp --repeats 5
  # bench_adapt_scaling.txt (~3 min); writes and deletes a 2 GiB TIFF; allocator tuned as in the committed run
  step bench_adapt_scaling env BNADAPT_MALLOC=tuned "$PY" benchmarks/bench_adapt_scaling.py
  # bench_segment_memory.txt (~5 min); writes and deletes a 2 GiB TIFF; tunes the allocator itself
  step bench_segment_memory "$PY" benchmarks/bench_segment_memory.py --slices 2048
  # bench_reliability.txt (~6 min)
  step bench_reliability "$PY" benchmarks/bench_reliability.py --threads 1 --repeats 3 --whole
}

# gui (~25 min): napari in a display; each writes benchmarks/results/<name>.txt
section_gui() {
  if ! have_display; then
    echo "(no display and no xvfb-run: skipped bench_gui_responsiveness, bench_allocator_napari)"; return 0
  fi
  # bench_gui_responsiveness.txt (~2 min)
  step bench_gui_responsiveness on_display "$PY" benchmarks/bench_gui_responsiveness.py
  # bench_allocator_napari.txt (~21 min: ten napari processes)
  step bench_allocator_napari on_display "$PY" benchmarks/bench_allocator_napari.py --repeats 5
}

# one experiment: bnadapt experiment NAME at the default scale (--jobs 1, seed 0) into the git-ignored
# bnadapt-experiments/NAME, then docs/results/NAME/results.csv, docs/images/exp_*.png and
# benchmarks/results/experiments_<NAME>.txt (the header and the phase times of its summary.json)
experiment() {
  local e=$1 dir=bnadapt-experiments/$1 hdr
  hdr=$("$PY" -c 'import sys; sys.path.insert(0, "benchmarks"); from _common import header
print(header(f"napari-bnadapt experiment {sys.argv[1]!r} at the default (reduced) scale"), end="")' "$e") || return 1
  # glibc's allocator left alone, as in the committed runs (they predate its tuning; the CLI would tune it)
  BNADAPT_MALLOC=default "$PY" -m napari_bnadapt.cli experiment "$e" --overwrite || return 1
  mkdir -p "docs/results/$e" && cp "$dir/results.csv" "docs/results/$e/" && cp "$dir"/figures/*.png docs/images/ || return 1
  HEADER="$hdr" "$PY" - "$e" "$dir" <<'EOF' || return 1
import json, os, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from _common import write

name, folder = sys.argv[1], Path(sys.argv[2])
s = json.loads((folder / "summary.json").read_text())
scale = json.loads((folder / "config.json").read_text())["scale"]
lines = [os.environ["HEADER"].rstrip("\n"),
         f"# command: bnadapt experiment {name} --overwrite   (benchmarks/run_all.sh experiments; jobs={s.get('jobs', 1)}, seed 0)",
         f"# load average at the end: {os.getloadavg()[0]:.2f}",
         "# scale: " + json.dumps(scale, sort_keys=True), ""]
t = s["seconds_this_run"]
if name == "toy-uda":
    lines.append(f"total, training + {s['rows']} targets + figures (s): {t:.1f}")
else:
    lines += [f"training the source models (s)   : {s['seconds_training']:>7.1f}   (summary.json phase timer)",
              f"adapt + segment + W2, all pairs (s): {s['seconds_pairs']:>6.1f}",
              f"per pair (s)                     : {s['seconds_pairs'] / max(1, s['rows']):>7.3f}",
              f"findings + figures (s)           : {s['seconds_figures']:>7.1f}",
              f"total (s)                        : {t:>7.1f}  = {t / 60:.1f} min",
              f"rows (source, target pairs)      : {s['rows']}"]
write("experiments_" + name.replace("-", "_"), "\n".join(lines) + "\n")
EOF
}

# the comparison with TENT, ADDA and GLSS (docs/experiments.md, "AdaBN against the alternatives"): its two
# halves side by side, one process each (toy families; the real pair, skipped without the data), into
# bnadapt-experiments/compare-{toy,real}; then docs/results/compare-{toy,real}/{results.csv,table.md,summary.json},
# docs/images/compare_*.png and benchmarks/results/experiments_compare_{toy,real}.txt
compare_experiment() {
  local hdr half d p1 p2
  hdr=$("$PY" -c 'import sys; sys.path.insert(0, "benchmarks"); from _common import header
print(header("napari-bnadapt experiment compare at the default (reduced) scale"), end="")') || return 1
  BNADAPT_MALLOC=default "$PY" -m napari_bnadapt.cli experiment compare --only brightness,distance,inverted,grid800 \
    --out bnadapt-experiments/compare-toy --overwrite --quiet & p1=$!
  BNADAPT_MALLOC=default "$PY" -m napari_bnadapt.cli experiment compare --only real \
    --out bnadapt-experiments/compare-real --overwrite --quiet & p2=$!
  wait $p1 || return 1
  wait $p2 || return 1
  for half in toy real; do
    d=bnadapt-experiments/compare-$half
    mkdir -p "docs/results/compare-$half" && cp "$d"/{results.csv,table.md,summary.json} "docs/results/compare-$half/" || return 1
    cp "$d"/figures/compare_*.png docs/images/ 2>/dev/null || true
    HEADER="$hdr" "$PY" - "$half" "$d" <<'EOF' || return 1
import json, os, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from _common import write

half, folder = sys.argv[1], Path(sys.argv[2])
s = json.loads((folder / "summary.json").read_text())
cfg = json.loads((folder / "config.json").read_text())
rows = (folder / "results.csv").read_text().count("\n") - 1
lines = [os.environ["HEADER"].rstrip("\n"),
         f"# command: bnadapt experiment compare --only {','.join(cfg['families'])} --out {folder} --overwrite"
         "   (benchmarks/run_all.sh experiments: the toy and the real half side by side, one process each)",
         f"# load average at the end: {os.getloadavg()[0]:.2f}",
         "# scale: " + json.dumps(cfg["scale"], sort_keys=True), "",
         f"total (s)  : {s['seconds']:>8.1f}  = {s['seconds'] / 60:.1f} min",
         f"rows       : {rows}   ((pair, seed, method) rows of results.csv)"]
lines += [f"note       : {n}" for n in s.get("notes", [])]
write("experiments_compare_" + half, "\n".join(lines) + "\n")
EOF
  done
}

# experiments (~32 min: distance 6.5, brightness 4.9, mixed 7.2, grid800 4.8, shapes 8.0 min, toy-uda 20 s;
# compare: see docs/experiments.md)
section_experiments() {
  local e
  for e in distance brightness mixed grid800 shapes toy-uda; do
    step "experiment $e" experiment "$e"
  done
  step "experiment compare" compare_experiment
}

# calibration: the reliability figures. --dry-run draws them without rewriting the bundled model files
# (drop it to also store the calibration in the model's card, as scripts/calibrate_*.py do by default)
section_calibration() {
  # docs/images/reliability_{curve,scatter,selection,signals}.png (~8 min); the script's defaults
  step calibrate_bundled "$PY" scripts/calibrate_bundled.py --dry-run
  if have_real; then
    # docs/images/reliability_em_lucchi-pp_*.png, reliability_em_vnc_*.png (~5 min each); the script's
    # defaults (56 + 8 inverted shifts x 16 tiles); allocator tuned as in the committed runs
    step "calibrate_em_models lucchi" env BNADAPT_MALLOC=tuned "$PY" scripts/calibrate_em_models.py lucchi --dry-run
    step "calibrate_em_models vnc" env BNADAPT_MALLOC=tuned "$PY" scripts/calibrate_em_models.py vnc --dry-run
  else
    echo "($REAL not found: skipped calibrate_em_models lucchi / vnc)"
  fi
}

# screenshots (~3 min): napari windows for README.md, docs/napari.md and docs/real-data.md
section_screenshots() {
  if ! have_display; then
    echo "(no display and no xvfb-run: skipped make_screenshots, screenshot_real)"; return 0
  fi
  # docs/images/{adapt_before,adapt_after,reliability_panel,train_widget,train_widget_after}.png (~2 min)
  step make_screenshots on_display "$PY" scripts/make_screenshots.py --out docs/images
  if have_real; then
    # docs/images/{real_vnc_adapted,pixel_size_warning}.png (~1 min)
    step screenshot_real on_display "$PY" scripts/screenshot_real.py --out docs/images
    # docs/images/{spot_check,spot_check_section}.png (~3 min)
    step screenshot_spot_check on_display "$PY" scripts/screenshot_spot_check.py --out docs/images
  else
    echo "($REAL not found: skipped screenshot_real)"
  fi
}

# real (~5 min): Lucchi++ <-> VNC; writes benchmarks/results/bench_real_cross_domain.{txt,json} and
# docs/images/{real_ablation_patches,real_examples}.png
section_real() {
  if have_real; then
    step bench_real_cross_domain env BNADAPT_MALLOC=tuned "$PY" benchmarks/bench_real_cross_domain.py --seeds 2 --ablation-seeds 2
    step bench_pixel_size_real "$PY" benchmarks/bench_pixel_size_real.py
    # the generalisation suite (~25 min per model on 2 busy cores); lucchi-pp-robust is not bundled:
    # it is trained first (~11 min), as docs/real-data.md gives
    rm -f benchmarks/results/bench_real_generalisation*.partial.jsonl
    step bench_real_generalisation "$PY" benchmarks/bench_real_generalisation.py --models lucchi-pp vnc em-generalist --threads 1
    step "train lucchi-robust" "$PY" scripts/train_em_models.py lucchi-robust --out "$TMPDIR_MODELS" --steps 500 \
      --patch-size 192 --eval-every 100 --patience 3 --init lucchi-pp --lr 3e-4 --overwrite
    step "train vnc-robust" "$PY" scripts/train_em_models.py vnc-robust --out "$TMPDIR_MODELS" --steps 500 \
      --patch-size 192 --eval-every 100 --patience 3 --init vnc --lr 3e-4 --overwrite
    step bench_real_generalisation_robust "$PY" benchmarks/bench_real_generalisation.py --models lucchi-pp-robust vnc-robust \
      --models-dir "$TMPDIR_MODELS" --threads 1 --name bench_real_generalisation_robust
    step "train lucchi-pp-robust-fixed" "$PY" scripts/train_em_models.py lucchi-robust-fixed --out "$TMPDIR_MODELS" \
      --steps 500 --patch-size 192 --init lucchi-pp --lr 3e-4 --val-fraction 0 --overwrite
    step bench_real_generalisation_fixed "$PY" benchmarks/bench_real_generalisation.py --models lucchi-pp-robust-fixed \
      --models-dir "$TMPDIR_MODELS" --name bench_real_generalisation_fixed
    step "train lucchi-pp-robust-half" "$PY" scripts/train_em_models.py lucchi-robust-half --out "$TMPDIR_MODELS" \
      --steps 1500 --patch-size 192 --init lucchi-pp --lr 3e-4 --val-fraction 0 --overwrite
    step bench_real_generalisation_half "$PY" benchmarks/bench_real_generalisation.py --models lucchi-pp-robust-half \
      --models-dir "$TMPDIR_MODELS" --name bench_real_generalisation_half
    step "train vnc-robust-half" "$PY" scripts/train_em_models.py vnc-robust-half --out "$TMPDIR_MODELS" \
      --steps 1500 --patch-size 192 --init vnc --lr 3e-4 --val-fraction 0 --overwrite
    step bench_real_generalisation_vnc_half "$PY" benchmarks/bench_real_generalisation.py --models vnc-robust-half \
      --models-dir "$TMPDIR_MODELS" --name bench_real_generalisation_vnc_half
    step "train lucchi-pp-robust-long" "$PY" scripts/train_em_models.py lucchi-robust-long --out "$TMPDIR_MODELS" \
      --init "$TMPDIR_MODELS/lucchi-pp-robust-half.safetensors" --patch-size 192 --lr 2e-4 --val-fraction 0 --overwrite
    step bench_real_generalisation_long "$PY" benchmarks/bench_real_generalisation.py --models lucchi-pp-robust-long \
      --models-dir "$TMPDIR_MODELS" --name bench_real_generalisation_long
    step "train lucchi-pp-robust-anneal" "$PY" scripts/train_em_models.py lucchi-robust-anneal --out "$TMPDIR_MODELS" \
      --init "$TMPDIR_MODELS/lucchi-pp-robust-long.safetensors" --patch-size 192 --lr 1e-4 --val-fraction 0 --overwrite
    step bench_real_generalisation_anneal "$PY" benchmarks/bench_real_generalisation.py --models lucchi-pp-robust-anneal \
      --models-dir "$TMPDIR_MODELS" --name bench_real_generalisation_anneal
    step "train em-generalist-half" "$PY" scripts/train_em_models.py generalist-half --out "$TMPDIR_MODELS" \
      --init lucchi-pp --patch-size 192 --lr 3e-4 --val-fraction 0 --overwrite
    step bench_real_generalisation_generalist_half "$PY" benchmarks/bench_real_generalisation.py \
      --models em-generalist-half --models-dir "$TMPDIR_MODELS" --name bench_real_generalisation_generalist_half
    # weight-space blends of lucchi-pp / vnc and their halved-probability fine-tunings (about 45 min on 2 cores)
    step bench_blend "$PY" benchmarks/bench_blend.py --models-dir "$TMPDIR_MODELS"
    step bench_blend_mixed_statistics "$PY" benchmarks/bench_blend.py --models-dir "$TMPDIR_MODELS" --statistics mixed \
      --pairs lucchi-blend --weights 0.5 --name bench_blend_mixed_statistics
    step "make lucchi-pp-blend" "$PY" scripts/train_em_models.py lucchi-blend --out "$TMPDIR_MODELS" --overwrite
    step "make vnc-blend" "$PY" scripts/train_em_models.py vnc-blend --out "$TMPDIR_MODELS" --overwrite
    step bench_real_generalisation_blend "$PY" benchmarks/bench_real_generalisation.py --models lucchi-pp-blend vnc-blend \
      --models-dir "$TMPDIR_MODELS" --name bench_real_generalisation_blend
    step "make lucchi-pp-blend at 0.25" "$PY" scripts/train_em_models.py lucchi-blend --weight 0.25 \
      --tuned "$TMPDIR_MODELS/lucchi-pp-robust-half.safetensors" --out "$TMPDIR_MODELS/w25" --overwrite
    step bench_real_generalisation_blend_25 "$PY" benchmarks/bench_real_generalisation.py --models lucchi-pp-blend \
      --models-dir "$TMPDIR_MODELS/w25" --name bench_real_generalisation_blend_25
    # which BatchNorm layers to adapt: AdaBN on the first k U-Net blocks (about 25 min on 2 cores)
    rm -f benchmarks/results/bench_adabn_depth.partial.jsonl
    step bench_adabn_depth "$PY" benchmarks/bench_adabn_depth.py --models lucchi-pp vnc em-generalist \
      lucchi-pp-robust-half vnc-robust-half --models-dir "$TMPDIR_MODELS"
    step bench_target_blur "$PY" benchmarks/bench_target_blur.py --models-dir "$TMPDIR_MODELS"
    # the blur chosen without labels (choose_smoothing): AdaBN on the smoothed target (about 25 min on 2 cores)
    # the three AdaBN estimators (cumulative, EMA, source prior) on the suite (about 16 min on 2 cores)
    rm -f benchmarks/results/bench_estimators.partial.jsonl
    step bench_estimators "$PY" benchmarks/bench_estimators.py --models lucchi-pp vnc em-generalist \
      lucchi-pp-robust-long vnc-robust lucchi-pp-robust-half vnc-robust-half --models-dir "$TMPDIR_MODELS"
    rm -f benchmarks/results/bench_smoothing.partial.jsonl
    step bench_smoothing "$PY" benchmarks/bench_smoothing.py --models lucchi-pp vnc em-generalist \
      lucchi-pp-robust-half vnc-robust-half lucchi-pp-robust-long --models-dir "$TMPDIR_MODELS"
    # self-training after AdaBN (5,928 s here with the machine shared by up to 6 jobs)
    rm -f benchmarks/results/bench_self_training.partial.jsonl
    step bench_self_training "$PY" benchmarks/bench_self_training.py --models lucchi-pp vnc em-generalist lucchi-pp-robust \
      --models-dir "$TMPDIR_MODELS" --threads 1
    rm -f benchmarks/results/bench_self_training_vnc_robust.partial.jsonl
    step bench_self_training_vnc_robust "$PY" benchmarks/bench_self_training.py --models vnc-robust vnc-robust-half \
      --models-dir "$TMPDIR_MODELS" --targets "Lucchi++ test" --threads 1 --name bench_self_training_vnc_robust
    # self-training and test-time augmentation together, on the real held-out slices (about 26 min on 2 cores)
    rm -f benchmarks/results/bench_self_training_tta.partial.jsonl
    step bench_self_training_tta "$PY" benchmarks/bench_self_training.py --models vnc-robust vnc-robust-half \
      lucchi-pp-robust-long lucchi-pp-robust-half em-generalist lucchi-pp vnc --models-dir "$TMPDIR_MODELS" \
      --targets "Lucchi++ test" "VNC test" --tta 8 --name bench_self_training_tta
    # the trust verdict: witnesses and leave-one-volume-out validation (~30 min on 2 busy cores);
    # scripts/refit_trust.py then writes its calibration into the model files
    rm -f benchmarks/results/bench_trust.partial.jsonl
    step bench_trust "$PY" benchmarks/bench_trust.py --models lucchi-pp vnc em-generalist em-generalist-2 lucchi-pp-robust \
      --models-dir "$TMPDIR_MODELS" --threads 1
    # the guard with the generalists' training-volume statistics (bundled models only; ~30 min in all)
    step bench_real_generalisation_volume_guard "$PY" benchmarks/bench_real_generalisation.py \
      --models em-generalist-2 em-generalist --name bench_real_generalisation_volume_guard
    step bench_whole_test_volume_in_domain "$PY" benchmarks/bench_whole_test_volume.py --in-domain \
      --models em-generalist-2 em-generalist lucchi-pp vnc --name bench_whole_test_volume_in_domain
    step bench_trust_recheck_need "$PY" benchmarks/bench_trust_recheck_need.py
    step bench_small_crops "$PY" benchmarks/bench_small_crops.py
    step bench_small_crops_prior "$PY" benchmarks/bench_small_crops.py --mode prior --name bench_small_crops_prior
    # the guard's optional content floor (stored in the generalists by scripts/train_em_models.py --content-floor)
    step bench_small_crops_content_floor "$PY" benchmarks/bench_small_crops.py --models em-generalist-2 --content-floor \
      --name bench_small_crops_content_floor
    step bench_small_crops_content_floor_new_crops "$PY" benchmarks/bench_small_crops.py --models em-generalist-2 \
      --content-floor --seed 1 --name bench_small_crops_content_floor_new_crops
    rm -f benchmarks/results/bench_real_generalisation_content_floor.partial.jsonl
    step bench_real_generalisation_content_floor "$PY" benchmarks/bench_real_generalisation.py --models em-generalist-2 \
      --content-floor --name bench_real_generalisation_content_floor
    # the class-balanced estimator (mode="balanced"): small crops, new crops, the suite, whole volumes (~100 min)
    step bench_small_crops_balanced "$PY" benchmarks/bench_small_crops.py --mode balanced --name bench_small_crops_balanced
    step bench_small_crops_balanced_new_crops "$PY" benchmarks/bench_small_crops.py --mode balanced --seed 1 \
      --name bench_small_crops_balanced_new_crops
    step bench_small_crops_balanced_cost "$PY" benchmarks/bench_small_crops.py --cost --mode balanced \
      --models em-generalist-2 lucchi-pp --name bench_small_crops_balanced_cost
    rm -f benchmarks/results/bench_estimators_balanced.partial.jsonl
    step bench_estimators_balanced "$PY" benchmarks/bench_estimators.py --models lucchi-pp vnc em-generalist-2 \
      em-generalist --name bench_estimators_balanced
    step bench_whole_test_volume_balanced "$PY" benchmarks/bench_whole_test_volume.py --mode balanced \
      --models lucchi-pp vnc --name bench_whole_test_volume_balanced
    step bench_whole_test_volume_in_domain_balanced "$PY" benchmarks/bench_whole_test_volume.py --in-domain \
      --mode balanced --models em-generalist-2 em-generalist lucchi-pp vnc --name bench_whole_test_volume_in_domain_balanced
    rm -f benchmarks/results/bench_choose_statistics.partial.jsonl  # a full run measures every row afresh
    step bench_choose_statistics "$PY" benchmarks/bench_choose_statistics.py
    rm -f benchmarks/results/bench_choose_statistics_large.partial.jsonl
    step bench_choose_statistics_large "$PY" benchmarks/bench_choose_statistics.py --witness-slices 6 \
      --witness-crop 1024 --name bench_choose_statistics_large
    rm -f benchmarks/results/bench_choose_statistics_new_crops.partial.jsonl
    step bench_choose_statistics_new_crops "$PY" benchmarks/bench_choose_statistics.py --witness-slices 6 \
      --witness-crop 1024 --crop-seed 1 --name bench_choose_statistics_new_crops
    step bench_choose_statistics_cost "$PY" benchmarks/bench_choose_statistics.py --cost --models em-generalist-2 lucchi-pp
    step bench_oversized "$PY" benchmarks/bench_oversized.py
    # the spot check's interval against whole-stack IoUs, leave one volume out (about an hour on 2 busy cores)
    rm -f benchmarks/results/bench_spot_check.partial.jsonl
    step bench_spot_check "$PY" benchmarks/bench_spot_check.py --models lucchi-pp vnc lucchi-pp-robust \
      --models-dir "$TMPDIR_MODELS" --threads 1
    # what each part of the EM augmentation buys: 10 fine-tunings of lucchi-pp (about an hour on 2 cores)
    rm -f benchmarks/results/bench_augmentation_ablation.partial.jsonl
    step bench_augmentation_ablation "$PY" benchmarks/bench_augmentation_ablation.py --seeds 0 1 --repeat geometric em \
      --out "$TMPDIR_MODELS/ablation"
  else
    echo "($REAL not found: skipped bench_real_cross_domain, bench_real_generalisation)"
  fi
}

# gpu (a few minutes): benchmarks/results/gpu_check.txt, written only where CUDA ran
section_gpu() {
  if "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    step gpu_check "$PY" benchmarks/gpu_check.py
    if have_real; then  # the from-scratch GPU models (gpu_training.txt) with their recorded steps, then the suite
      for recipe in lucchi-robust-gpu lucchi-robust-wide vnc-robust-gpu vnc-robust-wide generalist-gpu; do
        step "train $recipe" "$PY" scripts/train_em_models.py "$recipe" --device cuda --out "$TMPDIR_MODELS/gpu" \
          --val-fraction 0 --batch-size 8 --patch-size 256 --lr 1e-3 --overwrite
      done
      rm -f benchmarks/results/bench_real_generalisation_gpu.partial.jsonl benchmarks/results/bench_self_training_tta_gpu.partial.jsonl
      step bench_real_generalisation_gpu "$PY" benchmarks/bench_real_generalisation.py --models em-generalist-2 \
        lucchi-pp-robust-gpu vnc-robust-gpu lucchi-pp-robust-wide vnc-robust-wide --models-dir "$TMPDIR_MODELS/gpu" \
        --name bench_real_generalisation_gpu
      step bench_self_training_tta_gpu "$PY" benchmarks/bench_self_training.py --models vnc-robust-gpu lucchi-pp-robust-gpu \
        --models-dir "$TMPDIR_MODELS/gpu" --targets "Lucchi++ test" "VNC test" --tta 8 --name bench_self_training_tta_gpu
    fi
  else
    echo "(no CUDA device: skipped gpu_check)"
  fi
}

SECTIONS=(quick slow gui experiments calibration screenshots real gpu)
[ $# -eq 0 ] && set -- all
for s in "$@"; do
  case $s in
    all) ;;
    quick|slow|gui|experiments|calibration|screenshots|real|gpu) ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown section '$s'"; usage; exit 2 ;;
  esac
done
for s in "$@"; do
  if [ "$s" = all ]; then
    for t in "${SECTIONS[@]}"; do "section_$t"; done
  else
    "section_$s"
  fi
done

echo
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "failed: ${FAILED[*]}"
  exit 1
fi
echo "done: git status shows what changed"

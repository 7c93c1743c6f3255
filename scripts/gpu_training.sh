#!/usr/bin/env bash
# One GPU session in one command: the GPU check, then the from-scratch GPU source models side by side.
#
#   here:   python scripts/em_data_pack.py pack .gpu_data        # the training slices, lossless (34 MB)
#   there:  bash scripts/gpu_training.sh .gpu_data SECONDS        # from the repo root; $OUT collects results
#
# 1. unpacks the training slices (checksums verified), 2. benchmarks/gpu_check.py (bounded to 180 s),
# 3. trains the recipes below at once, each for as many steps as fit what is left of SECONDS (less a
#    margin for saving), 4. packs models and logs into $OUT/gpu_training.tgz.part-* (15 MiB pieces:
#    `cat gpu_training.tgz.part-* | tar xz`). The test slices never travel: the models are evaluated here
#    (docs/real-data.md). DEVICE=cpu runs the same steps on the CPU (a dry run of this script).
set -u
packed=$1 total=$2
start=$(date +%s)
out=${OUT:-/tmp/gpu_training_out}
work=${WORK:-/tmp/gpu_training}
device=${DEVICE:-cuda}
# (a width-32 generalist was left out: five models are what comes back from the machine in one go, 64 MiB)
recipes=${RECIPES:-"lucchi-robust-wide lucchi-robust-gpu vnc-robust-wide vnc-robust-gpu generalist-gpu"}
mkdir -p "$out" "$work/logs" "$work/models" "$work/real"
export PYTHONPATH=src PYTHONUNBUFFERED=1
{ nvidia-smi; python3 -c 'import torch, sys; print(sys.version); print("torch", torch.__version__)'; } \
    > "$work/logs/machine.txt" 2>&1
if ! python3 scripts/em_data_pack.py unpack "$packed" "$work/real" > "$work/logs/unpack.log" 2>&1; then
    cp "$work"/logs/* "$out"/; exit 1
fi
if [ "$device" = cuda ]; then
    timeout 180 python3 benchmarks/gpu_check.py --out "$out/gpu_check.txt" > "$work/logs/gpu_check.log" 2>&1
    echo "gpu_check exit $? after $(( $(date +%s) - start )) s" >> "$work/logs/machine.txt"
fi
left=$(( total - ($(date +%s) - start) ))
budget=$(( left * 4 / 5 - 20 ))
echo "training budget ${budget} s of ${left} s left" >> "$work/logs/machine.txt"
for r in $recipes; do
    timeout $(( left - 20 )) python3 scripts/train_em_models.py "$r" --device "$device" --time-budget "$budget" \
        --no-test --data "$work/real" --out "$work/models" --val-fraction 0 --batch-size 8 --patch-size 256 \
        --lr 1e-3 --threads 2 > "$work/logs/$r.log" 2>&1 &
done
wait
echo "done after $(( $(date +%s) - start )) s" >> "$work/logs/machine.txt"
cp "$work/logs/machine.txt" "$out/"
tar -C "$work" -czf - models logs | split -b 15M - "$out/gpu_training.tgz.part-"

#!/usr/bin/env bash
# The one prepared check for the lent GPU machine (one H200; at most ~8 minutes): the cuda tests,
# pre-training speed at 224 px against the bare ResNet-18 step, and the seed methods at their
# papers' budgets on the 224-px chest X-ray dev set beside the trivial baselines.
#
# Here first:   benchmarks/gpu_prepare.sh     (wheels + dev set into .gpu/, git-ignored)
# Then, with the device tool, from the repository root:
#   run(command="benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=480)
# It writes its figures under $OUT (the device tool brings them back) and prints a summary;
# docs/benchmarks.md ("GPU") says where they go.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_SECONDS:-450}))  # the paper runs end by then
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

# medad over the machine's own CUDA torch: the wheels it lacks go to /tmp/site, medad itself runs
# from the tree (pip install --no-deps -e . where the machine's setuptools can build it)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/wheels/*.whl || { echo "installing .gpu/wheels failed: run benchmarks/gpu_prepare.sh here first"; exit 1; }
if python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
    export PYTHONPATH=/tmp/site
else
    export PYTHONPATH=/tmp/site:$PWD/src
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, medad; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'medad', medad.__version__)" \
    | tee -a "$OUT/device.txt" || exit 1

echo "== cuda tests ($(($(date +%s) - START)) s)"
timeout 170 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py >"$OUT/cuda_tests.log" 2>&1
echo "pytest exit $?"; tail -25 "$OUT/cuda_tests.log"

echo "== pre-training speed, 224 px, batch 128, bf16 ($(($(date +%s) - START)) s)"
timeout 130 python3 benchmarks/gpu_speed.py --size 224 --batch 128 --steps 20 --json "$OUT/speed.json"

echo "== papers' budgets on chest_xray_covid_224 until $((DEADLINE - START)) s ($(($(date +%s) - START)) s)"
(cd benchmarks && timeout $((DEADLINE - $(date +%s) + 60)) python3 gpu_paper_run.py \
    --data ../.gpu/chest_xray_covid_224 --speed "$OUT/speed.json" --methods contrastive con2 \
    --deadline "$DEADLINE" --out /tmp/gpu_paper) 2>&1 | grep -v "^\s*$" | tail -40
cp /tmp/gpu_paper/results.jsonl "$OUT/paper_results.jsonl" 2>/dev/null
echo "== done in $(($(date +%s) - START)) s"

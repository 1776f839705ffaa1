#!/usr/bin/env bash
# The hf path measured on a GPU, in one command: bench_hf_train.py and bench_hf_eval.py on the
# Qwen2.5-0.5B and 1.5B shapes in bf16, then the hf recipe end to end on the 0.5B shape with
# criteria.max_vram_gb checked against the measured peak. Numbers go to OUT as JSON, the printed
# tables as .txt, and all of it as OUT/summary.md. About 6-8 minutes on one H200.
#
#   bash bench/gpu.sh OUT                                          # from the repository root
#   DEVICE=cpu SHAPES=tiny E2E_SHAPE=tiny E2E_ARGS="--steps 20 --eval-limit 32 --max-new-tokens 16" \
#     bash bench/gpu.sh OUT                                        # the same script, small, on CPU
#
# Nothing comes from the network: the models are random weights in the real configs' shapes, built
# locally (bench/hf_models.py). Python packages the machine lacks (trl, datasets, doit, pydantic,
# duckdb, ...) travel as wheels in .whl/ (bash bench/gpu-wheels.sh fills it); they are installed
# into /tmp/site. The project itself is used from this checkout (PYTHONPATH), not installed.
# Each step has its own time limit and a failed step does not stop the others; the exit status
# is the number of failed steps.
set -u -o pipefail
OUT=${1:?usage: bench/gpu.sh OUT_DIR}
DEVICE=${DEVICE:-cuda}
SHAPES=${SHAPES:-"qwen2.5-0.5b qwen2.5-1.5b"}
E2E_SHAPE=${E2E_SHAPE:-qwen2.5-0.5b}
E2E_ARGS=${E2E_ARGS:-}           # e.g. "--steps 20 --eval-limit 32" for a quick CPU run
E2E_LIMIT=${E2E_LIMIT:-160}
TRAIN_LIMIT=${TRAIN_LIMIT:-140}   # seconds per step of this script; raise them on a slow or shared CPU
EVAL_LIMIT=${EVAL_LIMIT:-60}
MAX_VRAM_GB=${MAX_VRAM_GB:-24}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/factory-gpu-bench}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# factory_plugins is the plugins/ directory (pyproject's package-dir); a link names it without installing.
mkdir -p "$WORK/pkgs" && ln -sfn "$REPO/plugins" "$WORK/pkgs/factory_plugins"
export PYTHONPATH="$REPO:$WORK/pkgs${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 FACTORY_PROGRESS=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; lscpu 2>/dev/null | grep -m1 'Model name';
  "$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__)";
  "$PY" -c "import trl; print('trl', trl.__version__)" || echo "trl missing: the train bench runs factory and bare only"; } 2>&1 | tee "$OUT/env.txt"
ARMS=factory,trl,bare
"$PY" -c "import trl, datasets" 2>/dev/null || ARMS=factory,bare

failed=0
step() {  # step NAME SECONDS COMMAND...: run one measurement, keep its output, count a failure
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

for shape in $SHAPES; do
  step "train-$shape" "$TRAIN_LIMIT" "$PY" bench/bench_hf_train.py --device "$DEVICE" --shape "$shape" --arms "$ARMS" \
    --work "$WORK/train-$shape" --json "$OUT/train-$shape.json"
  step "eval-$shape" "$EVAL_LIMIT" "$PY" bench/bench_hf_eval.py --device "$DEVICE" --shape "$shape" \
    --work "$WORK/train-$shape" --json "$OUT/eval-$shape.json"
done
step "e2e-$E2E_SHAPE" "$E2E_LIMIT" "$PY" bench/hf_e2e.py --device "$DEVICE" --shape "$E2E_SHAPE" --max-vram-gb "$MAX_VRAM_GB" $E2E_ARGS \
  --work "$WORK/e2e" --out "$OUT"
"$PY" bench/hf_summary.py "$OUT" > "$OUT/summary.md" && cat "$OUT/summary.md"
exit $failed

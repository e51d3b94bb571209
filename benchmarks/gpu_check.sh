#!/usr/bin/env bash
# The GPU check: run by hand on a machine with a CUDA GPU, from the repository root, with PyTorch and
# vaelab's other dependencies already installed in the Python it uses. It installs nothing.
#
#   bash benchmarks/gpu_check.sh [OUT]        # OUT: a new folder for its runs (default runs/gpu_check_<time>)
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#
# Steps, each under its own time limit (25-80 s; in all under 6.5 minutes):
#   1. preflight: a GPU is visible, the dependencies import;
#   2. the tests marked `cuda` (pytest -m cuda);
#   3. a short training run on CUDA (MNIST when $VAELAB_DATA holds it, else the bundled digits), with
#      its throughput in images/s;
#   4. the IS evaluation of that run on CUDA (`vaelab eval`), with its throughput;
#   5. torchrun with nccl at world size 1 (the trainer then runs DDP and its reductions through nccl);
#   6. bf16 autocast against float32 (benchmarks/gpu_autocast.py), with both throughputs;
#   7. the trainer with train.precision = "bf16" on step 3's data for 20 s, with its throughput.
# Everything printed is also written to OUT/gpu_check.log. Exit status: the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
OUT="${1:-runs/gpu_check_$(date +%Y%m%d_%H%M%S)}"
if [ -e "$OUT" ]; then
  echo "error: $OUT exists; give a new folder" >&2
  exit 2
fi
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee "$LOG") 2>&1
FAILED=0
SUMMARY=()

BUDGET=365  # seconds for all steps: with the small reports between them, under 6.5 minutes

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, record PASS/FAIL and its duration
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  [ "$limit" -gt "$left" ] && limit=$left
  echo
  if [ "$limit" -le 0 ]; then
    echo "== $name: no time left"
    SUMMARY+=("FAIL  $name  (no time left of the ${BUDGET} s)")
    FAILED=$((FAILED + 1))
    return 1
  fi
  echo "== $name (limit ${limit} s)"
  local t0=$SECONDS
  timeout --kill-after=3 "$limit" "$@"
  local rc=$?
  local took=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then
    SUMMARY+=("PASS  $name  (${took} s)")
  else
    [ $rc -eq 124 ] && echo "timed out after ${limit} s"
    SUMMARY+=("FAIL  $name  (exit $rc, ${took} s)")
    FAILED=$((FAILED + 1))
  fi
  return $rc
}

echo "vaelab GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), out $OUT"

step "preflight" 30 "$PY" - <<'PYEOF' || { printf '%s\n' "${SUMMARY[@]}"; exit 2; }
import importlib, sys
missing = []
for mod in ("numpy", "scipy", "safetensors", "tqdm", "matplotlib", "sklearn", "pytest"):
    try:
        importlib.import_module(mod)
    except ImportError:
        missing.append(mod)
if missing:
    sys.exit(f"missing modules: {', '.join(missing)}; this check installs nothing: install vaelab's "
             f"dependencies into {sys.executable} first (pip install -e '.[dev]')")
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}")
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU is visible to PyTorch")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
print(f"nccl available: {torch.distributed.is_nccl_available()}")
PYEOF

step "pytest -m cuda" 80 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py -rs

# the training run: MNIST for a minute when the data are there, else the bundled digits
if [ -n "${VAELAB_DATA:-}" ] && [ -f "$VAELAB_DATA/mnist/train-images-idx3-ubyte.gz" ]; then
  TRAIN=(configs/vae_mnist.toml --set train.epochs=3 --set train.time_limit_min=1 --set train.eval_every=0
         --set eval.max_examples=2000 --set eval.is_samples=1000)
else
  TRAIN=(configs/smoke_vae_digits.toml --set train.epochs=40 --set data.limit=0 --set eval.is_samples=1000)
fi
step "train on cuda: ${TRAIN[0]}" 60 "$PY" -m vaelab.cli train "${TRAIN[@]}" --device cuda --out "$OUT/train" \
  --quiet --no-eval
timeout 10 "$PY" - "$OUT/train" <<'PYEOF' || true
import json, sys
run = sys.argv[1]
cfg = json.load(open(f"{run}/config.json"))
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
last = [r for r in rows if r.get("split") == "train"][-1]
images = last["step"] * cfg["train"]["batch_size"]
print(f"throughput train (cuda): {images / last['time']:,.0f} images/s "
      f"({last['step']} steps of {cfg['train']['batch_size']} in {last['time']:.1f} s, validation included)")
PYEOF

step "vaelab eval on cuda (IS)" 60 "$PY" -m vaelab.cli eval "$OUT/train" --device cuda
timeout 10 "$PY" - "$OUT/train" <<'PYEOF' || true
import json, sys
ev = json.load(open(f"{sys.argv[1]}/eval.json"))
n, k, s = ev["n_examples"], ev["is_samples"], ev["seconds"]
print(f"throughput IS evaluation (cuda): {n / s:,.1f} images/s at K={k} ({n * k / s:,.0f} importance samples/s; "
      "the test ELBO and active units included)")
PYEOF

step "torchrun, nccl, world size 1" 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
  -m vaelab.cli train configs/smoke_vae_digits.toml --device cuda --out "$OUT/torchrun" --quiet --no-eval

step "bf16 autocast" 45 "$PY" benchmarks/gpu_autocast.py --device cuda

# the trainer's own bf16 path (train.precision = "bf16") on the same data as step 3, for 20 seconds
step "train on cuda, train.precision=bf16" 25 "$PY" -m vaelab.cli train "${TRAIN[@]}" --device cuda \
  --out "$OUT/train_bf16" --quiet --no-eval --set train.precision=bf16 --set train.time_limit_min=0.33
timeout 10 "$PY" - "$OUT/train_bf16" <<'PYEOF' || true
import json, sys
run = sys.argv[1]
cfg = json.load(open(f"{run}/config.json"))
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
last = [r for r in rows if r.get("split") == "train"][-1]
print(f"throughput train, bf16 (cuda): {last['step'] * cfg['train']['batch_size'] / last['time']:,.0f} images/s; "
      f"last training loss {last['loss']:.2f}")
PYEOF

echo
echo "== summary ($SECONDS s in all; log $LOG)"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED

#!/usr/bin/env bash
# The GPU check: synth → convert → train constant, efficiency and performance on one CUDA GPU
# (about 50 s of training each, autocast, nnU-Net's augmentation on the device), printing
# after each run, per stage: step time, data-wait share, augmentation share, peak GPU
# memory (timings, shares and memory only: no claim verdicts from runs this short). Meant
# for a machine with one NVIDIA H100/H200, Python 3.12 with PyTorch, and no internet: our
# other dependencies come as wheels in .whl/ (tools/make_wheels.sh). The whole script runs
# under its own hard timeout of 5 minutes (TOTAL_TIMEOUT). Results under
# ${OUT:-/tmp/gpu_check}. See tools/GPU.md.
#
#   bash tools/gpu_check.sh             # the check (exit 2 at once without CUDA)
#   bash tools/gpu_check.sh --dry-run   # print the plan, check imports and CUDA, run nothing
#
# Knobs (environment): PYTHON (python3), CASES (12), SIZE ("64 128 128"), ITERS (40
# iterations per epoch, one epoch per stage), MAX_SECONDS (50, per run), RUN_TIMEOUT (70 s
# per run, hard), TOTAL_TIMEOUT (300 s, the whole script, hard), WORKERS (12 loader
# workers), BATCH (2), DEVICE (cuda; "cpu" only to try the script itself on a small
# CASES/SIZE/ITERS).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg (use --dry-run or --help)" >&2; exit 2 ;;
  esac
done

# The whole check under one hard timeout: it re-runs itself under timeout(1) once
TOTAL_TIMEOUT=${TOTAL_TIMEOUT:-300}
if [ "$DRY" = 0 ] && [ -z "${PGPS_GPU_CHECK_TIMED:-}" ]; then
  export PGPS_GPU_CHECK_TIMED=1
  exec timeout --kill-after=10 "$TOTAL_TIMEOUT" bash "${BASH_SOURCE[0]}" "$@"
fi

PY=${PYTHON:-python3}
RESULTS=${OUT:-/tmp/gpu_check}
CASES=${CASES:-12}
SIZE=${SIZE:-64 128 128}
ITERS=${ITERS:-40}
MAX_SECONDS=${MAX_SECONDS:-50}
RUN_TIMEOUT=${RUN_TIMEOUT:-70}
WORKERS=${WORKERS:-12}
BATCH=${BATCH:-2}
DEVICE=${DEVICE:-cuda}
MODES=(constant efficiency performance)

command -v "$PY" >/dev/null || { echo "gpu_check: $PY not found (set PYTHON=...)" >&2; exit 2; }

# -- CUDA first (needs only the preinstalled torch): without it, one clear line and exit 2
#    before anything is installed or written (dry run: say so, exit 0) ------------------
cuda_line=$("$PY" - <<'EOF'
import torch
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"cuda ok: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")
else:
    print(f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False); "
          "this check needs one NVIDIA GPU")
EOF
)
if [[ "$cuda_line" != "cuda ok"* ]] && [ "$DRY" = 0 ] && [ "$DEVICE" = cuda ]; then
  echo "gpu_check: $cuda_line" >&2
  exit 2
fi

# -- dependencies: the carried wheels, if any, go to /tmp/site ------------------------------
if compgen -G ".whl/*.whl" >/dev/null; then
  if [ "$DRY" = 1 ]; then
    echo "would install: $(find .whl -name '*.whl' | wc -l) wheels from .whl/ into /tmp/site"
  else
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
  fi
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}"
case ":$PYTHONPATH:" in *":$PWD:"*) ;; *) export PYTHONPATH="$PYTHONPATH:$PWD" ;; esac

RAW="$RESULTS/raw/Task01_GPUCheck"
STORE="$RESULTS/gpu_check.zarr"
synth=("$PY" -m pgps_data.cli.synth "$RAW" --cases "$CASES" --test-cases 0 --size $SIZE --seed 0)
convert=("$PY" -m pgps_data.cli.convert "$RAW" "$STORE" --workers 8 --quiet)
train_cmd() {  # mode → the pgps-train command line
  echo "$PY -m pgps_train.cli.train $STORE --out $RESULTS/runs/$1 --mode $1 --device $DEVICE" \
       "--epochs 0 --iterations-per-epoch $ITERS --batch $BATCH --workers $WORKERS" \
       "--eval-every 1000000000 --save-every 1000000000 --fold 0 --no-final-eval" \
       "--max-seconds $MAX_SECONDS --quiet"
}

if [ "$DRY" = 1 ]; then
  echo "gpu_check dry run: results would go to $RESULTS"
  echo "  ${synth[*]}"
  echo "  ${convert[*]}"
  for mode in "${MODES[@]}"; do echo "  timeout $RUN_TIMEOUT $(train_cmd "$mode")"; done
  "$PY" -c "import pgps_data, pgps_train.trainer, monai, zarr, torchdata, nibabel, dask, distributed" \
    && echo "imports ok"
  echo "$cuda_line"
  exit 0
fi

# -- the check ------------------------------------------------------------------------------
mkdir -p "$RESULTS"
exec > >(tee "$RESULTS/gpu_check.log") 2>&1
T0=$SECONDS
echo "$cuda_line"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

rm -rf "$RESULTS/raw" "$STORE" "$RESULTS/runs" "$RESULTS/results.json"
"${synth[@]}" >/dev/null
echo "synth: $CASES cases of $SIZE in $((SECONDS - T0)) s"
t=$SECONDS
"${convert[@]}"
echo "convert: $((SECONDS - t)) s"

report_mode() {  # mode → its per-stage table, printed now and merged into results.json
  "$PY" - "$RESULTS" "$1" <<'EOF'
import json, sys
from pathlib import Path

root, mode = Path(sys.argv[1]), sys.argv[2]
path, results = root / "runs" / mode / "summary.json", root / "results.json"
if not path.exists():
    print(f"{mode}: no summary.json")
    raise SystemExit(0)
s = json.loads(path.read_text())
ran = s.get("stopped_at_step", s["iterations"])
print(f"{mode}: {ran}/{s['iterations']} iterations, {s['seconds_wall']:.0f} s wall, "
      f"compute {s['seconds_compute']:.0f} s, data wait {100 * s['wait_share']:.1f} %"
      + (" (stopped by --max-seconds)" if "stopped_at_step" in s else ""))
print(f"  {'stage':>5} {'patch':>14} {'batch':>6} {'steps':>6} {'ms/step':>8} "
      f"{'wait %':>7} {'augment %':>10} {'peak GiB':>9}")
for st in s["stages"]:
    peak = st.get("peak_memory_bytes")
    print(f"  {st['stage']:>5} {'x'.join(map(str, st['patch'])):>14} {st['batch']:>6} "
          f"{st['steps']:>6} {1000 * st['seconds_per_step']:>8.1f} "
          f"{100 * st['wait_share']:>7.1f} {100 * st.get('augment_share', 0.0):>10.1f} "
          f"{'-' if peak is None else f'{peak / 2**30:.2f}':>9}", flush=True)
report = json.loads(results.read_text()) if results.exists() else {}
report[mode] = s
results.write_text(json.dumps(report, indent=1))
EOF
}

status=0
for mode in "${MODES[@]}"; do
  t=$SECONDS
  # shellcheck disable=SC2046
  if ! timeout "$RUN_TIMEOUT" $(train_cmd "$mode") >"$RESULTS/$mode.log" 2>&1; then
    echo "train $mode: FAILED after $((SECONDS - t)) s (tail of $RESULTS/$mode.log):"
    tail -n 20 "$RESULTS/$mode.log"
    status=1
    continue
  fi
  echo "train $mode: $((SECONDS - t)) s"
  report_mode "$mode"
done
echo "results: $RESULTS/results.json"
echo "gpu_check: total $((SECONDS - T0)) s"
exit $status

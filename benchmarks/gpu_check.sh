#!/usr/bin/env bash
# The GPU check in one command, on a CUDA machine whose Python already has torch (nothing is installed):
#
#     bash benchmarks/gpu_check.sh              # ~6 minutes: train, export, eval, one-screen report
#     BUDGET=240 PYTHON=python3 bash benchmarks/gpu_check.sh
#     bash benchmarks/gpu_check.sh --dry-run    # the same steps on the CPU with the tiny preset (seconds)
#
# What it does: `sgpt train --preset gpu --compile` (nanoGPT's shakespeare_char model; on CUDA the
# trainer uses bf16 autocast, TF32 and fused AdamW by itself) for a fixed --time-budget (BUDGET seconds,
# default 300, compile time, final whole-split val loss and checkpoint included); then `sgpt export`
# (ONNX, verified against PyTorch, val loss measured on the exported file) and `sgpt eval` on the GPU
# (ONNX Runtime's CUDA provider when it works, else the CPU). The report: GPU, iterations,
# tokens/s, the time to the first val estimate <= TARGET (1.47, nanoGPT's published figure), the
# whole-split val loss, the export and the total time. Files go to OUT (default gpu_check/).
# The text: DATA (default data/tinyshakespeare.txt, downloaded by sgpt when missing).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BUDGET=${BUDGET:-300}
TARGET=${TARGET:-1.47}
OUT=${OUT:-gpu_check}
DATA=${DATA:-data/tinyshakespeare.txt}
PRESET=(--preset gpu --compile --device cuda --eval-interval 100 --eval-iters 50)
if [[ "${1:-}" == "--dry-run" ]]; then
    BUDGET=${BUDGET_DRY:-20}; TARGET=${TARGET_DRY:-3.0}; OUT=${OUT}_dry
    PRESET=(--preset tiny --device cpu --eval-interval 20 --eval-iters 4 --max-iters 1000000)
elif ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: $PY has no torch with a CUDA GPU; run it on a CUDA machine (or --dry-run here)" >&2
    exit 2
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
start=$(date +%s)
echo "== training: ${PRESET[*]} --time-budget $BUDGET" >&2
"$PY" -m sgpt_cli train "${PRESET[@]}" --data "$DATA" --time-budget "$BUDGET" --sample-chars 0 \
    --out "$OUT/model.pt" --force > "$OUT/train.log" 2>&1 || { tail -5 "$OUT/train.log" >&2; exit 1; }
trained=$(date +%s)
echo "== export" >&2
"$PY" -m sgpt_cli export "$OUT/model.pt" --out "$OUT/model.onnx" --data "$DATA" > "$OUT/export.log" 2>&1 \
    || { tail -5 "$OUT/export.log" >&2; exit 1; }
exported=$(date +%s)
echo "== eval" >&2
"$PY" -m sgpt_cli eval --model "$OUT/model.onnx" --data "$DATA" --split val --device auto --json \
    > "$OUT/eval.json" 2> "$OUT/eval.log" || { tail -5 "$OUT/eval.log" >&2; exit 1; }
done_at=$(date +%s)

"$PY" - "$OUT" "$TARGET" "$((trained - start))" "$((exported - trained))" "$((done_at - start))" <<'EOF'
import json, sys
from pathlib import Path

import torch

out, target = Path(sys.argv[1]), float(sys.argv[2])
train_s, export_s, total_s = (int(x) for x in sys.argv[3:6])
rows = [json.loads(line) for line in (out / "model.metrics.jsonl").read_text().splitlines() if line.strip()]
best = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
last = torch.load(out / "model.last.pt", map_location="cpu", weights_only=True)
cfg = best["train_config"]
reached = next((r for r in rows if r["val_loss"] <= target), None)
speeds = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
ev = json.loads((out / "eval.json").read_text())
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (dry run)"
export_line = next((line for line in (out / "export.log").read_text().splitlines() if line.startswith("val loss")), "")
print(f"""
sgpt GPU check  ({gpu}; torch {torch.__version__})
  run        preset {cfg['preset']}: {cfg['n_layer']}x{cfg['n_embd']}, context {cfg['block_size']}, batch {cfg['batch_size']},
             {cfg['optimizer']}, compile {cfg['compile']}, budget {cfg['time_budget']:g} s
  trained    {last['iter']} iterations in {last['train_seconds']:.0f} s ({train_s} s wall with start-up)
  speed      {(sorted(speeds)[len(speeds) // 2] if speeds else float('nan')):,.0f} tokens/s (median of the evaluations' recent steps)
  val <= {target}  {f"at iteration {reached['iter']}, {reached['elapsed']:.0f} s (estimate {reached['val_loss']:.4f})" if reached else "not reached in the budget"}
  val loss   {best['val_loss']:.4f} ({best.get('val_loss_kind', 'estimate')}, checkpoint of iteration {best['iter']})
  export     {out / 'model.onnx'}, {export_s} s; {export_line.split('  ', 1)[-1].strip() if export_line else 'no val line'}
  eval       {ev['loss']:.4f} nats/char on {ev['chars_scored']:,} characters, ONNX Runtime on {ev['device']}
  total      {total_s} s (target: under 8 minutes)
""")
EOF

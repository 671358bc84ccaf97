#!/usr/bin/env bash
# The whole job, offline, on an embedded tiny random PLaMo 3 checkpoint and the bundled glaive
# samples: tiny -> convert -> data -> train (checkpoint evals) -> eval x3 -> export ->
# check-torch -> report. Every command is printed before it runs so you can repeat it by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
CLI="$PY -m commands"
export MLX_PLAMO_HOME=${MLX_PLAMO_HOME:-artifacts/demo}
export HF_HUB_OFFLINE=1
W=$MLX_PLAMO_HOME
started=$(date +%s)

# MLX's Linux CPU wheel ships the netlib reference BLAS (~5 GFLOP/s). Where the system has
# OpenBLAS (Debian/Ubuntu: apt install libopenblas0-pthread), it is preloaded for the demo's
# matrix products: same results to float32 rounding, the whole demo about twice as fast.
# Apple silicon runs MLX on Metal and never takes this branch.
if [[ "$(uname -s)" == Linux && -z "${LD_PRELOAD:-}" ]]; then
  for blas in /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 /usr/lib64/libopenblas.so.0; do
    if [[ -e "$blas" ]]; then
      export LD_PRELOAD=$blas
      echo "MLX's CPU matrix products use OpenBLAS: LD_PRELOAD=$blas"
      break
    fi
  done
fi

banner() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[36m$ %s\033[0m\n' "$*"; "$@"; }

cat <<'NOTE'
What this demo is: every stage run on a TINY RANDOM PLaMo 3 (4 layers, 64 wide, a 999-piece
vocabulary, never pretrained) so that it finishes in minutes on a laptop CPU with no network.
What its numbers can show: that each stage works and what it writes; that the PyTorch check
agrees with MLX question by question (a real port check, whatever the model says); and that
the LoRA picks up the call's opening ({"name": "...) within its few steps.
What they cannot show: tool-calling skill. A random base cannot copy an unseen tool's name or
close its JSON, so the rates stay near 0% for every condition. That the trainer teaches the
format on unseen prompts is tested separately (tests/test_learning.py: 0% -> 88% parseable
calls in 12 steps on short two-tool prompts); the real model's numbers come from running the
same commands on pfnet/plamo-3-nict-2b-base (README, Quickstart).
NOTE

banner "1. a tiny PLaMo 3 checkpoint in Hugging Face layout"
run $CLI tiny "$W/tiny-hf" --seed 0 --force

banner "2. convert it to MLX"
run $PY -m convert --hf-path "$W/tiny-hf" --mlx-path "$W/models/tiny" --dtype float32 --force

banner "3. build the v2 data from the bundled glaive samples (leakage-checked, audited)"
run $CLI data build --recipe v2 \
  --source data/samples/llamafactory_glaive_toolcall_en_demo.json \
  --source data/samples/glaive-function-calling-v2.sample.jsonl \
  --out "$W/data/v2" --force

banner "4. train the LoRA (the study's recipe with a tiny model's learning rate and 3 epochs; checkpoint evals on part of the frozen eval)"
run $CLI train --data "$W/data/v2" --model "$W/models/tiny" --adapter-path "$W/adapters/demo" \
  --run-name demo --dtype float32 --checkpoint-every 11 --eval-limit 13 \
  --eval-max-new-tokens 48 --learning-rate 5e-3 --epochs 3 --overwrite

banner "5. evaluate: base zero-shot, base 2-shot, and with the LoRA"
for condition in base base-fewshot; do
  run $CLI eval --condition "$condition" --model "$W/models/tiny" --data "$W/data/v2" \
    --out "$W/results/$condition.json" --force
done
run $CLI eval --condition lora --adapter "$W/adapters/demo" --model "$W/models/tiny" \
  --data "$W/data/v2" --out "$W/results/lora.json" --force
run $CLI eval --compare "$W/results/base.json" "$W/results/lora.json"

banner "5b. tools never trained on: 10 BFCL v4 questions per category, base and LoRA"
run $CLI eval --suite bfcl --per-category 10 --condition base --model "$W/models/tiny" \
  --data "$W/data/v2" --out "$W/results/bfcl-base.json" --force
run $CLI eval --suite bfcl --per-category 10 --condition lora --adapter "$W/adapters/demo" \
  --model "$W/models/tiny" --data "$W/data/v2" --out "$W/results/bfcl-lora.json" --force

banner "6. export the adapter to PEFT (with model card and eval records)"
run $CLI export --adapter "$W/adapters/demo" --out "$W/adapters/demo-peft" \
  --results "$W/results/base.json" --results "$W/results/base-fewshot.json" \
  --results "$W/results/lora.json" --results "$W/results/bfcl-base.json" \
  --results "$W/results/bfcl-lora.json" --force

banner "7. the PyTorch check: same 52 prompts through transformers + peft"
run $CLI check-torch --base "$W/tiny-hf" --adapter "$W/adapters/demo-peft" \
  --results "$W/results/lora.json" --data "$W/data/v2" --out "$W/checks/lora.torch-check.json"

banner "8. the report"
run $CLI report --results "$W/results" --out "$W/report"

banner "done in $(( $(date +%s) - started ))s"
cat <<EOF
Open $W/report/index.html in a browser.
MLflow runs: .venv/bin/mlflow ui --backend-store-uri sqlite:///$W/mlflow.db

With the real model on Apple silicon (network needed for the first two steps):
  python -m convert --hf-path pfnet/plamo-3-nict-2b-base \\
      --mlx-path artifacts/models/plamo-3-nict-2b-base
  mlx-plamo data build --recipe v2
  mlx-plamo train --data v2
  mlx-plamo eval --condition base && mlx-plamo eval --condition base-fewshot
  mlx-plamo eval --condition lora --adapter artifacts/adapters/plamo3-v2-r16
  mlx-plamo export --adapter artifacts/adapters/plamo3-v2-r16
  mlx-plamo check-torch --base pfnet/plamo-3-nict-2b-base \\
      --adapter artifacts/adapters/plamo3-v2-r16-peft --results artifacts/results/lora.json
  mlx-plamo report
EOF

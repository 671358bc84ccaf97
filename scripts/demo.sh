#!/usr/bin/env bash
# The whole job, offline, on an embedded tiny PLaMo 3 checkpoint and the bundled glaive
# samples: tiny -> data -> pretrain the tiny base -> convert -> train (checkpoint evals) ->
# eval x3 -> export -> check-torch -> report. Every command is printed before it runs so you can
# repeat it by hand.
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
# Apple silicon runs MLX on Metal and never takes this branch. PyTorch brings its own BLAS:
# the preload would take over its matrix products too, twice as slow, so the PyTorch stages
# run without it ($NO_PRELOAD).
NO_PRELOAD=
if [[ "$(uname -s)" == Linux && -z "${LD_PRELOAD:-}" ]]; then
  for blas in /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 /usr/lib64/libopenblas.so.0; do
    if [[ -e "$blas" ]]; then
      export LD_PRELOAD=$blas
      NO_PRELOAD="env -u LD_PRELOAD"
      echo "MLX's CPU matrix products use OpenBLAS: LD_PRELOAD=$blas"
      break
    fi
  done
fi

banner() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[36m$ %s\033[0m\n' "$*"; "$@"; }

cat <<'NOTE'
What this demo is: every stage run on a TINY PLaMo 3 made here (4 layers, 64 wide, a vocabulary
of the built-in pieces plus the bundled conversations' 1,500 most frequent words) so that it
finishes in minutes on a laptop CPU with no network. Step 3 pretrains that base for about four
minutes in PyTorch: first to copy (random repeated rows), then on the bundled conversations'
tool calls, with tools renamed and parameters dropped at random and each call wrapped as
{"function_call": {...}}, a shape the study's parse does not count as a call. So the base can
read a tool's name and parameters from the prompt, and scores 0% in the study's format.
What its numbers can show: that the LoRA, trained on v2 as the study trains it, teaches the
study's bare call object and the end of the turn, on eval questions and tools it never saw
(neither the pretraining nor v2 holds an eval question; both are checked). On the project's
2-core Linux VM, parse rises from 0% to 72.5% and func-name to 70% (29 and 28 of 40), and the
checkpoint evals from 0% at step 4 to 90% at step 22. Also: that the PyTorch
check agrees with MLX question by question, and what each stage writes.
What they cannot show: the real model's skill. A 64-wide model copies names imperfectly and
invents arguments; the argument-exact rate mostly counts empty calls. The v2 training calls all
have arguments, and the eval's tools (made from the gold call) mostly have none, so what the
base learned about empty calls in step 3 is what carries them. The real numbers come from the
same commands on pfnet/plamo-3-nict-2b-base (README, Quickstart).
NOTE

banner "1. a tiny PLaMo 3 checkpoint in Hugging Face layout, its vocabulary from the bundled conversations"
run $CLI tiny "$W/tiny-hf" --seed 0 --vocab-corpus data/samples/llamafactory_glaive_toolcall_en_demo.json --force

banner "2. build the v2 data from the bundled glaive samples (leakage-checked, audited)"
run $CLI data build --recipe v2 \
  --source data/samples/llamafactory_glaive_toolcall_en_demo.json \
  --source data/samples/glaive-function-calling-v2.sample.jsonl \
  --out "$W/data/v2" --force

banner "3. pretrain the tiny base (PyTorch): copying, then the bundled conversations without the eval's questions"
run $NO_PRELOAD $PY -m scripts.pretrain_tiny --model "$W/tiny-hf" --data "$W/data/v2" \
  --source data/samples/llamafactory_glaive_toolcall_en_demo.json --out "$W/tiny-base" --force

banner "4. convert it to MLX"
run $PY -m convert --hf-path "$W/tiny-base" --mlx-path "$W/models/tiny" --dtype float32 --force

banner "5. train the LoRA on v2 (the study's recipe with a tiny model's learning rate and 2 epochs; checkpoint evals on part of the frozen eval)"
run $CLI train --data "$W/data/v2" --model "$W/models/tiny" --adapter-path "$W/adapters/demo" \
  --run-name demo --dtype float32 --checkpoint-every 4 --eval-limit 13 \
  --eval-max-new-tokens 48 --learning-rate 2e-3 --epochs 2 --overwrite

banner "6. evaluate: base zero-shot, base 2-shot, and with the LoRA"
for condition in base base-fewshot; do
  run $CLI eval --condition "$condition" --model "$W/models/tiny" --data "$W/data/v2" \
    --out "$W/results/$condition.json" --force
done
run $CLI eval --condition lora --adapter "$W/adapters/demo" --model "$W/models/tiny" \
  --data "$W/data/v2" --out "$W/results/lora.json" --force
run $CLI eval --compare "$W/results/base.json" "$W/results/lora.json"

banner "6b. tools never trained on: 10 BFCL v4 questions per category, base and LoRA"
run $CLI eval --suite bfcl --per-category 10 --condition base --model "$W/models/tiny" \
  --data "$W/data/v2" --out "$W/results/bfcl-base.json" --force
run $CLI eval --suite bfcl --per-category 10 --condition lora --adapter "$W/adapters/demo" \
  --model "$W/models/tiny" --data "$W/data/v2" --out "$W/results/bfcl-lora.json" --force

banner "7. export the adapter to PEFT (with model card and eval records)"
run $CLI export --adapter "$W/adapters/demo" --out "$W/adapters/demo-peft" \
  --results "$W/results/base.json" --results "$W/results/base-fewshot.json" \
  --results "$W/results/lora.json" --results "$W/results/bfcl-base.json" \
  --results "$W/results/bfcl-lora.json" --force

banner "8. the PyTorch check: same 52 prompts through transformers + peft"
run $NO_PRELOAD $CLI check-torch --base "$W/tiny-base" --adapter "$W/adapters/demo-peft" \
  --results "$W/results/lora.json" --data "$W/data/v2" --out "$W/checks/lora.torch-check.json"

banner "9. the report"
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

#!/usr/bin/env bash
# How much the loop's outcome moves with the fine-tuning seed alone, on the pairs of one demo run.
#
#   bash benchmarks/loop_spread.sh DEMO_DIR [SEED ...]      (default seeds: 1 2; ~3-6 min per seed on 2 cores)
#
# DEMO_DIR is a finished `debias3d demo --out DEMO_DIR` run. For each seed, the script fine-tunes on
# DEMO_DIR/aug/pairs (+ DEMO_DIR/corpus replay) with the run's own fine-tune config and
# train.seed=SEED, then evaluates the adapter with the run's eval settings. The first seed's eval
# also runs the base model; later seeds reuse that sealed base run (`eval --resume`).
# `debias3d finetune` trains the same adapter as the demo from the same seed, so seed 0 reproduces
# the demo's own figures. Prints one line per seed: neglected-word and rest change (points, 95 % CI).
set -euo pipefail
DEMO=${1:?usage: loop_spread.sh DEMO_DIR [SEED ...]}
shift
SEEDS=${*:-1 2}
PY=${PY:-.venv/bin/python}
D3=${D3:-.venv/bin/debias3d}  # may be a command with arguments, e.g. "python -m debias3d"
export HF_HUB_OFFLINE=1
OUT=${OUT:-$DEMO/spread}
mkdir -p "$OUT"

# the demo's eval section as an eval config (report off: one summary.json per seed is enough)
"$PY" - "$DEMO/demo_config.yaml" "$OUT/eval.yaml" <<'EOF'
import sys

import yaml

with open(sys.argv[1], encoding="utf-8") as fh:
    ev = yaml.safe_load(fh)["eval"]
ev["report"] = False
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    yaml.safe_dump(ev, fh, sort_keys=False)
EOF

base=""
for seed in $SEEDS; do
  dir="$OUT/seed$seed"
  $D3 finetune --config "$DEMO/finetune/finetune_config.yaml" --out "$dir/ft" \
    "data.pairs=$DEMO/aug/pairs" "data.corpus=$DEMO/corpus" "train.seed=$seed" > "$dir.finetune.log" 2>&1
  mkdir -p "$dir/eval"
  [ -z "$base" ] || [ -d "$dir/eval/base" ] || cp -r "$base" "$dir/eval/base"
  $D3 eval --config "$OUT/eval.yaml" --adapter "$dir/ft" --out "$dir/eval" --resume > "$dir.eval.log" 2>&1
  base="$dir/eval/base"
  "$PY" - "$dir/eval/summary.json" "$seed" <<'EOF'
import json
import sys

t = json.load(open(sys.argv[1], encoding="utf-8"))["targets"]
n, r = t["neglected_gain_points"], t["rest_change_points"]
print(f"seed {sys.argv[2]}: neglected {n['value']:+.1f} [{n['ci'][0]:+.1f}, {n['ci'][1]:+.1f}]"
      f"  rest {r['value']:+.1f} [{r['ci'][0]:+.1f}, {r['ci'][1]:+.1f}]")
EOF
done

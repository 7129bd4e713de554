#!/usr/bin/env bash
# Evidence that meta-cli learns (docs/results.md): default hyperparameters, Omniglot minimal,
# 5-way 1-shot, meta-tested on 600 episodes; plus the README's sinusoid job.
# Run alone on the machine: the wall times are part of the result.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export META_CLI_DATA=${META_CLI_DATA:-$(cd .. && pwd)/shared/datasets}
out=${1:-outputs/learning-benchmark/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$out"
echo "machine: $(nproc) cores, torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')" | tee "$out/machine.txt"

run() {  # name, overrides...
  local name=$1; shift
  local start=$(date +%s)
  .venv/bin/meta-cli train "$@" train.progress=false hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1
  echo "$name: $(( $(date +%s) - start )) s wall in total" | tee -a "$out/machine.txt"
}
run protonet algorithm=protonet dataset=omniglot
run maml algorithm=maml dataset=omniglot
run sinusoid dataset=sinusoid

.venv/bin/python - "$out" <<'PY'
import csv, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| run | algorithm | backbone | ways | shots | episodes | accuracy ± ci95 | loss | training time (s) |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ("protonet", "maml", "sinusoid"):
    row = next(csv.DictReader(open(out / name / "accuracy.csv")))
    train = [r for r in csv.DictReader(open(out / name / "metrics.csv"))]
    acc = f"{100 * float(row['accuracy']):.2f} ± {100 * float(row['ci95']):.2f} %" if row["accuracy"] else "—"
    loss = f"{float(row['loss']):.4f}" + ("" if row["accuracy"] else f" ± {float(row['ci95']):.4f}")
    print(f"| {name} | {row['algorithm']} | {row['backbone']} | {row['ways'] or '—'} | {row['shots']} "
          f"| {row['episodes']} | {acc} | {loss} | {float(train[-1]['elapsed_s']):.0f} |")
PY

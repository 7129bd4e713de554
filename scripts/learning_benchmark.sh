#!/usr/bin/env bash
# Evidence that meta-cli learns (docs/results.md): default hyperparameters, Omniglot minimal,
# 5-way 1-shot, meta-tested on 600 episodes; plus the README's sinusoid job.
# Run alone on the machine: the wall times are part of the result.
#   bash scripts/learning_benchmark.sh [OUT [JOB ...]]   JOB: an algorithm name, or sinusoid
# (default: every classification algorithm, then sinusoid).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export META_CLI_DATA=${META_CLI_DATA:-$(cd .. && pwd)/shared/datasets}
out=${1:-outputs/learning-benchmark/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$out"
echo "machine: $(nproc) cores, torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')" | tee "$out/machine.txt"

run() {  # name, overrides...
  local name=$1; shift
  local start=$(date +%s)
  .venv/bin/meta-cli train "$@" train.progress=false hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1 || echo "$name: failed (see $out/$name.log)"
  echo "$name: $(( $(date +%s) - start )) s wall in total" | tee -a "$out/machine.txt"
}
shift $(( $# > 0 ? 1 : 0 ))
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(protonet maml fomaml metasgd anil reptile metaoptnet matchingnet siamese mann meta_lstm sinusoid)
for name in "${jobs[@]}"; do
  if [ "$name" = sinusoid ]; then run sinusoid dataset=sinusoid
  else
    # the presets of these are sized for one single-threaded process per core (conf/preset/)
    case $name in fomaml|metasgd|anil|reptile|mann|meta_lstm) procs=auto ;; *) procs=1 ;; esac
    run "$name" algorithm="$name" dataset=omniglot distributed.processes=$procs
  fi
done

.venv/bin/python - "$out" <<'PY'
import csv, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| run | algorithm | backbone | ways | shots | episodes | accuracy ± ci95 | loss | training time (s) |")
print("|---|---|---|---|---|---|---|---|---|")
for name in sorted(p.name for p in out.iterdir() if (p / "accuracy.csv").is_file()):
    row = next(csv.DictReader(open(out / name / "accuracy.csv")))
    train = [r for r in csv.DictReader(open(out / name / "metrics.csv"))]
    acc = f"{100 * float(row['accuracy']):.2f} ± {100 * float(row['ci95']):.2f} %" if row["accuracy"] else "—"
    loss = f"{float(row['loss']):.4f}" + ("" if row["accuracy"] else f" ± {float(row['ci95']):.4f}")
    print(f"| {name} | {row['algorithm']} | {row['backbone']} | {row['ways'] or '—'} | {row['shots']} "
          f"| {row['episodes']} | {acc} | {loss} | {float(train[-1]['elapsed_s']):.0f} |")
PY

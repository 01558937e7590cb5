#!/usr/bin/env bash
# The `make demo` pipeline on real data, label-free (the paper's unconditional setting): split
# pbmc3k with the shipped fixed 80/20 cell split, train the `cpu` preset on the training cells
# with no labels and no per-group tables (a tenth held back as its validation slice), generate
# as many cells as are held out, score them against the held-out cells beside the real-vs-real
# ceiling, the model's own priors alone (network off) and simple baselines, and measure the
# held-out masked likelihood (model, network off, lookup tables).
set -euo pipefail
LINGSHU=${LINGSHU:-lingshu}
OUT=${DEMO_DIR:-demo_output}
PRESET=${DEMO_PRESET:-cpu}
STEPS=${DEMO_TRAIN_STEPS:-}          # default: the preset's max_steps
SAMPLING_STEPS=${DEMO_SAMPLING_STEPS:-32}
MIN_CELLS=${DEMO_MIN_CELLS:-10}
SEED=${DEMO_SEED:-0}
LIKELIHOOD_LEVELS=${DEMO_LIKELIHOOD_LEVELS:-0.5}
mkdir -p "$OUT"
start=$(date +%s)

echo "== 1/5 split pbmc3k (fixed split: src/lingshu/splits/pbmc3k_cells.json)"
"$LINGSHU" data split pbmc3k --split pbmc3k_cells --out "$OUT/data"

echo "== 2/5 train the $PRESET preset label-free (genes detected in >= $MIN_CELLS training cells)"
rm -rf "$OUT/model"
"$LINGSHU" train "$OUT/data/train.h5ad" --preset "$PRESET" --min-cells "$MIN_CELLS" --seed "$SEED" \
  --val-fraction 0.1 ${STEPS:+--max-steps "$STEPS"} --out "$OUT/model"
trained=$(date +%s)

echo "== 3/5 generate as many cells as are held out ($SAMPLING_STEPS steps; a cell state drawn first), as many without"\
     "the state draw (plain unmasking) and as many from the priors alone"
n_held=$("$LINGSHU" data count "$OUT/data/held_out.h5ad")
"$LINGSHU" generate --checkpoint "$OUT/model" --n-cells "$n_held" --steps "$SAMPLING_STEPS" \
  --seed "$SEED" --out "$OUT/generated.h5ad"
"$LINGSHU" generate --checkpoint "$OUT/model" --n-cells "$n_held" --steps "$SAMPLING_STEPS" \
  --seed "$SEED" --network-off --out "$OUT/generated_network_off.h5ad"
"$LINGSHU" generate --checkpoint "$OUT/model" --n-cells "$n_held" --steps "$SAMPLING_STEPS" \
  --seed "$SEED" --plain-unmasking --out "$OUT/generated_plain_unmasking.h5ad"
generated=$(date +%s)

echo "== 4/5 evaluate against the held-out cells, beside the real ceiling, the priors alone and baselines"
"$LINGSHU" evaluate --real "$OUT/data/held_out.h5ad" \
  --generated "lingshu (${SAMPLING_STEPS} steps)=$OUT/generated.h5ad" \
  --generated "priors alone (network off)=$OUT/generated_network_off.h5ad" \
  --generated "lingshu, plain unmasking (no state prior)=$OUT/generated_plain_unmasking.h5ad" \
  --train "$OUT/data/train.h5ad" --checkpoint "$OUT/model" \
  --baselines independent_genes,independent_genes_by_group,celltype_poisson,celltype_negative_binomial,copy_training \
  --out "$OUT/report" --seed "$SEED"
evaluated=$(date +%s)

# t = 0.5 only, to stay within the demo's 15 minutes: add 0.1,0.9 for the whole table (~4 more min).
echo "== 5/5 held-out masked likelihood at t = $LIKELIHOOD_LEVELS: model, network off, per-gene / cell-type / type x depth tables"
"$LINGSHU" benchmark likelihood --checkpoint "$OUT/model" --cells "$OUT/data/held_out.h5ad" \
  --train "$OUT/data/train.h5ad" --levels "$LIKELIHOOD_LEVELS" --seed "$SEED" --out "$OUT/report/likelihood"
end=$(date +%s)

echo
echo "demo finished in $((end - start)) s (training $((trained - start)) s, generation $((generated - trained)) s,"\
     "evaluation $((evaluated - generated)) s, likelihood $((end - evaluated)) s); report: $OUT/report/report.md"

#!/usr/bin/env bash
# The `make demo` pipeline on real data: split pbmc3k with the shipped fixed 80/20 cell split,
# train the `small` preset on the training cells conditioned on their cell type and depth bin
# (library-size eighth within the type), generate as many cells as are held out (types and bins
# drawn in training proportions), and score them against the
# held-out cells beside the real-vs-real ceiling and simple baselines.
set -euo pipefail
LINGSHU=${LINGSHU:-lingshu}
OUT=${DEMO_DIR:-demo_output}
STEPS=${DEMO_TRAIN_STEPS:-}          # default: the small preset's max_steps
SAMPLING_STEPS=${DEMO_SAMPLING_STEPS:-16}
MIN_CELLS=${DEMO_MIN_CELLS:-10}
DEPTH_BINS=${DEMO_DEPTH_BINS:-8}
SEED=${DEMO_SEED:-0}
mkdir -p "$OUT"
start=$(date +%s)

echo "== 1/4 split pbmc3k (fixed split: src/lingshu/splits/pbmc3k_cells.json)"
"$LINGSHU" data split pbmc3k --split pbmc3k_cells --out "$OUT/data"

echo "== 2/4 train the small preset on cell types and $DEPTH_BINS depth bins (genes detected in >= $MIN_CELLS training cells)"
rm -rf "$OUT/model"
"$LINGSHU" train "$OUT/data/train.h5ad" --preset small --min-cells "$MIN_CELLS" --seed "$SEED" \
  --source-key cell_type --depth-bins "$DEPTH_BINS" \
  ${STEPS:+--max-steps "$STEPS"} --out "$OUT/model"
trained=$(date +%s)

echo "== 3/4 generate as many cells as are held out (training cell-type and depth proportions), $SAMPLING_STEPS steps"
n_held=$("$LINGSHU" data count "$OUT/data/held_out.h5ad")
"$LINGSHU" generate --checkpoint "$OUT/model" --n-cells "$n_held" --steps "$SAMPLING_STEPS" \
  --seed "$SEED" --out "$OUT/generated.h5ad"
generated=$(date +%s)

echo "== 4/4 evaluate against the held-out cells, beside the real ceiling and simple baselines"
"$LINGSHU" evaluate --real "$OUT/data/held_out.h5ad" --generated "$OUT/generated.h5ad" \
  --generated-name "lingshu (${SAMPLING_STEPS} steps)" --train "$OUT/data/train.h5ad" \
  --baselines independent_genes,celltype_poisson,celltype_negative_binomial,copy_training \
  --out "$OUT/report" --seed "$SEED"
end=$(date +%s)

echo
echo "demo finished in $((end - start)) s (training $((trained - start)) s, generation $((generated - trained)) s,"\
     "evaluation $((end - generated)) s); report: $OUT/report/report.md"

#!/usr/bin/env bash
# The README's demo table: zero-shot CLIP, CoOp, ProGrad, MaPLe, TCP, MPL and PromptKD on Digits with the tiny
# CLIP, seeds 1-3, base to new, on the CPU (42 runs, plus PromptKD's teacher: PromptSRC on tiny-digits-large, trained
# once by the first PromptKD script; see the README for the measured time).
#
#   bash scripts/demo_table.sh            # writes $OUTPUT/tables/base2new.{md,csv,tex,json}
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export DATA=${DATA:-./data} OUTPUT=${OUTPUT:-./output/demo} PYTHON
for seed in 1 2 3; do
    bash scripts/zsclip/base2new_test.sh digits "$seed"
    for method in coop prograd maple tcp mpl promptkd; do
        bash "scripts/$method/base2new_train.sh" digits "$seed"
        bash "scripts/$method/base2new_test.sh" digits "$seed"
    done
done
"$PYTHON" -m tools.results "$OUTPUT" --protocol base2new --datasets digits --methods ZeroshotCLIP CoOp ProGrad MaPLe TCP MPL PromptKD

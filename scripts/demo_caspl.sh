#!/usr/bin/env bash
# CasPL's offline demo: MPL vs MPL + CasPL and PromptSRC vs PromptSRC + CasPL on Digits with the tiny CLIP
# ("tiny-digits", the student), base to new, seeds 1-3, on the CPU. The boosting prompts are distilled once (phase 1,
# seed 1, every Digits training image, labels unused) from the frozen, larger "tiny-digits-large" teacher; the
# zero-shot accuracies of the student and of the teacher are printed beside the table.
#
#   bash scripts/demo_caspl.sh            # writes $OUTPUT/tables/base2new.{md,csv,tex,json}
#
# Environment: DATA (default ./data), OUTPUT (default ./output/demo_caspl), JOBS (runs at a time; default: the
# number of cores; every run, phase 1 included, uses one thread: the tiny models gain nothing from more).
# Every run keeps its own log under $OUTPUT/logs/; a failed run stops
# the demo with its log's tail and a non-zero status. Runs that finished earlier are skipped by the protocol scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export DATA=${DATA:-./data} OUTPUT=${OUTPUT:-./output/demo_caspl} PYTHON
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 1)}
case "$JOBS" in ''|*[!0-9]*|0) echo "error: JOBS must be a positive number of runs at a time, not '$JOBS'" >&2; exit 2;; esac
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
LOGS="$OUTPUT/logs"
mkdir -p "$LOGS"
START=$SECONDS

"$PYTHON" -m datasets.prepare digits --root "$DATA"
echo "CasPL phase 1 (boosting prompts from tiny-digits-large) ..."
bash scripts/caspl/run.sh boost digits > "$LOGS/phase1.log" 2>&1 || { tail -n 30 "$LOGS/phase1.log" >&2; exit 1; }
BOOST=$(bash scripts/caspl/run.sh where base2new_train digits 1)
BOOST_EPOCH=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["epochs"])' "$BOOST/result.json")

# one job = one seed of one row: train on the base classes, then test on the new ones
jobs_list() {
    echo "zeroshot_student env OUTPUT=$OUTPUT/zeroshot/student bash scripts/zsclip/base2new_test.sh digits 1"
    echo "zeroshot_teacher env OUTPUT=$OUTPUT/zeroshot/teacher bash scripts/zsclip/base2new_test.sh digits 1 -- MODEL.BACKBONE.NAME tiny-digits-large"
    for part in base new; do  # the student with the boosting prompts alone, before any labelled training
        local out="$OUTPUT/zeroshot/boost/base2new/test_$part/digits/shots_16/CasPL/tiny_digits/seed1"
        echo "boost_$part [ -f $out/result.json ] || $PYTHON train.py --root $DATA --seed 1 --trainer CasPL --dataset-config-file configs/datasets/digits.yaml --config-file configs/trainers/CasPL/tiny_digits.yaml --output-dir $out --model-dir $BOOST --load-epoch $BOOST_EPOCH --eval-only DATASET.SUBSAMPLE_CLASSES $part"
    done
    for seed in 1 2 3; do
        for method in mpl promptsrc; do
            echo "${method}_seed$seed bash scripts/$method/base2new_train.sh digits $seed && bash scripts/$method/base2new_test.sh digits $seed"
            echo "${method}_caspl_seed$seed bash scripts/caspl/run.sh $method base2new_train digits $seed && bash scripts/caspl/run.sh $method base2new_test digits $seed"
        done
    done
}
run_job() {  # "NAME COMMAND": the command's output goes to its log; one line says how it ended
    local name=${1%% *} command=${1#* }
    if bash -c "$command" > "$LOGS/$name.log" 2>&1; then
        echo "  done: $name"
    else
        echo "  FAILED: $name (log: $LOGS/$name.log)" >&2; tail -n 30 "$LOGS/$name.log" >&2; return 255
    fi
}
export -f run_job; export LOGS
echo "Training and testing 12 runs, and 4 evaluations without labelled training, $JOBS at a time ..."
jobs_list | xargs -d '\n' -n 1 -P "$JOBS" bash -c 'run_job "$1"' run_job

digits_table() {  # TABLES_MD: the "Base-to-new: Digits" table of a tools.results markdown file, header included
    awk '/^## Base-to-new: Digits/ {f = 1; next} /^## / {f = 0} f && /^\|/' "$1"
}
table() {  # DIR LABEL METHOD: seed 1's row of METHOD under DIR (with the table's header), renamed to LABEL
    local dir=$1 label=$2 method=$3
    "$PYTHON" -m tools.results "$dir" --protocol base2new --datasets digits --methods "$method" --seeds 1 \
        --out "$dir/tables" --quiet > /dev/null
    digits_table "$dir/tables/base2new.md" | sed "s/^| $method |/| $label |/"
}
echo
echo "Base to new on Digits, 5-way accuracy within each half (tiny-digits is the student, tiny-digits-large the teacher):"
echo
table "$OUTPUT/zeroshot/teacher" "zero-shot teacher (tiny-digits-large)" ZeroshotCLIP
table "$OUTPUT/zeroshot/student" "zero-shot student (tiny-digits)" ZeroshotCLIP | tail -n +3
table "$OUTPUT/zeroshot/boost" "student + boosting prompts alone (phase 1, no labels)" CasPL | tail -n +3
"$PYTHON" -m tools.results "$OUTPUT" --protocol base2new --datasets digits --quiet \
    --methods MPL "MPL + CasPL" PromptSRC "PromptSRC + CasPL" > /dev/null
digits_table "$OUTPUT/tables/base2new.md" | tail -n +3 | sed 's/^| \([^|]*[^ ]\) |/| \1, seeds 1-3 |/'
echo
echo "Every table and the runs' per-seed values: $OUTPUT/tables/base2new.{md,csv,json} (python -m tools.results $OUTPUT --protocol base2new)"
echo "demo_caspl: $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s"

#!/usr/bin/env bash
# CasPL's two phases for any method:
#   bash scripts/caspl/run.sh boost DATASET                    phase 1: boosting prompts (seed 1, as the fork)
#   bash scripts/caspl/run.sh METHOD PROTOCOL ARGS... [-- KEY VALUE ...]
#                                                              phase 2: METHOD's protocol script (base2new_train,
#                                                              base2new_test, fewshot_train, ...) beside them
# Phase 1 runs first when its run is missing. Environment: DATA, OUTPUT (default ./output), BOOST_CFG (phase-1
# config name; default CasPL's base-to-new one, tiny_digits for digits), INDUCTIVE=1 (phase 1 on the base classes
# only; the fork's default is every class, transductive), BOOST_SEED (default 1), BOOST_OPTS (extra "KEY VALUE"
# pairs for phase 1, e.g. "KD.BACKBONE_NAME /path/to/teacher.pt").
# Phase 1 writes OUTPUT/caspl/boost/DATASET/CasPL/BOOST_CFG[_inductive]/seedBOOST_SEED; phase 2 writes the method's
# usual folders under OUTPUT/caspl/BOOST_CFG[_inductive]/, so a folder says which boosting run it used.
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
OUTPUT=${OUTPUT:-./output}
[ $# -ge 2 ] || { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
WHAT=$1; shift
if [ "$WHAT" = boost ]; then DATASET=$1; else DATASET=${2:-}; fi
if [ "$WHAT" != boost ] && [[ "$1" == xd_* || "$1" == dg_* ]]; then SOURCE_DATASET=${SOURCE:-imagenet}; else SOURCE_DATASET=$DATASET; fi
if [ "$SOURCE_DATASET" = digits ]; then DEFAULT_CFG=tiny_digits
elif [[ "$WHAT" != boost && ( "$1" == xd_* || "$1" == dg_* ) ]]; then DEFAULT_CFG=vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1
else DEFAULT_CFG=vit_b16_c2_ep20_batch4_8+8ctx_l12; fi
BOOST_CFG=${BOOST_CFG:-$DEFAULT_CFG}
TAG=$BOOST_CFG; SUB=all
if [ "${INDUCTIVE:-0}" = 1 ]; then TAG=${BOOST_CFG}_inductive; SUB=base; fi
SEED=${BOOST_SEED:-1}
BOOST_DIR="$OUTPUT/caspl/boost/$SOURCE_DATASET/CasPL/$TAG/seed$SEED"

if [ ! -f "$BOOST_DIR/result.json" ]; then
    echo "CasPL phase 1: boosting prompts for $SOURCE_DATASET into $BOOST_DIR"
    (cd "$ROOT_DIR" && "$PYTHON" -m datasets.prepare "$SOURCE_DATASET" --root "${DATA:-./data}" --check)
    (cd "$ROOT_DIR" && "$PYTHON" train.py --root "${DATA:-./data}" --seed "$SEED" --trainer CasPL \
        --dataset-config-file "configs/datasets/$SOURCE_DATASET.yaml" \
        --config-file "configs/trainers/CasPL/$BOOST_CFG.yaml" --output-dir "$BOOST_DIR" \
        DATASET.NUM_SHOTS -1 DATASET.SUBSAMPLE_CLASSES "$SUB" ${BOOST_OPTS:-})
    [ -f "$BOOST_DIR/result.json" ] || { echo "error: CasPL phase 1 in $BOOST_DIR ended without result.json" >&2; exit 1; }
fi
[ "$WHAT" = boost ] && exit 0

# phase 2: the boosting sizes and depth of the phase-1 run, then the method's own protocol script
KD=$("$PYTHON" -c 'import json, sys; b = json.load(open(sys.argv[1]))["caspl"]["boost"]; print(" ".join(f"KD.{k} {v}" for k, v in b.items()))' "$BOOST_DIR/result.json")
ARGS=(); EXTRA=()
while [ $# -gt 0 ]; do if [ "$1" = "--" ]; then shift; EXTRA=("$@"); break; fi; ARGS+=("$1"); shift; done
# shellcheck disable=SC2086
OUTPUT="$OUTPUT/caspl/$TAG" exec bash "$ROOT_DIR/scripts/method.sh" "$WHAT" "${ARGS[@]}" -- KD.BOOST_DIR "$BOOST_DIR" $KD "${EXTRA[@]}"

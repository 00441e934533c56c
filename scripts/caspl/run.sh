#!/usr/bin/env bash
# CasPL's two phases for any method:
#   bash scripts/caspl/run.sh METHOD PROTOCOL ARGS... [-- KEY VALUE ...]
#       phase 2: METHOD's protocol script beside the boosting prompts (base2new_train DATASET SEED, base2new_test,
#       xd_train [DATASET] SEED, xd_test DATASET SEED, dg_test DATASET SEED, fewshot_train DATASET SEED [SHOTS]);
#       the method's CasPL config is its default (VARIANT=caspl: its registration's caspl variant), else its usual one
#   bash scripts/caspl/run.sh boost DATASET [PROTOCOL]   phase 1 only (seed 1, as the fork)
#   bash scripts/caspl/run.sh where PROTOCOL ARGS...     print the phase-1 folder a phase-2 run would use
# A training protocol runs phase 1 first when its run is missing; the test protocols need it. Phase 1's config
# (BOOST_CFG): tiny_digits on digits; for xd_* and dg_* the 4+4 depth-1 one on the source dataset (SOURCE, default
# imagenet; xd_train's DATASET); ImageNet's batch-128 8+8 depth-12 one for its base-to-new and few-shot; else the
# batch-4 8+8 depth-12 one. Few-shot reuses the base-to-new phase-1 run, as the fork. Environment: DATA, OUTPUT
# (default ./output), BOOST_CFG, INDUCTIVE=1 (phase 1 on the base classes only; the fork's default is every class,
# transductive), BOOST_SEED (default 1), BOOST_OPTS (extra "KEY VALUE" pairs for phase 1, e.g. "KD.BACKBONE_NAME
# /path/to/teacher.pt"), CFG/CFG_B2N/... (phase-2 config names, as scripts/method.sh).
# Phase 1 writes OUTPUT/caspl/boost/DATASET/CasPL/BOOST_CFG[_inductive][_boostseedN]/seedN; phase 2 writes the
# method's usual folders under OUTPUT/caspl/BOOST_CFG[_inductive][_boostseedN]/, so a folder says which boosting
# run it used. Phase 2 gets the boosting sizes and depths of the phase-1 run (KD.* from its result.json); a
# different value (a "KD.* VALUE" pair after "--") stops phase 2 with one error naming both values.
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
OUTPUT=${OUTPUT:-./output}
usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
is_int() { [[ "${1:-}" =~ ^[0-9]+$ ]]; }

WHAT=$1; shift
if [ "$WHAT" = boost ]; then DATASET=$1; PROTOCOL=${2:-base2new_train}
elif [ "$WHAT" = where ]; then PROTOCOL=$1; shift; DATASET=${1:-}
else PROTOCOL=$1; DATASET=${2:-}; fi
case "$PROTOCOL" in
base2new_train|base2new_test|fewshot_train) SOURCE_DATASET=$DATASET ;;
xd_train)  # xd_train [DATASET] SEED: the dataset is the source
    if [ "$WHAT" = boost ] || ! is_int "$DATASET"; then SOURCE_DATASET=$DATASET; else SOURCE_DATASET=${SOURCE:-imagenet}; fi ;;
xd_test|dg_test)
    if [ "$WHAT" = boost ]; then SOURCE_DATASET=$DATASET; else SOURCE_DATASET=${SOURCE:-imagenet}; fi ;;
*) echo "error: unknown protocol '$PROTOCOL'; choose base2new_train, base2new_test, xd_train, xd_test, dg_test or fewshot_train" >&2; exit 2 ;;
esac
[ -n "$SOURCE_DATASET" ] || usage

if [ "$SOURCE_DATASET" = digits ]; then DEFAULT_CFG=tiny_digits
elif [[ "$PROTOCOL" == xd_* || "$PROTOCOL" == dg_* ]]; then DEFAULT_CFG=vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1
elif [ "$SOURCE_DATASET" = imagenet ]; then DEFAULT_CFG=vit_b16_c2_ep20_batch128_lr0025_8+8ctx_l12
else DEFAULT_CFG=vit_b16_c2_ep20_batch4_8+8ctx_l12; fi
BOOST_CFG=${BOOST_CFG:-$DEFAULT_CFG}
SEED=${BOOST_SEED:-1}
TAG=$BOOST_CFG; SUB=all
if [ "${INDUCTIVE:-0}" = 1 ]; then TAG=${TAG}_inductive; SUB=base; fi
if [ "$SEED" != 1 ]; then TAG=${TAG}_boostseed$SEED; fi
BOOST_DIR="$OUTPUT/caspl/boost/$SOURCE_DATASET/CasPL/$TAG/seed$SEED"
if [ "$WHAT" = where ]; then echo "$BOOST_DIR"; exit 0; fi

if [ ! -f "$BOOST_DIR/result.json" ]; then
    if [[ "$WHAT" != boost && "$PROTOCOL" == *_test ]]; then
        echo "error: no CasPL phase-1 run at $BOOST_DIR: $PROTOCOL evaluates a phase-2 run trained beside it; run the training protocol first" >&2
        exit 1
    fi
    echo "CasPL phase 1: boosting prompts for $SOURCE_DATASET into $BOOST_DIR"
    (cd "$ROOT_DIR" && "$PYTHON" -m datasets.prepare "$SOURCE_DATASET" --root "${DATA:-./data}" --check)
    # shellcheck disable=SC2086
    (cd "$ROOT_DIR" && "$PYTHON" train.py --root "${DATA:-./data}" --seed "$SEED" --trainer CasPL \
        --dataset-config-file "configs/datasets/$SOURCE_DATASET.yaml" \
        --config-file "configs/trainers/CasPL/$BOOST_CFG.yaml" --output-dir "$BOOST_DIR" \
        DATASET.NUM_SHOTS -1 DATASET.SUBSAMPLE_CLASSES "$SUB" ${BOOST_OPTS:-})
    [ -f "$BOOST_DIR/result.json" ] || { echo "error: CasPL phase 1 in $BOOST_DIR ended without result.json" >&2; exit 1; }
fi
[ "$WHAT" = boost ] && exit 0

# phase 2: the boosting sizes and depths of the phase-1 run, then the method's own protocol script with its CasPL
# configs (VARIANT=caspl); the caller's "KEY VALUE" pairs come last
KD=$("$PYTHON" -c 'import json, sys; b = json.load(open(sys.argv[1]))["caspl"]["boost"]; print(" ".join(f"KD.{k} {v}" for k, v in b.items()))' "$BOOST_DIR/result.json")
ARGS=(); EXTRA=()
while [ $# -gt 0 ]; do if [ "$1" = "--" ]; then shift; EXTRA=("$@"); break; fi; ARGS+=("$1"); shift; done
export VARIANT=caspl
if [[ "$PROTOCOL" == xd_test || "$PROTOCOL" == dg_test ]]; then export SOURCE=$SOURCE_DATASET; fi
# shellcheck disable=SC2086
OUTPUT="$OUTPUT/caspl/$TAG" exec bash "$ROOT_DIR/scripts/method.sh" "$WHAT" "${ARGS[@]}" -- KD.BOOST_DIR "$BOOST_DIR" $KD "${EXTRA[@]}"

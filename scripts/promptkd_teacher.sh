#!/usr/bin/env bash
# PromptKD's first phase, the teacher: PromptSRC on a larger CLIP, in PromptSRC's usual protocol folders.
#   bash scripts/promptkd_teacher.sh DATASET                 train the base-to-new teacher of DATASET (if missing)
#   bash scripts/promptkd_teacher.sh PROTOCOL ARGS...        what scripts/method.sh runs before every PromptKD protocol
#                                                            script (the earlier_run of PromptKD's registration): makes the teacher when
#                                                            missing, prints the options that point the student at it
# base2new_*: PromptSRC with TEACHER_CFG (default vit_l14_c2_ep20_batch8_4+4ctx: ViT-L/14, batch 8, lr 0.005; for
#   digits tiny_digits_large) on the labelled SHOTS-shot base classes, seed TEACHER_SEED (default 1), one teacher per
#   dataset for every student seed, in OUTPUT/base2new/train_base/DATASET/shots_SHOTS/PromptSRC/TEACHER_CFG/seedN.
# xd_train DATASET SEED / xd_test DATASET SEED: the teacher is PromptSRC with TEACHER_CFG_XD (default
#   vit_l14_c2_ep20_batch8_4+4ctx_cross_datasets) on ImageNet (all classes, SHOTS shots); the student is distilled on
#   DATASET's own training split (xd_train) and evaluated on its test set (xd_test, which reads that run).
# Environment: DATA, OUTPUT, SHOTS (default 16), PYTHON as the protocol scripts; TEACHER_DIR (a teacher run folder or
# checkpoint file to use as it is), TEACHER_BACKBONE (another CLIP for the teacher phase, e.g. a checkpoint path),
# TEACHER_OPTS (extra "KEY VALUE" pairs for the teacher run).
# The student trains on every image of its training classes (DATASET.NUM_SHOTS -1), labels unused.
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
OUTPUT=${OUTPUT:-./output}
SHOTS=${SHOTS:-16}
SEED=${TEACHER_SEED:-1}
[ $# -ge 1 ] || { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

if [ $# -eq 1 ]; then PROTOCOL=base2new_train; DATASET=$1; ALONE=1
else
    PROTOCOL=$1; shift; ALONE=0
    POS=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do POS+=("$1"); shift; done
    DATASET=${POS[0]:-}
fi
case "$PROTOCOL" in
base2new_train|base2new_test)
    KIND=base2new; SOURCE_DATASET=$DATASET
    if [ "$DATASET" = digits ]; then DEFAULT_CFG=tiny_digits_large; else DEFAULT_CFG=vit_l14_c2_ep20_batch8_4+4ctx; fi
    CFG_T=${TEACHER_CFG:-$DEFAULT_CFG}
    RUN="$OUTPUT/base2new/train_base/$DATASET/shots_$SHOTS/PromptSRC/$CFG_T/seed$SEED" ;;
xd_train|xd_test)
    if [ ${#POS[@]} -lt 2 ]; then
        echo "error: PromptKD's cross-dataset protocol distils on each target: give xd_train/xd_test DATASET SEED" >&2
        exit 2
    fi
    KIND=xd; SOURCE_DATASET=imagenet
    CFG_T=${TEACHER_CFG_XD:-vit_l14_c2_ep20_batch8_4+4ctx_cross_datasets}
    RUN="$OUTPUT/crossdataset/imagenet/PromptSRC/${CFG_T}_${SHOTS}shots/seed$SEED" ;;
*)
    echo "error: PromptKD has no $PROTOCOL protocol (the reference reports base-to-new and cross-dataset only)" >&2
    exit 2 ;;
esac
if [ -n "${TEACHER_DIR:-}" ]; then RUN=$TEACHER_DIR
elif [ ! -f "$RUN/result.json" ]; then
    if [[ "$PROTOCOL" == *_test ]]; then
        echo "error: no PromptKD teacher at $RUN; run the training script (which trains it) first" >&2
        exit 1
    fi
    echo "PromptKD teacher phase: PromptSRC ($CFG_T) on $SOURCE_DATASET into $RUN" >&2
    T_OPTS=(); [ -n "${TEACHER_BACKBONE:-}" ] && T_OPTS=(MODEL.BACKBONE.NAME "$TEACHER_BACKBONE")
    if [ "$KIND" = base2new ]; then T_ARGS=(base2new_train "$SOURCE_DATASET" "$SEED"); else T_ARGS=(xd_train "$SEED"); fi
    # shellcheck disable=SC2086
    CFG=$CFG_T SHOTS=$SHOTS OUTPUT=$OUTPUT bash "$ROOT_DIR/scripts/method.sh" PromptSRC "${T_ARGS[@]}" -- \
        "${T_OPTS[@]}" ${TEACHER_OPTS:-} >&2
    [ -f "$RUN/result.json" ] || { echo "error: the PromptKD teacher run in $RUN ended without result.json" >&2; exit 1; }
fi
[ "$ALONE" = 1 ] && exit 0

# what scripts/method.sh passes on to the student's protocol script
OPTS=(TRAINER.PROMPTKD.TEACHER_DIR "$RUN" DATASET.NUM_SHOTS -1)
[ -n "${TEACHER_BACKBONE:-}" ] && OPTS+=(TRAINER.PROMPTKD.TEACHER_NAME "$TEACHER_BACKBONE")
printf 'SETUP_OPTS=('; printf '%q ' "${OPTS[@]}"; printf ')\n'
if [ "$PROTOCOL" = xd_test ]; then printf 'export SOURCE=%q\n' "$DATASET"; fi

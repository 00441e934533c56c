#!/usr/bin/env bash
# PromptSRC, protocol fewshot_train: bash scripts/promptsrc/fewshot_train.sh DATASET SEED [SHOTS] [-- KEY VALUE ...]
# See scripts/protocol.sh for the environment variables (DATA, OUTPUT, CFG, SHOTS) and the output folders.
export TRAINER=PromptSRC CFG_B2N=${CFG_B2N:-vit_b16_c2_ep20_batch4_4+4ctx} CFG_XD=${CFG_XD:-vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets} CFG_FS=${CFG_FS:-vit_b16_c2_ep50_batch4_4+4ctx_few_shot} CFG_DIGITS=${CFG_DIGITS:-tiny_digits}
# The reference aggregates late epochs (GPA mean 45, std 5) on these datasets; "--" options given after
# the arguments come later and win.
GPA=()
case "${1:-}" in stanford_cars|oxford_flowers|fgvc_aircraft|dtd|eurosat)
    GPA=(TRAINER.PROMPTSRC.GPA_MEAN 45 TRAINER.PROMPTSRC.GPA_STD 5);;
esac
ARGS=(); EXTRA=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; EXTRA=("$@"); break; fi
    ARGS+=("$1"); shift
done
exec bash "$(dirname "$0")/../protocol.sh" fewshot_train "${ARGS[@]}" -- "${GPA[@]}" "${EXTRA[@]}"

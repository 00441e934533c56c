#!/usr/bin/env bash
# MaPLe, protocol fewshot_train: bash scripts/maple/fewshot_train.sh DATASET SEED [SHOTS] [-- KEY VALUE ...]
# See scripts/protocol.sh for the environment variables (DATA, OUTPUT, CFG, SHOTS) and the output folders.
export TRAINER=MaPLe CFG_B2N=${CFG_B2N:-vit_b16_c2_ep5_batch4_2ctx} CFG_XD=${CFG_XD:-vit_b16_c2_ep5_batch4_2ctx_cross_datasets} CFG_DIGITS=${CFG_DIGITS:-tiny_digits}
exec bash "$(dirname "$0")/../protocol.sh" fewshot_train "$@"

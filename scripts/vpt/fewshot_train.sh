#!/usr/bin/env bash
# VPT, protocol fewshot_train: bash scripts/vpt/fewshot_train.sh DATASET SEED [SHOTS] [-- KEY VALUE ...]
# See scripts/protocol.sh for the environment variables (DATA, OUTPUT, CFG, SHOTS) and the output folders.
export TRAINER=VPT CFG_B2N=${CFG_B2N:-vit_b16_c2_ep5_batch4_4} CFG_XD=${CFG_XD:-vit_b16_c2_ep5_batch4_4} CFG_DIGITS=${CFG_DIGITS:-tiny_digits}
exec bash "$(dirname "$0")/../protocol.sh" fewshot_train "$@"

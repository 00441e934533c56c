#!/usr/bin/env bash
# PromptSRC, protocol base2new_test: bash scripts/promptsrc/base2new_test.sh DATASET SEED [LOAD_EPOCH] [-- KEY VALUE ...]
# See scripts/protocol.sh for the environment variables (DATA, OUTPUT, CFG, SHOTS) and the output folders.
export TRAINER=PromptSRC CFG_B2N=${CFG_B2N:-vit_b16_c2_ep20_batch4_4+4ctx} CFG_XD=${CFG_XD:-vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets} CFG_FS=${CFG_FS:-vit_b16_c2_ep50_batch4_4+4ctx_few_shot} CFG_DIGITS=${CFG_DIGITS:-tiny_digits}
exec bash "$(dirname "$0")/../protocol.sh" base2new_test "$@"

#!/usr/bin/env bash
# IVLP, protocol xd_test: bash scripts/ivlp/xd_test.sh DATASET SEED [LOAD_EPOCH] [-- KEY VALUE ...]
# See scripts/protocol.sh for the environment variables (DATA, OUTPUT, CFG, SHOTS) and the output folders.
export TRAINER=IVLP CFG_B2N=${CFG_B2N:-vit_b16_c2_ep5_batch4_2+2ctx} CFG_XD=${CFG_XD:-vit_b16_c2_ep5_batch4_2+2ctx} CFG_DIGITS=${CFG_DIGITS:-tiny_digits}
exec bash "$(dirname "$0")/../protocol.sh" xd_test "$@"

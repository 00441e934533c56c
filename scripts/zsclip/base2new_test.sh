#!/usr/bin/env bash
# Zero-shot CLIP, protocol base2new_test: bash scripts/zsclip/base2new_test.sh DATASET [SEED] [PARTS] [-- KEY VALUE ...]
# Evaluates without training on the base and new classes of DATASET (PARTS: "base new", base, new or all).
# The configs are CoOp's (configs/trainers/CoOp/, as the reference's scripts/zsclip); TRAINER=ZeroshotCLIP2
# selects the template ensemble. See scripts/protocol.sh for DATA, OUTPUT, CFG, SHOTS and the output folders.
case "${TRAINER:-}" in ZeroshotCLIP2) ;; *) TRAINER=ZeroshotCLIP;; esac
export TRAINER CFG_DIR=${CFG_DIR:-CoOp} CFG_B2N=${CFG_B2N:-vit_b16} CFG_XD=${CFG_XD:-vit_b16} CFG_DIGITS=${CFG_DIGITS:-tiny_digits}
exec bash "$(dirname "$0")/../protocol.sh" zeroshot "$@"

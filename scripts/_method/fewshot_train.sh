#!/usr/bin/env bash
# bash scripts/<method>/fewshot_train.sh ... : scripts/method.sh with the method from this folder's name (every
# scripts/<method> folder links here) and the protocol from this file's name. See scripts/protocol.sh.
exec bash "$(dirname "$0")/../method.sh" "$(basename "$(dirname "$0")")" "$(basename "$0" .sh)" "$@"

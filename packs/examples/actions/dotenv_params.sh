#!/bin/sh
# examples.dotenv_params: sources the dotenv file named by ATTUNE_PARAMETERS_FILE.
set -a
. "$ATTUNE_PARAMETERS_FILE"
set +a
printf 'greeting=%s\n' "$greeting"
printf 'db=%s:%s\n' "$db__host" "$db__port"

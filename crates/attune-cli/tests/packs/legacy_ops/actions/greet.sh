#!/bin/bash
set -eo pipefail
for ((i = 0; i < ${ATTUNE_ACTION_TIMES:-1}; i++)); do
    echo "hello $ATTUNE_ACTION_NAME"
done
[[ -n "$ATTUNE_EXEC_ID" && "$ATTUNE_PACK_REF" == legacy_ops && "$ATTUNE_ACTION" == legacy_ops.greet ]]
echo "exec $ATTUNE_EXEC_ID in $(basename "$PWD") with $ATTUNE_PARAMETER_DELIVERY/$ATTUNE_PARAMETER_FORMAT"

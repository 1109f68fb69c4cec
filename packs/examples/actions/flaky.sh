#!/bin/sh
# examples.flaky: ATTUNE_ATTEMPT is 1 for the first attempt.
if [ "$ATTUNE_ATTEMPT" -le "${ATTUNE_PARAM_FAILURES:-1}" ]; then
  echo "attempt $ATTUNE_ATTEMPT fails on purpose" >&2
  exit 1
fi
echo "attempt $ATTUNE_ATTEMPT succeeded"

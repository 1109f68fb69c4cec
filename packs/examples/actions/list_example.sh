#!/bin/sh
# examples.list_example: prints COUNT items, one JSON object per line.
i=1
while [ "$i" -le "${ATTUNE_PARAM_COUNT:-3}" ]; do
  printf '{"id": %d, "name": "item-%d"}\n' "$i" "$i"
  i=$((i + 1))
done

#!/bin/sh
# examples.hosts: {"hosts": ["host-1", …]} with COUNT names.
n=${ATTUNE_PARAM_COUNT:-3}
i=1
sep=""
printf '{"hosts": ['
while [ "$i" -le "$n" ]; do
  printf '%s"host-%d"' "$sep" "$i"
  sep=", "
  i=$((i + 1))
done
printf ']}\n'

#!/bin/sh
# examples.shell_yaml: parameters arrive as ATTUNE_PARAM_* variables; prints YAML.
cat <<YAML
service: ${ATTUNE_PARAM_SERVICE:-attune}
status: ok
checks:
  - disk
  - memory
YAML

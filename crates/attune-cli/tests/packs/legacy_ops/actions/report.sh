#!/bin/bash
set -euo pipefail
echo "reading $ATTUNE_PARAMETER_FILE"
level="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["level"])' "$ATTUNE_PARAMETER_FILE")"
echo "{\"level\": \"$level\", \"ok\": true}"

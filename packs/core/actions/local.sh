#!/bin/sh
# core.local: runs its `cmd` parameter with sh -c.
exec /bin/sh -c "$ATTUNE_PARAM_CMD"

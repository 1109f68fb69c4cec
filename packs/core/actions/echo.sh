#!/bin/sh
# core.echo: prints its `message` parameter (delivered as ATTUNE_PARAM_MESSAGE).
printf '%s\n' "$ATTUNE_PARAM_MESSAGE"

#!/bin/sh
# examples.deploy: never runs twice at once for the same environment (see deploy.yaml).
echo "deploying ${ATTUNE_PARAM_VERSION:-1.0} to $ATTUNE_PARAM_ENVIRONMENT"
sleep "${ATTUNE_PARAM_SECONDS:-1}"
echo "deployed to $ATTUNE_PARAM_ENVIRONMENT"

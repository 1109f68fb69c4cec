#!/bin/sh
# examples.slow: starts a background child and sleeps far past the action's timeout.
sleep 300 &
echo "started background child $!"
sleep 300

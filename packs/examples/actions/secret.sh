#!/bin/sh
# examples.secret: parameters arrive as JSON on stdin. Printing the password is deliberate: the
# stored stdout shows it masked.
params=$(cat)
echo "logging in with $params"

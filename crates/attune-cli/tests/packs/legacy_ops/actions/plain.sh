#!/bin/bash
echo "not json at all"

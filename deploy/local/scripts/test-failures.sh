#!/usr/bin/env bash
# test-failures.sh LOG: prints what failed in a `go test` output: every
# "--- FAIL" line with the indented log lines that follow it, every panic
# with the 40 lines after it, and the package FAIL/ok summary lines.
# `make test` calls it when the tests fail, so the end of the output (all
# CI keeps) names the failing tests even when a package dumps server logs
# after them.
set -euo pipefail
log=${1:?usage: test-failures.sh LOG}
awk '
  /^[ \t]*--- FAIL/ { infail = 1; print; next }
  infail && /^[ \t]/ && !/^[ \t]*--- (PASS|SKIP)/ { if (++n[FILENAME] <= 400) print; next }
  { infail = 0 }
  /^panic: |^fatal error: |^WARNING: DATA RACE/ { left = 40 }
  left > 0 { print; left--; next }
  /^(FAIL|ok)[ \t]/ { print }
' "$log"

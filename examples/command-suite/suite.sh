#!/bin/sh
# A test suite in plain POSIX shell, for Tessera's generic command runner.
#
#   sh suite.sh list
#       prints the test ids, one a line
#   sh suite.sh run [--junit FILE] [--ids FILE] [ID...]
#       runs the named tests (those in FILE, then the arguments; all of them if none is named),
#       prints "PASS id", "FAIL id" or "SKIP id" for each, writes a JUnit report to FILE if
#       asked, and exits 1 if any test failed
#
# The flaky test keeps its state in the directory named by TESSERA_EXAMPLE_STATE_DIR: its first
# run in a fresh directory fails, every later run passes. Without the variable it passes.
set -u

SKIP=77

t_math__add() { echo "adding 2 and 2"; [ $((2 + 2)) -eq 4 ]; }
# Its name starts with another test's name: runners must select tests exactly.
t_math__add_many() { [ $((1 + 2 + 3)) -eq 6 ]; }
t_math__slow_sum() { sleep 0.3; [ $((10 + 20)) -eq 30 ]; }
t_math__wrong_answer() { echo "about to compare"; echo "expected 5, got 4" >&2; return 1; }
t_env__skipped() { echo "shows how runners report skipped tests"; return $SKIP; }
t_env__flaky_once() {
  [ -n "${TESSERA_EXAMPLE_STATE_DIR:-}" ] || return 0
  marker="$TESSERA_EXAMPLE_STATE_DIR/shell-flaky_once"
  [ -e "$marker" ] && return 0
  echo "ran once" > "$marker"
  echo "first run fails on purpose"
  return 1
}

ALL="math::add math::add_many math::slow_sum math::wrong_answer env::skipped env::flaky_once"

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
xml_escape() { sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'; }

run() {
  junit="" ids=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --junit) junit="$2"; shift 2 ;;
      --ids) ids="$2"; shift 2 ;;
      *) break ;;
    esac
  done
  selected=""
  if [ -n "$ids" ]; then selected=$(cat "$ids"); fi
  for id in "$@"; do selected="$selected
$id"; done
  [ -n "$(echo "$selected" | tr -d '[:space:]')" ] || selected=$ALL

  cases="" failed=0
  for id in $selected; do
    case " $ALL " in
      *" $id "*) ;;
      *) echo "unknown test: $id" >&2; exit 2 ;;
    esac
    fn="t_$(echo "$id" | sed 's/::/__/')"
    start=$(now_ms)
    out=$($fn 2>&1)
    status=$?
    ms=$(( $(now_ms) - start ))
    time=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
    class=${id%%::*} name=${id#*::}
    body="<system-out>$(printf '%s' "$out" | xml_escape)</system-out>"
    if [ $status -eq 0 ]; then
      echo "PASS $id"
    elif [ $status -eq $SKIP ]; then
      echo "SKIP $id"
      body="<skipped message=\"skipped\"/>$body"
    else
      echo "FAIL $id"
      failed=1
      body="<failure message=\"exit status $status\"/>$body"
    fi
    cases="$cases<testcase classname=\"$class\" name=\"$name\" time=\"$time\">$body</testcase>
"
  done
  if [ -n "$junit" ]; then
    printf '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites>\n<testsuite name="command-suite">\n%s</testsuite>\n</testsuites>\n' "$cases" > "$junit"
  fi
  return $failed
}

case "${1:-}" in
  list) for id in $ALL; do echo "$id"; done ;;
  run) shift; run "$@" ;;
  *) echo "usage: sh suite.sh list | run [--junit FILE] [--ids FILE] [ID...]" >&2; exit 2 ;;
esac

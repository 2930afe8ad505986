# Shared by the CLI test scripts (source it): enter_work_dir, fail, and expect_error for toptag's
# documented way of refusing bad input: 'toptag: error: ...' naming the problem, and exit status 1.

enter_work_dir() {  # a fresh $WORK as the working directory, removed on exit with any job still running
  WORK=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
  cd "$WORK"
}

fail() {
  echo "FAIL: $*"
  exit 1
}

expect_error() {  # expect_error "what" "text the message must hold" command...
  local what=$1 want=$2
  shift 2
  set +e
  "$@" >/dev/null 2>err.txt
  local rc=$?
  set -e
  [ "$rc" -eq 1 ] || fail "$what: exit $rc, expected 1: $(cat err.txt)"
  grep -q -- "$want" err.txt || fail "$what: the message lacks '$want': $(cat err.txt)"
  grep -q "^toptag: error: " err.txt || fail "$what: not the documented 'toptag: error: ...': $(cat err.txt)"
}

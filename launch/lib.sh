#!/usr/bin/env bash
# Shared by the launch scripts (sourced, not run): shell quoting and the dry-run-aware `run`.
# The sourcing script sets DRY_RUN (1: print the commands, run nothing).

# One word quoted for a POSIX shell: as is when safe, else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Words quoted and joined with spaces: a command line that can be pasted into a shell (local or remote).
cmdline() {
  local out="" word
  for word in "$@"; do
    out+="$(quote "$word") "
  done
  printf '%s' "${out% }"
}

# Prints a command (quoted: it can be pasted) and runs it unless this is a dry run.
run() {
  printf '+ %s\n' "$(cmdline "$@")"
  if [[ "$DRY_RUN" != 1 ]]; then
    "$@"
  fi
}

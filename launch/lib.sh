#!/usr/bin/env bash
# Shared by the launch scripts (sourced, not run): the command line, shell quoting and the dry-run-aware
# `run`. The sourcing script defines `usage`; DRY_RUN (1: print the commands, run nothing) comes from
# the environment or --dry-run.

# parse_cli "SUB1 SUB2 ..." ARGS...: sets DRY_RUN and `subcommand` (exactly one of the listed ones);
# --help prints usage; anything else is an error (exit 2).
parse_cli() {
  local allowed=" $1 " arg
  shift
  DRY_RUN="${DRY_RUN:-0}"
  subcommand=""
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      *)
        if [[ "$arg" != -* && "$allowed" == *" $arg "* ]]; then
          [[ -z "$subcommand" ]] || { usage >&2; exit 2; }
          subcommand="$arg"
        else
          echo "error: unknown argument: $arg" >&2; usage >&2; exit 2
        fi ;;
    esac
  done
  [[ -n "$subcommand" ]] || { usage >&2; exit 2; }
}

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

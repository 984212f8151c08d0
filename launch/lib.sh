#!/bin/bash
# Shared by the launch scripts: quoting and dry-run printing of commands.
# Source it from the repository root: `source launch/lib.sh`.

q() {  # Shell-quotes one word, like Python's shlex.quote.
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

join() {  # The words, each quoted, separated by spaces.
  local out="" w
  for w in "$@"; do out+="${out:+ }$(q "${w}")"; done
  printf '%s' "${out}"
}

run() {  # Runs the command, or with DRY_RUN set prints it.
  if [[ -n "${DRY_RUN:-}" ]]; then join "$@"; echo; else "$@"; fi
}

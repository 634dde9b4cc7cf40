#!/usr/bin/env bash
# Nightly reindex of a compact collection, for cron. As shipped, job.toml points at the demo's
# collection: run `tldr-index demo` in the repository root once, then this script works as is.
# Install with `crontab -e`:
#
#   30 2 * * *  cd /srv/tldr && examples/nightly/nightly.sh >> /var/log/tldr-reindex.log 2>&1
#
# Exit codes of `tldr-index reindex`: 0 updated, 3 nothing to do, 4 refitted (all three are
# success), 5 another job holds the lock (retry later), 2 bad usage or job file, 1 failed.
# stdout gets exactly one JSON line per run (the summary), stderr the logs.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
cli=(tldr-index)
command -v tldr-index >/dev/null 2>&1 || cli=(python -m tldr_index)   # from a checkout
"${cli[@]}" reindex --config "$here/job.toml" --quiet
code=$?
case $code in
  0|3|4) exit 0 ;;                                        # updated / nothing to do / refitted
  5) echo "reindex: another job holds the lock; skipped" >&2; exit 0 ;;
  *) exit "$code" ;;
esac

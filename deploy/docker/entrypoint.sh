#!/bin/sh
# Hookstream container entry point: one image, one service per container.
#
#   entrypoint.sh ingest|dispatcher|retry_scheduler|janitor [args...]
#   entrypoint.sh migrate     one-shot: alembic upgrade head
#   entrypoint.sh topics      one-shot: create the topics that are missing
#
# `exec` replaces this shell, so the service is the container's main process and gets
# `docker stop`'s SIGTERM itself: it then stops fetching and drains (shared/runner.py).
# tests/deploy/test_entrypoint.py runs this script with stub commands.
set -eu

# /app in the image; the repository root when run from a checkout.
app_dir="$(cd "$(dirname "$0")/../.." && pwd)"

usage() {
    echo "usage: entrypoint.sh {ingest|dispatcher|retry_scheduler|janitor|migrate|topics} [args...]"
}

fail() {
    echo "entrypoint.sh: $1" >&2
    usage >&2
    exit 2
}

[ "$#" -gt 0 ] || fail "no service named"

service="$1"
shift

case "$service" in
    ingest | dispatcher | retry_scheduler | janitor)
        exec python -m "services.$service" "$@"
        ;;
    migrate)
        [ "$#" -eq 0 ] || fail "migrate takes no arguments (for other alembic commands: --entrypoint alembic)"
        exec alembic -c "$app_dir/alembic.ini" upgrade head
        ;;
    topics)
        [ "$#" -eq 0 ] || fail "topics takes no arguments"
        exec python -m shared.topics
        ;;
    -h | --help | help)
        usage
        exit 0
        ;;
    *)
        fail "unknown service '$service'"
        ;;
esac

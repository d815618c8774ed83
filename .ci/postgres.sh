#!/usr/bin/env bash
# Install (from Debian's packages), start and prepare a PostgreSQL for Keel's store tests.
#
# Idempotent: safe to run again on a machine where it already ran. Everything it says goes to
# stderr; stdout carries only the line a caller evaluates:
#     eval "$(bash .ci/postgres.sh)"
# which exports KEEL_TEST_POSTGRES_URL. Needs root on Debian.
set -euo pipefail
exec 3>&1 1>&2   # keep fd 3 for the export line, send everything else to stderr

ROLE=keel
PASSWORD=keel
DATABASE=keel_test
PORT=5432

# Run a command that may start the server with no file descriptors but stdin/out/err: a daemon
# keeps whatever it inherits open for ever, and whoever reads such a pipe (the $(...) that reads
# our export line, a CI runner's log) then never sees it end. This is what hung CI.
detached() {
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
        done
        exec "$@" </dev/null
    )
}

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "postgres.sh: installing postgresql from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    detached apt-get install -y -qq postgresql
fi

# The package creates a cluster "main" but, without systemd, does not start it.
read -r VERSION CLUSTER _ < <(pg_lsclusters --no-header | head -n1) || true
if [ -z "${VERSION:-}" ]; then
    VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n1)
    CLUSTER=main
    pg_createcluster "$VERSION" "$CLUSTER" --port "$PORT"
fi
if ! pg_lsclusters --no-header | awk -v v="$VERSION" -v c="$CLUSTER" '$1==v && $2==c' | grep -q online; then
    echo "postgres.sh: starting cluster $VERSION/$CLUSTER"
    detached pg_ctlcluster "$VERSION" "$CLUSTER" start
fi
CLUSTER_PORT=$(pg_lsclusters --no-header | awk -v v="$VERSION" -v c="$CLUSTER" '$1==v && $2==c {print $3}')

for _ in $(seq 1 60); do
    if pg_isready -q -h 127.0.0.1 -p "$CLUSTER_PORT"; then break; fi
    sleep 0.5
done
pg_isready -h 127.0.0.1 -p "$CLUSTER_PORT"

as_postgres() { su postgres -c "psql -v ON_ERROR_STOP=1 -p $CLUSTER_PORT -qtA $*"; }

if [ "$(as_postgres "-c \"SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'\"")" != "1" ]; then
    echo "postgres.sh: creating role $ROLE"
    as_postgres "-c \"CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'\""
fi
if [ "$(as_postgres "-c \"SELECT 1 FROM pg_database WHERE datname = '$DATABASE'\"")" != "1" ]; then
    echo "postgres.sh: creating database $DATABASE"
    as_postgres "-c \"CREATE DATABASE $DATABASE OWNER $ROLE\""
fi

URL="postgresql://$ROLE:$PASSWORD@127.0.0.1:$CLUSTER_PORT/$DATABASE"
# Prove the role can log in over TCP with its password, as the tests will.
for _ in $(seq 1 20); do
    if PGPASSWORD=$PASSWORD psql -h 127.0.0.1 -p "$CLUSTER_PORT" -U "$ROLE" -d "$DATABASE" -qtAc 'SELECT 1' >/dev/null 2>&1; then
        echo "postgres.sh: ready at 127.0.0.1:$CLUSTER_PORT/$DATABASE"
        echo "export KEEL_TEST_POSTGRES_URL=$URL" >&3
        exit 0
    fi
    sleep 0.5
done
echo "postgres.sh: PostgreSQL is up but $ROLE cannot log in to $DATABASE"
exit 1

#!/usr/bin/env bash
# Stop the single-node SLURM of scripts/slurm-up.sh: cancel its jobs, stop slurmd, slurmctld, slurmdbd and its
# MariaDB (and munged when slurm-up.sh started it). Idempotent: nothing running is no error. The configuration, the
# state and the accounting database stay for the next slurm-up.sh; --purge removes them too (and
# /etc/slurm/slurm.conf and slurmdbd.conf when slurm-up.sh wrote them).
set -euo pipefail

DIR=${CARVANA_SLURM_DIR:-/var/lib/carvana-slurm}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# written by carvana scripts/slurm-up.sh"

[ "$(id -u)" = 0 ] || { echo "slurm-down: run as root: sudo bash $0" >&2; exit 1; }

# stop a daemon by the pid in its pid file: SIGTERM, then SIGKILL after 15 s
stop() {
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
        echo "slurm-down: stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

if [ -s "$DIR/run/slurmctld.pid" ] && command -v scancel >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
    scancel --full --quiet --partition=debug 2>/dev/null || true  # this SLURM's jobs, their steps with them
    for _ in $(seq 20); do [ -z "$(squeue -h -t running,completing 2>/dev/null)" ] && break; sleep 0.5; done
fi
stop slurmd "$DIR/run/slurmd.pid"
stop slurmctld "$DIR/run/slurmctld.pid"
stop slurmdbd "$DIR/run/slurmdbd.pid"
stop mariadbd "$DIR/mysql/mariadbd.pid"
if [ -e "$DIR/run/started-munged" ]; then
    stop munged /run/munge/munged.pid
    rm -f "$DIR/run/started-munged"
fi

if [ "${1:-}" = --purge ]; then
    rm -rf "$DIR"
    for file in "$CONF" "$DBD_CONF"; do
        if [ -e "$file" ] && grep -qF "$MARK" "$file"; then rm -f "$file"; fi
    done
    echo "slurm-down: removed $DIR (state, logs, accounting database) and its slurm.conf, slurmdbd.conf"
fi
echo "slurm-down: SLURM is down"

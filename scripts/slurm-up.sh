#!/usr/bin/env bash
# A single-node SLURM with accounting on this Debian/Ubuntu machine, for trying the SLURM commands of README-slurm.md
# and for the tests marked `slurm`:   sudo bash scripts/slurm-up.sh     (stop it: sudo bash scripts/slurm-down.sh)
#
# Root only. Installs slurmctld, slurmd, slurmdbd, slurm-client, munge and mariadb-server with apt when they are
# missing; writes /etc/slurm/slurm.conf (one node: this machine's CPUs and memory as `slurmd -C` reports them;
# partition `debug`) and /etc/slurm/slurmdbd.conf; starts munged, a MariaDB of its own (its data in $DIR/mysql,
# listening on 127.0.0.1:$CARVANA_SLURM_DB_PORT only; the system's MariaDB, if any, is left alone), slurmdbd,
# slurmctld and slurmd; registers the cluster with `sacctmgr`; and waits until `srun -n 1 true` runs and `sacct`
# knows that job. Accounting (sacct) is what a real cluster has and what submitit watches jobs with.
# Idempotent: a second call on a running SLURM only checks it. It never overwrites a slurm.conf or slurmdbd.conf it
# did not write (a real cluster's). State, logs and pid files: $CARVANA_SLURM_DIR (default /var/lib/carvana-slurm).
set -euo pipefail

DIR=${CARVANA_SLURM_DIR:-/var/lib/carvana-slurm}
DB_PORT=${CARVANA_SLURM_DB_PORT:-3307}  # not 3306: a system MariaDB may hold that one
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# written by carvana scripts/slurm-up.sh"
WAIT_S=${CARVANA_SLURM_WAIT_S:-60}
CLUSTER=carvana

die() { echo "slurm-up: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons): sudo bash $0"
command -v apt-get >/dev/null || die "apt-get not found: this script is for Debian/Ubuntu"

missing=()
for tool in slurmctld slurmd slurmdbd srun sacct sacctmgr munged mariadbd mariadb-install-db; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "slurm-up: installing slurmctld slurmd slurmdbd slurm-client munge mariadb-server (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # the packages' own start scripts are not used (no systemd in a container; this script starts each daemon)
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurmdbd slurm-client munge mariadb-server \
        >/dev/null
fi
PATH=$PATH:/usr/sbin

mkdir -p "$DIR"/{state,spool,log,run} /etc/slurm
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# munge: the key Debian's package made, else a new one
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    echo munged >"$DIR/run/started-munged"  # slurm-down.sh stops munged only when this script started it
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# MariaDB for slurmdbd: its own data folder, socket and port, so a system MariaDB (and its data) is never touched
MY=$DIR/mysql  # its data, socket, pid file and log, owned by the mysql user
DB="mariadb --no-defaults --protocol=socket --socket=$MY/mariadb.sock -u root"
if [ ! -d "$MY/mysql" ]; then
    rm -rf "$MY"
    mkdir -p "$MY"
    chown mysql:mysql "$MY"
    mariadb-install-db --no-defaults --user=mysql --datadir="$MY" --auth-root-authentication-method=socket \
        --skip-test-db >"$DIR/log/mariadb-install-db.log" 2>&1 \
        || die "mariadb-install-db failed: see $DIR/log/mariadb-install-db.log"
fi
if ! running "$MY/mariadbd.pid"; then
    if (exec 3<>"/dev/tcp/127.0.0.1/$DB_PORT") 2>/dev/null; then
        die "port $DB_PORT on 127.0.0.1 is taken by another program: choose another with CARVANA_SLURM_DB_PORT=..."
    fi
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$MY" --socket="$MY/mariadb.sock" \
        --pid-file="$MY/mariadbd.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
        --log-error="$MY/mariadbd.log" --innodb-buffer-pool-size=64M --innodb-log-file-size=48M \
        --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    for _ in $(seq "$WAIT_S"); do $DB -e 'select 1' >/dev/null 2>&1 && break; sleep 1; done
fi
$DB -e 'select 1' >/dev/null 2>&1 || die "MariaDB does not answer: see $MY/mariadbd.log"
# slurmdbd's database user: a password made once, kept beside the data (root only)
if [ ! -s "$DIR/db-password" ]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DIR/db-password")
fi
password=$(cat "$DIR/db-password")
$DB <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF

host=$(hostname -s)
dbd_conf=$(cat <<EOF
$MARK: the accounting daemon of a single-node SLURM
AuthType=auth/munge
DbdHost=$host
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$password
StorageLoc=slurm_acct_db
EOF
)
node=$(slurmd -C | head -1)  # NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. ... RealMemory=<MB>
conf=$(cat <<EOF
$MARK: a single-node SLURM for trying the project
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups here (containers): processes are tracked through /proc, tasks are not pinned
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
# CPUs are the consumable: two 1-CPU jobs run side by side on a 2-CPU machine
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# accounting as on a real cluster: sacct answers from slurmdbd (submitit watches its jobs with sacct)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$host
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
ReturnToService=2
# a requeued or cancelled job's processes get SIGTERM, then SIGKILL this many seconds later
KillWait=10
MinJobAge=300
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)
for file in "$CONF" "$DBD_CONF"; do
    if [ -e "$file" ] && ! grep -qF "$MARK" "$file"; then
        die "$file exists and was not written by this script: refusing to replace it (a real cluster's?)"
    fi
done
changed=0
if [ ! -e "$DBD_CONF" ] || [ "$(cat "$DBD_CONF")" != "$dbd_conf" ]; then
    (umask 077; printf '%s\n' "$dbd_conf" >"$DBD_CONF")  # slurmdbd refuses a slurmdbd.conf others can read
    changed=1
fi
if [ ! -e "$CONF" ] || [ "$(cat "$CONF")" != "$conf" ]; then
    printf '%s\n' "$conf" >"$CONF"
    changed=1
fi

if [ "$changed" = 1 ]; then  # a new configuration: restart what runs with the old one
    for daemon in slurmd slurmctld slurmdbd; do
        pidfile=$DIR/run/$daemon.pid
        if running "$pidfile"; then
            pid=$(cat "$pidfile")
            kill "$pid"
            for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        fi
    done
fi
running "$DIR/run/slurmdbd.pid" || slurmdbd
for _ in $(seq "$WAIT_S"); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd does not answer: see $DIR/log/slurmdbd.log"
if [ -z "$(sacctmgr -n -P list cluster "$CLUSTER" format=cluster)" ]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

running "$DIR/run/slurmctld.pid" || slurmctld
for _ in $(seq "$WAIT_S"); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 1; done
scontrol ping | grep -q UP || die "slurmctld does not answer: see $DIR/log/slurmctld.log"
running "$DIR/run/slurmd.pid" || slurmd

# the node may come up DOWN after a restart of the host (ReturnToService=2 clears that on registration) or DRAIN
for _ in $(seq "$WAIT_S"); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null | head -1)
    case "$state" in
        idle|mix|alloc) break ;;
        drain*|down*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
job=$(timeout "$WAIT_S" srun -n 1 -t 1 -J slurm-up-check printenv SLURM_JOB_ID) \
    || die "srun -n 1 true fails: see $DIR/log/slurmd.log and $DIR/log/slurmctld.log"
# the job reaches slurmdbd a moment after it ends
for _ in $(seq "$WAIT_S"); do
    [ "$(sacct -n -X -P -j "$job" -o State 2>/dev/null)" = COMPLETED ] && break
    sleep 1
done
[ "$(sacct -n -X -P -j "$job" -o State)" = COMPLETED ] \
    || die "sacct does not know job $job: see $DIR/log/slurmdbd.log and $DIR/log/slurmctld.log"
echo "slurm-up: SLURM is up, with accounting: $(sinfo -h -o '%P %D node(s) %c CPUs %m MB %t' | head -1)"

#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for the integration tests (Debian's slurm-wlm, munge, slurmdbd
# with MariaDB so that `sacct` lists the jobs).
#
#   tests/integration/slurm/cluster.sh start   # install (apt) if needed, configure, start; idempotent
#   tests/integration/slurm/cluster.sh stop    # stop only the daemons this script started
#   tests/integration/slurm/cluster.sh status
#
# Needs root (apt, daemons). Exit status 0: the cluster answers (sinfo shows an idle node); 2: it cannot
# run here (no root, no apt, daemons refuse), with the reason on stderr — the tests then skip, or fail
# where SPA_SLURM_TESTS=require.
set -uo pipefail

STATE=${SPA_SLURM_STATE:-/var/tmp/spa-slurm}
CONF=/etc/slurm
PIDS=$STATE/started.pids
HOST=$(hostname -s)

die() { echo "slurm cluster: $*" >&2; exit 2; }

running() { scontrol ping 2>/dev/null | grep -q "is UP" && sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; }

install() {
    command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null \
        && command -v munged >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "needs root to install slurm-wlm (apt)"
    command -v apt-get >/dev/null || die "no apt-get on this machine"
    export DEBIAN_FRONTEND=noninteractive
    (apt-get update -qq && apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server) >"$STATE/apt.log" 2>&1 \
        || die "apt-get install failed (see $STATE/apt.log)"
}

started() { echo "$1 $2" >>"$PIDS"; }

start_munge() {
    pgrep -x munged >/dev/null && return 0
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chmod 400 /etc/munge/munge.key
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
    if id munge >/dev/null 2>&1; then
        su -s /bin/sh munge -c "/usr/sbin/munged" || die "munged did not start"
    else
        /usr/sbin/munged --force || die "munged did not start"
    fi
    sleep 0.5
    started munged "$(pgrep -x munged | head -1)"
}

start_mariadb() {
    if ! mysqladmin ping >/dev/null 2>&1; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null 2>&1
        (mariadbd --user=mysql >"$STATE/mariadb.log" 2>&1 &)
        for _ in $(seq 60); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.5; done
        mysqladmin ping >/dev/null 2>&1 || die "MariaDB did not start (see $STATE/mariadb.log)"
        started mariadbd "$(pgrep -x mariadbd | head -1)"
    fi
    mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'spa-slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" \
        || die "cannot create the accounting database"
}

write_config() {
    mkdir -p "$CONF" "$STATE/spool" "$STATE/ctld" "$STATE/log"
    local cpus mem
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    cat >"$CONF/slurm.conf" <<CONF
# written by tests/integration/slurm/cluster.sh: one node, for the spa integration tests
ClusterName=spa
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$HOST
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
    cat >"$CONF/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=$HOST
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=spa-slurm
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$CONF/slurmdbd.conf"
    rm -f "$CONF/cgroup.conf"  # proctrack/linuxproc and task/none need no cgroups
}

start_daemons() {
    if ! pgrep -x slurmdbd >/dev/null; then
        slurmdbd || die "slurmdbd did not start (see $STATE/log/slurmdbd.log)"
        for _ in $(seq 40); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
        started slurmdbd "$(pgrep -x slurmdbd | head -1)"
    fi
    sacctmgr -i add cluster spa >/dev/null 2>&1 || true
    if ! pgrep -x slurmctld >/dev/null; then
        slurmctld || die "slurmctld did not start (see $STATE/log/slurmctld.log)"
        started slurmctld "$(pgrep -x slurmctld | head -1)"
    fi
    if ! pgrep -x slurmd >/dev/null; then
        slurmd || die "slurmd did not start (see $STATE/log/slurmd.log)"
        started slurmd "$(pgrep -x slurmd | head -1)"
    fi
    for _ in $(seq 60); do running && return 0; sleep 0.5; done
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    for _ in $(seq 20); do running && return 0; sleep 0.5; done
    die "the node did not become idle (sinfo: $(sinfo -h 2>&1 | head -1))"
}

case "${1:-start}" in
start)
    running && { echo "slurm cluster: already up ($(sinfo -h -o '%P %T %c CPUs' | head -1))"; exit 0; }
    mkdir -p "$STATE"
    install
    start_munge
    start_mariadb
    write_config
    start_daemons
    echo "slurm cluster: up ($(sinfo -h -o '%P %T %c CPUs' | head -1))"
    ;;
stop)
    [ -f "$PIDS" ] || { echo "slurm cluster: nothing started by this script"; exit 0; }
    tac "$PIDS" | while read -r name pid; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null && echo "stopped $name ($pid)"
    done
    rm -f "$PIDS"
    ;;
status)
    running && { sinfo; exit 0; } || { echo "slurm cluster: down"; exit 1; }
    ;;
*) echo "usage: $0 start|stop|status" >&2; exit 64 ;;
esac

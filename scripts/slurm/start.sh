#!/usr/bin/env bash
# A one-node SLURM with accounting (Debian's Slurm 22.05 + munge + MariaDB + slurmdbd), so that
# the SLURM path is tested against a real scheduler. Idempotent: installs what is missing,
# writes its configs under the state dir, starts only what is not running, records what it
# started (scripts/slurm/stop.sh stops exactly those). Needs root; no systemd, no cgroups.
#   scripts/slurm/start.sh [--install-only] [state_dir]   default: $TOKALIGN_SLURM_DIR or /tmp/tokalign-slurm
# Then: export SLURM_CONF=<state_dir>/etc/slurm.conf (the last line printed).
set -euo pipefail

INSTALL_ONLY=
if [ "${1:-}" = "--install-only" ]; then INSTALL_ONLY=1; shift; fi
STATE=$(realpath -m "${1:-${TOKALIGN_SLURM_DIR:-/tmp/tokalign-slurm}}")
CLUSTER=tokalign
HOST=$(hostname -s)
# A requeued job may not start before cred_expire + 1 s (Slurm's default: 120 s). 10 s keeps
# preemption tests short while leaving job launches ample time on a loaded machine.
CRED_EXPIRE=${TOKALIGN_SLURM_CRED_EXPIRE:-10}
export SLURM_CONF=$STATE/etc/slurm.conf

say() { echo "slurm: $*" >&2; }
die() { say "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (it installs packages and runs the daemons)"
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
started() { echo "$1 $2" >>"$STATE/run/started"; }   # name pidfile: what stop.sh may end

wait_for() {  # wait_for <seconds> <what> <command...>
    local limit=$1 what=$2; shift 2
    for _ in $(seq $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    die "$what did not come up within ${limit}s; logs in $STATE/log"
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v munged >/dev/null || missing+=(munge)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    command -v ip >/dev/null || missing+=(iproute2)  # the two-node cluster's namespaces (two_nodes.sh)
    [ ${#missing[@]} = 0 ] && return 0
    say "installing ${missing[*]}"
    # Packages must not start their services: this script runs the daemons itself.
    local guard=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >"$STATE/log/apt.log" 2>&1 ||
        { apt-get update -q >>"$STATE/log/apt.log" 2>&1 &&
          apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$STATE/log/apt.log" 2>&1; } ||
        { [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install failed, see $STATE/log/apt.log"; }
    [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    runuser -u munge -- munged --force
    wait_for 10 munged sh -c 'munge -n | unmunge'
    started munged /run/munge/munged.pid
}

start_mariadb() {
    # Accounting storage for slurmdbd: a server of our own, socket-only, root by socket auth.
    local sock=/run/mysqld/mysqld.sock dir=$STATE/mariadb
    mkdir -p /run/mysqld "$dir" && chown mysql:mysql /run/mysqld "$dir"
    if mariadb-admin --socket=$sock ping >/dev/null 2>&1; then return 0; fi
    if [ ! -d "$dir/data/mysql" ]; then
        mariadb-install-db --user=mysql --datadir="$dir/data" --skip-test-db \
            --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed, see $STATE/log/mariadb-install.log"
    fi
    mariadbd --user=mysql --datadir="$dir/data" --socket=$sock --pid-file="$dir/mariadb.pid" \
        --skip-networking --log-error="$dir/mariadb.log" --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
    wait_for 30 mariadb mariadb-admin --socket=$sock ping
    started mariadb "$dir/mariadb.pid"
}

write_configs() {
    # The node as slurmd sees it (sockets, cores, threads), with memory kept below the machine's.
    local node mem
    node=$(slurmd -C | head -1 | sed 's/ RealMemory=[0-9]*//; s/ UpTime=.*//')
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.85)}' /proc/meminfo)
    cat >"$STATE/etc/slurm.conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
MinJobAge=300
$node NodeAddr=127.0.0.1 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    cat >"$STATE/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$STATE/etc/slurmdbd.conf"
}

start_slurm() {
    if ! alive "$STATE/run/slurmdbd.pid"; then
        slurmdbd
        wait_for 30 slurmdbd sacctmgr -n show cluster
        started slurmdbd "$STATE/run/slurmdbd.pid"
    fi
    if [ -z "$(sacctmgr -n -P show cluster "$CLUSTER" format=cluster)" ]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    if ! alive "$STATE/run/slurmctld.pid"; then
        slurmctld
        wait_for 30 slurmctld scontrol ping
        started slurmctld "$STATE/run/slurmctld.pid"
    fi
    if ! alive "$STATE/run/slurmd.pid"; then
        slurmd
        started slurmd "$STATE/run/slurmd.pid"
    fi
    wait_for 30 "node $HOST" sh -c "sinfo -h -n $HOST -o %T | grep -qE '^(idle|mixed|allocated)'"
    wait_for 30 "accounting (sacct)" sacct -n -X -S now
}

main() {
    mkdir -p "$STATE"/{etc,run,log,ctld,spool}
    install_packages
    [ -n "$INSTALL_ONLY" ] && return 0
    start_munge
    start_mariadb
    if ! alive "$STATE/run/slurmctld.pid"; then write_configs; fi
    start_slurm
    say "up: $(sinfo -h -o '%P %D %c CPUs %m MB %T') (state $STATE)"
    echo "SLURM_CONF=$SLURM_CONF"
}

main

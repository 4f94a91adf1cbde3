#!/usr/bin/env bash
# A two-node SLURM on one machine: each slurmd in a network namespace of its own (tokalign-a at
# 10.77.0.1, tokalign-b at 10.77.0.2, joined by a veth pair) with its own hostname (a UTS
# namespace: tka, tkb, which resolve to those addresses there); the file system stays shared, as NFS
# would be. The controller runs in
# tokalign-a, and so must every client: `nsenter --net=/run/netns/tokalign-a sbatch ...`. The
# host's own network is untouched. Its own munged (own socket and key) and no accounting, so it
# runs beside the one-node cluster of scripts/slurm/start.sh. Needs root and iproute2; SLURM and
# munge are installed by `scripts/slurm/start.sh --install-only`.
#   scripts/slurm/two_nodes.sh start|stop [state_dir]   default: /tmp/tokalign-slurm2
# After start: export SLURM_CONF=<state_dir>/etc/slurm.conf (the last line printed).
set -euo pipefail

ACTION=${1:?usage: two_nodes.sh start|stop [state_dir]}
STATE=$(realpath -m "${2:-/tmp/tokalign-slurm2}")
NS=(tokalign-a tokalign-b)
HOSTS=(tka tkb)
ADDRS=(10.77.0.1 10.77.0.2)
export SLURM_CONF=$STATE/etc/slurm.conf

say() { echo "slurm2: $*" >&2; }
die() { say "error: $*"; exit 1; }
# Run in node i's namespaces: its network, its hostname, and an /etc/hosts naming both nodes (a
# private mount namespace), so that a node's name resolves to its address as on a real cluster.
in_ns() {
    local i=$1; shift
    nsenter --net="/run/netns/${NS[$i]}" unshare --uts --mount sh -c \
        "hostname ${HOSTS[$i]} && mount --bind $STATE/etc/hosts /etc/hosts && exec \"\$@\"" sh "$@"
}

stop() {
    for pidfile in "$STATE"/run/slurmd-*.pid "$STATE/run/slurmctld.pid" "$STATE/munge/pid"; do
        kill "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || true
    done
    for pidfile in "$STATE"/run/slurmd-*.pid "$STATE/run/slurmctld.pid" "$STATE/munge/pid"; do
        local pid
        pid=$(cat "$pidfile" 2>/dev/null) || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
    for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}

start() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces, the daemons)"
    command -v slurmd >/dev/null && command -v munged >/dev/null && command -v ip >/dev/null ||
        die "needs slurmd, munged and ip (scripts/slurm/start.sh --install-only; apt-get install iproute2)"
    stop
    mkdir -p "$STATE"/{etc,run,log,ctld,munge} "$STATE/spool/${HOSTS[0]}" "$STATE/spool/${HOSTS[1]}"
    rm -rf "$STATE"/ctld/*  # a fresh controller: no jobs of an earlier session
    chown munge:munge "$STATE/munge"
    if [ ! -s "$STATE/munge/key" ]; then
        dd if=/dev/urandom of="$STATE/munge/key" bs=1024 count=1 status=none
        chown munge:munge "$STATE/munge/key" && chmod 400 "$STATE/munge/key"
    fi
    runuser -u munge -- munged --key-file="$STATE/munge/key" --socket="$STATE/munge/sock" \
        --pid-file="$STATE/munge/pid" --log-file="$STATE/munge/log" --seed-file="$STATE/munge/seed" --force
    ip netns add "${NS[0]}" && ip netns add "${NS[1]}"
    ip link add va netns "${NS[0]}" type veth peer name vb netns "${NS[1]}"
    ip -n "${NS[0]}" addr add "${ADDRS[0]}/24" dev va && ip -n "${NS[1]}" addr add "${ADDRS[1]}/24" dev vb
    for i in 0 1; do ip -n "${NS[$i]}" link set lo up; done
    ip -n "${NS[0]}" link set va up && ip -n "${NS[1]}" link set vb up
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.4)}' /proc/meminfo)  # each node gets 40% of the machine
    printf '127.0.0.1 localhost\n%s %s\n%s %s\n' "${ADDRS[0]}" "${HOSTS[0]}" "${ADDRS[1]}" "${HOSTS[1]}" >"$STATE/etc/hosts"
    cat >"$SLURM_CONF" <<CONF
ClusterName=tokalign2
SlurmctldHost=${HOSTS[0]}(${ADDRS[0]})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/sock,cred_expire=10
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=300
NodeName=${HOSTS[0]} NodeAddr=${ADDRS[0]} CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=${HOSTS[1]} NodeAddr=${ADDRS[1]} CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    # nsenter, not `ip netns exec`: that remounts /sys, and slurmd wants /sys/fs/cgroup as it is.
    in_ns 0 slurmctld
    for _ in $(seq 150); do in_ns 0 scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
    in_ns 0 slurmd && in_ns 1 slurmd
    for _ in $(seq 150); do
        [ "$(in_ns 0 sinfo -h -N -o %T 2>/dev/null | grep -cE '^(idle|mixed|allocated)$')" = 2 ] && break
        sleep 0.2
    done
    [ "$(in_ns 0 sinfo -h -N -o %T 2>/dev/null | grep -cE '^(idle|mixed|allocated)$')" = 2 ] ||
        { stop; die "the two nodes did not come up within 30 s; logs in $STATE/log"; }
    say "up: $(in_ns 0 sinfo -h -o '%P %D %N %c CPUs %m MB %T') (state $STATE)"
    echo "SLURM_CONF=$SLURM_CONF"
}

case $ACTION in
start) start ;;
stop) stop ;;
*) die "usage: two_nodes.sh start|stop [state_dir]" ;;
esac

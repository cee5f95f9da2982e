#!/usr/bin/env bash
# local_cluster.sh -- a real two-node SLURM test cluster on this one machine.
#
# Usage: slurm/local_cluster.sh start|stop|status|env
#
#   start   install slurm-wlm + munge with apt-get when missing, write a private
#           munge key + slurm.conf into the state directory, start a private
#           munged, slurmctld and two slurmd (nodes n1, n2), and wait until both
#           nodes are idle. Idempotent: on a running cluster it says so, exits 0.
#   stop    stop both slurmd, slurmctld and munged of this state directory.
#           Idempotent; exits 0 when nothing runs.
#   status  print sinfo; exit 0 when both nodes are up, 3 otherwise.
#   env     print `export SLURM_CONF=...` -- use: eval "$(slurm/local_cluster.sh env)"
#
# Everything (key, config, state, spool, logs, pid files, munge socket) lives in
#   ${ATOM_SLURM_DIR:-/tmp/atom-slurm}
# Nothing under /etc/slurm or /etc/munge is touched (except adding n1/n2 to /etc/hosts).
#
# Tunables (environment):
#   ATOM_SLURM_DIR            state directory                   [/tmp/atom-slurm]
#   ATOM_SLURM_CTLD_PORT      SlurmctldPort                     [first free port from 16817]
#   ATOM_SLURM_NODE_PORTS     "PORT1 PORT2" for slurmd n1 / n2  [next free ports]
#   ATOM_SLURM_START_TIMEOUT  seconds to wait for idle nodes    [60]
#   ATOM_SLURM_NODE_MEM_MB    RealMemory per node in MB         [45% of MemTotal]
set -euo pipefail

DIR="${ATOM_SLURM_DIR:-/tmp/atom-slurm}"
CONF="$DIR/slurm.conf"
MUNGE_SOCK="$DIR/munge.sock"
MUNGE_KEY="$DIR/munge.key"
MUNGE_PID="$DIR/munged.pid"
MUNGE_LOG="$DIR/munged.log"
MUNGE_SEED="$DIR/munged.seed"
CTLD_PID="$DIR/slurmctld.pid"
CTLD_LOG="$DIR/slurmctld.log"
NODES=(n1 n2)
START_TIMEOUT="${ATOM_SLURM_START_TIMEOUT:-60}"

log() { echo "local_cluster: $*"; }
err() { echo "local_cluster: ERROR: $*" >&2; }

usage() {
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        err "need root (or passwordless sudo) for: $*"
        return 1
    fi
}

# ---------------------------------------------------------------- helpers

pid_alive() { # pid_alive PIDFILE -> 0 when the pid in the file is a live process
    local f="$1" pid
    [[ -s "$f" ]] || return 1
    pid="$(tr -dc '0-9' <"$f")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

regex_escape() { printf '%s' "$1" | sed 's/[][\.*^$+?(){}|/]/\\&/g'; }

port_free() { # port_free PORT -> 0 when nothing listens on 127.0.0.1/0.0.0.0:PORT
    local p="$1"
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$p" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
    else
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then return 1; fi  # something answers: taken
    fi
}

next_free_port() { # next_free_port START [EXCLUDE...]
    local p="$1"; shift
    local ex
    while ((p < 65000)); do
        local skip=0
        for ex in "$@"; do [[ "$ex" == "$p" ]] && skip=1; done
        if ((skip == 0)) && port_free "$p"; then
            echo "$p"
            return 0
        fi
        p=$((p + 1))
    done
    err "no free port found"
    return 1
}

tail_logs() {
    local f
    for f in "$MUNGE_LOG" "$CTLD_LOG" "$DIR"/slurmd.n1.log "$DIR"/slurmd.n2.log "$DIR"/daemons.out; do
        if [[ -f "$f" ]]; then
            echo "----- local_cluster: tail of $f -----" >&2
            tail -n 30 "$f" >&2 || true
        fi
    done
}

STARTING=0
die_with_logs() {
    err "$*"
    tail_logs
    if ((STARTING)); then
        # do not leave a half-started cluster behind
        cmd_stop >&2 || true
        err "start failed; logs are in $DIR"
    fi
    exit 1
}

# ---------------------------------------------------------------- install

ensure_packages() {
    local missing=0 c
    for c in slurmctld slurmd sinfo sbatch srun munged; do
        command -v "$c" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$c" >/dev/null 2>&1 || missing=1
    done
    command -v mungekey >/dev/null 2>&1 || missing=1
    if ((missing)); then
        log "installing slurm-wlm and munge with apt-get (this can take a few minutes)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            slurm-wlm munge >/dev/null
        log "packages installed"
    fi
    export PATH="$PATH:/usr/sbin:/sbin"
}

ensure_hosts() {
    local name missing=()
    for name in "${NODES[@]}"; do
        grep -Eq "^[[:space:]]*127\.0\.0\.1([[:space:]].*)?[[:space:]]${name}([[:space:]]|\$)" /etc/hosts 2>/dev/null \
            || missing+=("$name")
    done
    if ((${#missing[@]})); then
        if [[ -w /etc/hosts ]] || [[ $(id -u) -eq 0 ]]; then
            if echo "127.0.0.1 ${missing[*]}  # atom local_cluster" >>/etc/hosts; then
                log "added ${missing[*]} -> 127.0.0.1 to /etc/hosts"
            else
                log "warning: could not add ${missing[*]} to /etc/hosts"
            fi
        else
            log "warning: ${missing[*]} not in /etc/hosts and it is not writable; node names will not resolve"
        fi
    fi
}

# ---------------------------------------------------------------- munge

ensure_key() {
    if [[ ! -s "$MUNGE_KEY" ]]; then
        if ! mungekey --create --keyfile="$MUNGE_KEY" >/dev/null 2>&1; then
            rm -f "$MUNGE_KEY"
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
        fi
        log "created munge key $MUNGE_KEY"
    fi
    chmod 0600 "$MUNGE_KEY"
}

start_munged() {
    if pid_alive "$MUNGE_PID" && [[ -S "$MUNGE_SOCK" ]]; then
        return 0
    fi
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock" "$MUNGE_PID"
    # As root munged refuses some path checks unless --force; that is fine here
    # because the key, socket and logs are private to this state directory.
    if ! munged --force \
        --socket="$MUNGE_SOCK" --key-file="$MUNGE_KEY" --pid-file="$MUNGE_PID" \
        --log-file="$MUNGE_LOG" --seed-file="$MUNGE_SEED" >>"$DIR/daemons.out" 2>&1 9>&-; then
        die_with_logs "munged failed to start"
    fi
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -S "$MUNGE_SOCK" ]] && pid_alive "$MUNGE_PID" && break
        sleep 0.1
    done
    [[ -S "$MUNGE_SOCK" ]] || die_with_logs "munged socket $MUNGE_SOCK did not appear"
    if command -v munge >/dev/null 2>&1 && command -v unmunge >/dev/null 2>&1; then
        munge -n -S "$MUNGE_SOCK" | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1 \
            || die_with_logs "munge credential round trip failed"
    fi
    log "munged running (socket $MUNGE_SOCK)"
}

# ---------------------------------------------------------------- config

write_conf() {
    local host cpus mem_kb mem_mb ctld_port p1 p2
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    mem_mb="${ATOM_SLURM_NODE_MEM_MB:-$((mem_kb * 45 / 100 / 1024))}"
    ctld_port="${ATOM_SLURM_CTLD_PORT:-$(next_free_port 16817)}"
    if [[ -n "${ATOM_SLURM_NODE_PORTS:-}" ]]; then
        read -r p1 p2 <<<"$ATOM_SLURM_NODE_PORTS"
    else
        p1="$(next_free_port $((ctld_port + 1)) "$ctld_port")"
        p2="$(next_free_port $((p1 + 1)) "$ctld_port" "$p1")"
    fi
    [[ -n "$p1" && -n "$p2" ]] || { err "bad ATOM_SLURM_NODE_PORTS"; exit 1; }

    cat >"$CONF.tmp" <<EOF
# Generated by slurm/local_cluster.sh -- private two-node test cluster. Do not edit.
ClusterName=atom
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${ctld_port}
SlurmdPort=${p1}
SlurmUser=$(id -un)
AuthType=auth/munge
AuthInfo=socket=${MUNGE_SOCK},cred_expire=10
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
JobRequeue=1
KillWait=5
MinJobAge=600
InactiveLimit=0
ReturnToService=2
SlurmdTimeout=60
SlurmctldTimeout=60
MessageTimeout=10
PropagateResourceLimits=NONE
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool/%n
SlurmctldPidFile=${CTLD_PID}
SlurmctldLogFile=${CTLD_LOG}
SlurmdPidFile=${DIR}/slurmd.%n.pid
SlurmdLogFile=${DIR}/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=n1 NodeHostname=${host} NodeAddr=127.0.0.1 Port=${p1} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
NodeName=n2 NodeHostname=${host} NodeAddr=127.0.0.1 Port=${p2} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
    mv -f "$CONF.tmp" "$CONF"
    log "wrote $CONF (slurmctld port $ctld_port, slurmd ports $p1/$p2, ${cpus} CPUs + ${mem_mb} MB per node)"
}

# ---------------------------------------------------------------- state

daemons_alive() { # 0 when every daemon of this DIR is alive
    pid_alive "$MUNGE_PID" && pid_alive "$CTLD_PID" \
        && pid_alive "$DIR/slurmd.n1.pid" && pid_alive "$DIR/slurmd.n2.pid"
}

any_daemon_alive() {
    pid_alive "$MUNGE_PID" || pid_alive "$CTLD_PID" \
        || pid_alive "$DIR/slurmd.n1.pid" || pid_alive "$DIR/slurmd.n2.pid"
}

node_states() { # prints "NODE STATE" lines; fails when slurmctld does not answer
    SLURM_CONF="$CONF" timeout 15 sinfo -h -N -o '%N %T' 2>/dev/null
}

nodes_up() { # 0 when n1 and n2 are both in a usable state
    local out n st ok=0
    out="$(node_states)" || return 1
    for n in "${NODES[@]}"; do
        st="$(awk -v n="$n" '$1 == n {print $2; exit}' <<<"$out")"
        case "$st" in
            idle | mixed | allocated | completing) ok=$((ok + 1)) ;;
        esac
    done
    ((ok == ${#NODES[@]}))
}

nodes_idle() {
    local out n st ok=0
    out="$(node_states)" || return 1
    for n in "${NODES[@]}"; do
        st="$(awk -v n="$n" '$1 == n {print $2; exit}' <<<"$out")"
        [[ "$st" == idle ]] && ok=$((ok + 1))
    done
    ((ok == ${#NODES[@]}))
}

# ---------------------------------------------------------------- commands

kill_pidfile() { # kill_pidfile PIDFILE NAME
    local f="$1" name="$2" pid i
    if pid_alive "$f"; then
        pid="$(tr -dc '0-9' <"$f")"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) did not exit on TERM, sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$f"
}

pkill_pattern() { # pkill_pattern REGEX NAME -- fallback, restricted to this DIR
    local re="$1" name="$2"
    if pgrep -f -- "$re" >/dev/null 2>&1; then
        log "stopping leftover $name processes of $DIR"
        pkill -TERM -f -- "$re" 2>/dev/null || true
        sleep 1
        pkill -KILL -f -- "$re" 2>/dev/null || true
    fi
}

cmd_stop() {
    local conf_re sock_re stopped=0
    any_daemon_alive && stopped=1
    kill_pidfile "$DIR/slurmd.n1.pid" "slurmd n1"
    kill_pidfile "$DIR/slurmd.n2.pid" "slurmd n2"
    kill_pidfile "$CTLD_PID" "slurmctld"
    kill_pidfile "$MUNGE_PID" "munged"
    conf_re="$(regex_escape "$CONF")"
    sock_re="$(regex_escape "$MUNGE_SOCK")"
    pkill_pattern "slurmd -f ${conf_re}( |\$)" "slurmd"
    pkill_pattern "slurmctld -f ${conf_re}( |\$)" "slurmctld"
    pkill_pattern "munged .*--socket=${sock_re}( |\$)" "munged"
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    if ((stopped)); then
        log "cluster in $DIR stopped"
    else
        log "nothing running for $DIR"
    fi
    return 0
}

cmd_start() {
    mkdir -p "$DIR"
    chmod 0755 "$DIR"
    # serialise concurrent starts on the same state directory (the daemons are
    # started with fd 9 closed so that they do not inherit the lock)
    exec 9>"$DIR/.lock"
    flock -w 300 9 || { err "could not lock $DIR/.lock"; exit 1; }

    ensure_packages
    if [[ -f "$CONF" ]] && daemons_alive && nodes_up; then
        log "cluster already running in $DIR"
        log "use: export SLURM_CONF=$CONF   (or: eval \"\$($0 env)\")"
        return 0
    fi
    if any_daemon_alive; then
        log "cluster in $DIR is partly running; restarting it cleanly"
        cmd_stop
    fi
    # remove what a half-dead earlier run may have left behind
    cmd_stop >/dev/null

    ensure_hosts
    # a clean slate: old job state and spool of a previous run are not reused
    rm -rf "$DIR/state" "$DIR/spool"
    mkdir -p "$DIR/state" "$DIR/spool/n1" "$DIR/spool/n2"
    : >"$DIR/daemons.out"
    local f
    for f in "$CTLD_LOG" "$DIR/slurmd.n1.log" "$DIR/slurmd.n2.log" "$MUNGE_LOG"; do
        [[ -f "$f" ]] && mv -f "$f" "$f.old"
    done

    STARTING=1
    ensure_key
    write_conf
    start_munged

    export SLURM_CONF="$CONF"
    if ! slurmctld -f "$CONF" >>"$DIR/daemons.out" 2>&1 9>&-; then
        die_with_logs "slurmctld failed to start"
    fi
    local n
    for n in "${NODES[@]}"; do
        if ! slurmd -f "$CONF" -N "$n" >>"$DIR/daemons.out" 2>&1 9>&-; then
            die_with_logs "slurmd $n failed to start"
        fi
    done

    log "waiting (up to ${START_TIMEOUT}s) for nodes n1, n2 to become idle"
    local deadline=$((SECONDS + START_TIMEOUT))
    until nodes_idle; do
        if ((SECONDS >= deadline)); then
            echo "----- local_cluster: sinfo -----" >&2
            SLURM_CONF="$CONF" timeout 15 sinfo -N -l >&2 2>&1 || true
            die_with_logs "nodes did not become idle within ${START_TIMEOUT}s"
        fi
        if ! pid_alive "$CTLD_PID"; then
            sleep 0.5
            pid_alive "$CTLD_PID" || die_with_logs "slurmctld died during startup"
        fi
        sleep 0.5
    done
    STARTING=0
    SLURM_CONF="$CONF" sinfo -N
    log "cluster up in $DIR"
    log "use: export SLURM_CONF=$CONF   (or: eval \"\$($0 env)\")"
}

cmd_status() {
    export PATH="$PATH:/usr/sbin:/sbin"
    if [[ ! -f "$CONF" ]]; then
        log "no cluster configured in $DIR"
        return 3
    fi
    if ! command -v sinfo >/dev/null 2>&1; then
        log "sinfo not installed"
        return 3
    fi
    if ! SLURM_CONF="$CONF" timeout 15 sinfo -N -l; then
        log "slurmctld of $DIR does not answer"
        return 3
    fi
    if nodes_up; then
        log "both nodes up"
        return 0
    fi
    log "not all nodes are up"
    return 3
}

cmd_env() {
    printf 'export SLURM_CONF=%q\n' "$CONF"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) usage ;;
esac

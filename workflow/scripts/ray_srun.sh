#!/usr/bin/env bash
# Run a command, e.g. `python -m dmaml.cli train --engine cluster ...`, as the driver of a Ray
# cluster over the nodes of the SLURM job it runs in; outside SLURM, run it as it is (the cluster
# engine then starts a local Ray instance). The training rule runs `engine: cluster` jobs with it:
#
#   workflow/scripts/ray_srun.sh python -m dmaml.cli train --engine cluster --out RUN ...
#
# Ray's documented SLURM route, done as `ray symmetric-run` does it: one `srun --ntasks-per-node=1`
# task per node starts Ray there with `ray start --block`; the first node's task is the head and
# runs the command with RAY_ADDRESS set, the others join it and leave when the head has gone.
# `ray symmetric-run` itself is not used: it refuses to start on a node where any Ray runs and
# ends with `ray stop`, which kills every Ray process on the node by name, other jobs' too. Here
# each job has its own block of ports (from the job id, so that two jobs on one node do not
# collide), temporary folder and authentication token, and each task stops its own Ray by the pid
# of its `ray start`. Each Ray node takes its address from SLURM: the NodeAddr of its node
# (`scontrol show node $SLURMD_NODENAME`), so that nodes which share a host name, e.g. the
# loopback aliases of tests/slurm/local_cluster.py, are told apart.
set -euo pipefail

# Job j uses ports PORTS_FROM + (j % JOB_SLOTS) * PORTS_PER_JOB + [0, 100), all below the
# node's ephemeral range (ip_local_port_range, 32768-60999 on Linux by default), where the kernel
# hands out ports of outgoing connections and a bind could fail at random. Jobs whose ids differ
# by a multiple of JOB_SLOTS (227 by default) would share a block. Within it, node k of the job
# uses the PORTS_PER_NODE ports from (k % 4) * PORTS_PER_NODE: Ray's daemons listen on all
# addresses, so up to 4 nodes of one job on one host (a simulated cluster) do not collide either.
PORTS_FROM=10000
PORTS_PER_JOB=100
PORTS_PER_NODE=25
read -r ephemeral _ < /proc/sys/net/ipv4/ip_local_port_range 2> /dev/null || ephemeral=32768
JOB_SLOTS=$(((ephemeral - PORTS_FROM) / PORTS_PER_JOB))
if ((JOB_SLOTS < 1)); then
  echo "ray_srun.sh: the ephemeral port range starts at $ephemeral: no room below it for" \
    "a block of $PORTS_PER_JOB ports from $PORTS_FROM" >&2
  exit 1
fi
HEAD_WAIT=120     # seconds a node waits for the head to start

if [[ ${1:-} != --node ]]; then
  if [[ -z ${SLURM_JOB_ID:-} ]]; then
    exec "$@"
  fi
  # Snakemake's job step keeps only SLURM_JOB_ID of the job's variables: ask SLURM for the rest.
  read -r cpus nodes < <(squeue -h -j "$SLURM_JOB_ID" -o "%C %D")
  RAY_AUTH_TOKEN=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
  # --overlap: also inside a job step that holds the job's CPUs (a one-node job).
  exec srun --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 \
    --cpus-per-task=$((cpus / nodes)) --overlap --kill-on-bad-exit=1 bash "$0" --node "$@"
fi
shift

# --- one task per node ---------------------------------------------------------------------------
node_ip() {  # the IPv4 address of a SLURM node: its NodeAddr, resolved
  local addr
  addr=$(scontrol -o show node "$1" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
  getent ahostsv4 "${addr:-$1}" | awk 'NR == 1 { print $1 }'
}
head=$(scontrol show hostnames "${SLURM_STEP_NODELIST:-$SLURM_JOB_NODELIST}" | head -n 1)
head_ip=$(node_ip "$head")
ip=$(node_ip "$SLURMD_NODENAME")
base=$((PORTS_FROM + SLURM_JOB_ID % JOB_SLOTS * PORTS_PER_JOB))
address=$head_ip:$base
port=$((base + SLURM_NODEID % (PORTS_PER_JOB / PORTS_PER_NODE) * PORTS_PER_NODE))
if ((SLURM_NNODES == 1)) && [[ $ip == 127.* ]]; then
  # A one-node cluster on loopback: Ray keeps all its addresses there too.
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
else
  # Several nodes: that setting, inherited from the submitting shell (the cluster engine sets it
  # for a local Ray instance), would make Ray refuse every node but the head.
  unset RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
fi
# Ports of another job's Ray (job ids a multiple of JOB_SLOTS apart) or of anything else: say so
# now rather than let Ray fail later on a bind.
for ((p = port + (SLURM_NODEID == 0 ? 0 : 1); p < port + PORTS_PER_NODE; p++)); do
  if timeout 1 bash -c ">/dev/tcp/$ip/$p" 2> /dev/null; then
    echo "ray_srun.sh: port $p on $SLURMD_NODENAME ($ip) is in use; job $SLURM_JOB_ID needs" \
      "ports $port-$((port + PORTS_PER_NODE - 1)) there" >&2
    exit 1
  fi
done
# short: Ray's Unix socket paths are at most 107 characters; the node in it, as nodes may share /tmp
tmp=/tmp/ray-$SLURM_JOB_ID-$SLURM_NODEID
mkdir -p "$tmp"
# Ray's default object store would take 30% of the node's memory, not the job's; a run moves a
# few copies of the parameters.
options=(--block --disable-usage-stats --temp-dir="$tmp" --object-store-memory=$((512 * 2 ** 20))
  --node-ip-address="$ip" --num-cpus="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}"
  --node-manager-port=$((port + 1)) --object-manager-port=$((port + 2))
  --ray-client-server-port=$((port + 3)) --dashboard-agent-listen-port=$((port + 4))
  --dashboard-agent-grpc-port=$((port + 5)) --runtime-env-agent-port=$((port + 6))
  --metrics-export-port=$((port + 7))
  --min-worker-port=$((port + 8)) --max-worker-port=$((port + PORTS_PER_NODE - 1)))

# On SIGTERM `ray start --block` would wait up to 30 s for its node to drain (for Ray Serve) at
# every job's end, and on a worker node for a head that has already gone.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0

ray_pid=
stop_ray() {
  if [[ -n $ray_pid ]]; then
    kill -TERM "$ray_pid" 2> /dev/null || true
    wait "$ray_pid" 2> /dev/null || true
  fi
  rm -rf "$tmp"
}
trap stop_ray EXIT
trap 'exit 143' TERM

head_up() {
  timeout 2 bash -c ">/dev/tcp/${head_ip}/${base}" 2> /dev/null
}

if [[ $SLURM_NODEID == 0 ]]; then
  ray start --head --port="$base" --include-dashboard=false \
    "${options[@]}" > "$tmp/ray-start.log" 2>&1 &
  ray_pid=$!
  for ((i = 0; i < HEAD_WAIT; i++)); do
    grep -qs "Ray runtime started" "$tmp/ray-start.log" && break
    if ! kill -0 "$ray_pid" 2> /dev/null; then break; fi
    sleep 1
  done
  if ! grep -q "Ray runtime started" "$tmp/ray-start.log"; then
    echo "ray_srun.sh: the Ray head on $head did not start:" >&2
    tail -n 30 "$tmp/ray-start.log" >&2
    exit 1
  fi
  echo "ray_srun.sh: Ray head at $address on $SLURMD_NODENAME, $SLURM_NNODES node(s)" >&2
  status=0
  RAY_ADDRESS=$address DMAML_RAY_NODES=$SLURM_NNODES "$@" || status=$?
  exit "$status"
fi

for ((i = 0; i < HEAD_WAIT; i++)); do
  head_up && break
  sleep 1
done
if ! head_up; then
  echo "ray_srun.sh: no Ray head at $address after $HEAD_WAIT s" >&2
  exit 1
fi
ray start --address="$address" "${options[@]}" &
ray_pid=$!
# Leave when the head has gone (its port closes), or when Ray here stops by itself.
while kill -0 "$ray_pid" 2> /dev/null && head_up; do
  sleep 2
done

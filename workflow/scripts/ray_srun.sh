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
# of its `ray start`.
set -euo pipefail

# Job j uses ports PORTS_FROM + (j % JOB_SLOTS) * PORTS_PER_JOB + [0, 100), all below the
# node's ephemeral range (ip_local_port_range, 32768-60999 on Linux by default), where the kernel
# hands out ports of outgoing connections and a bind could fail at random. Jobs whose ids differ
# by a multiple of JOB_SLOTS (227 by default) would share a block.
PORTS_FROM=10000
PORTS_PER_JOB=100
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
head=$(scontrol show hostnames "${SLURM_STEP_NODELIST:-$SLURM_JOB_NODELIST}" | head -n 1)
head_ip=$(getent ahostsv4 "$head" | awk 'NR == 1 { print $1 }')
base=$((PORTS_FROM + SLURM_JOB_ID % JOB_SLOTS * PORTS_PER_JOB))
address=$head_ip:$base
if [[ $head_ip == 127.* ]]; then
  # The head on loopback (a one-node cluster): Ray keeps all its addresses there too.
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
fi
tmp=/tmp/ray-$SLURM_JOB_ID  # short: Ray's Unix socket paths are at most 107 characters
mkdir -p "$tmp"
# Ray's default object store would take 30% of the node's memory, not the job's; a run moves a
# few copies of the parameters.
options=(--block --disable-usage-stats --temp-dir="$tmp" --object-store-memory=$((512 * 2 ** 20))
  --num-cpus="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}"
  --node-manager-port=$((base + 1)) --object-manager-port=$((base + 2))
  --ray-client-server-port=$((base + 3)) --dashboard-agent-listen-port=$((base + 4))
  --dashboard-agent-grpc-port=$((base + 5)) --runtime-env-agent-port=$((base + 6))
  --metrics-export-port=$((base + 7))
  --min-worker-port=$((base + 10)) --max-worker-port=$((base + PORTS_PER_JOB - 1)))

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
  ray start --head --node-ip-address="$head_ip" --port="$base" --include-dashboard=false \
    "${options[@]}" > "$tmp/ray-start.log" 2>&1 &
  ray_pid=$!
  for ((i = 0; i < HEAD_WAIT; i++)); do
    grep -q "Ray runtime started" "$tmp/ray-start.log" && break
    if ! kill -0 "$ray_pid" 2> /dev/null; then break; fi
    sleep 1
  done
  if ! grep -q "Ray runtime started" "$tmp/ray-start.log"; then
    echo "ray_srun.sh: the Ray head on $head did not start:" >&2
    tail -n 30 "$tmp/ray-start.log" >&2
    exit 1
  fi
  echo "ray_srun.sh: Ray head at $address, $SLURM_NNODES node(s)" >&2
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

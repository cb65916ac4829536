#!/usr/bin/env bash
# Runs herd's benchmarks and Proto.Actor's (bench/peers) side by side and
# compares them with benchstat. Runs alternate between the two so that noise
# on a shared machine falls on both alike.
#
#   bench/run.sh [count]      (default 10; results in bench/results/)
#
# The membership timings (kill to dead, ten nodes joining) build a cluster
# per iteration and take minutes; they run on their own:
#
#   go test -run='^$' -bench='KillToDead|JoinTogether' -benchtime=10x .
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10}
out=bench/results
mkdir -p "$out"
: > "$out/herd.txt"
: > "$out/peers.txt"
: > "$out/herd-only.txt"
benchstat="go run golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da"
names='^Benchmark(Spawn|Send1to1|SendNto1|CallRoundTrip|IdleMemory|RemoteSend|RemoteCall)$'
for i in $(seq "$count"); do
  echo "run $i/$count" >&2
  go test -run='^$' -bench="$names" -benchmem -count=1 . >> "$out/herd.txt"
  go test -C bench/peers -run='^$' -bench="$names" -benchmem -count=1 . >> "$out/peers.txt"
  go test -run='^$' -bench='^Benchmark(Lookup|RegisterUnregister|CallBetweenProcesses|FanOut|Encode|Decode|RemoteSendPlain|RemoteCallPlain|SendThroughput)' -benchmem -count=1 ./internal/registry/ ./internal/codec/ ./internal/transport/ . >> "$out/herd-only.txt"
done
{
  echo "## herd vs Proto.Actor (same machine, interleaved runs, count=$count)"
  $benchstat -ignore pkg -table .name -col .file "$out/herd.txt" "$out/peers.txt" 2>/dev/null ||
    $benchstat -ignore pkg "$out/herd.txt" "$out/peers.txt"
  echo
  echo "## herd only"
  $benchstat "$out/herd-only.txt"
} | tee "$out/summary.txt"

#!/bin/bash
# profile.sh [OUT]: regenerates cmd/mote/default.pgo, the CPU profile that
# `go build ./cmd/mote` uses for profile-guided optimisation (issue 15).
# It builds mote without PGO, runs `mote bench` with that build wrapped as
# the baseline (wrap.sh: each broker it starts serves --pprof and is
# profiled in 1 s slices), only the mote-base broker, over issue 15's
# workloads: QoS 0/1 fan-in, fan-out, boot storm (plain and `$tree`),
# latency (plain and `$tree` with deltas), dashboard (plain and `$sync`
# snapshots) and the live dashboard; then merges the slices into one profile.
# ROUNDS (default 1) and SCENARIOS override what is run. Takes ~1.5 min.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/cmd/mote/default.pgo}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && go build -pgo=off -o "$work/mote" ./cmd/mote)
mkdir "$work/prof"
MOTE_BIN=$work/mote PGO_DIR=$work/prof "$work/mote" bench -rounds "${ROUNDS:-1}" \
	-baseline "$here/wrap.sh" -brokers mote-base \
	${SCENARIOS:-fan-in fan-out boot-storm latency dashboard live-dashboard} >"$work/bench.txt"
cat "$work/bench.txt" >&2
ls "$work"/prof/*.pb.gz >/dev/null
go tool pprof -proto "$work"/prof/*.pb.gz >"$out" 2>/dev/null
echo "profile.sh: $(ls "$work"/prof | wc -l) slices merged into $out ($(stat -c %s "$out") bytes)" >&2

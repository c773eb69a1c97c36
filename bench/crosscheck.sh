#!/usr/bin/env bash
# crosscheck.sh: fan-in (100 publishers -> 1 subscriber, 1,000 x 64-byte
# messages each, QoS 0 and QoS 1) measured with tools that are not ours:
# krylovsk/mqtt-benchmark (Paho Go publishers) and mosquitto_sub (the single
# subscriber), against Mote and Mosquitto side by side, alternating brokers,
# each run on a fresh broker. See bench/README.md "Cross-check with
# mqtt-benchmark".
#
# usage: bench/crosscheck.sh [rounds]     (default 3; run from the repo root)
#
# Environment:
#   MOTE             mote binary (default: built from this tree into $WORK)
#   MQTT_BENCHMARK   mqtt-benchmark binary (default: installed, see below)
#   MQTT_BENCHMARK_SRC  a checkout of github.com/krylovsk/mqtt-benchmark to
#                    build from when `go install` cannot fetch it
#   PUBS, EACH, SIZE publishers, messages each, payload bytes (100, 1000, 64)
#
# Needs: go, mosquitto and mosquitto-clients (apt-get install mosquitto
# mosquitto-clients), jq, python3.
set -euo pipefail

ROUNDS=${1:-3}
PUBS=${PUBS:-100}
EACH=${EACH:-1000}
SIZE=${SIZE:-64}
TOTAL=$((PUBS * EACH))
WORK=$(mktemp -d /tmp/mote-crosscheck.XXXXXX)
BROKER_PID=
SUB_PID=

cleanup() {
	[ -n "$SUB_PID" ] && kill "$SUB_PID" 2>/dev/null || true
	[ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

for t in go mosquitto mosquitto_sub mosquitto_pub jq python3; do
	command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] ||
		{ echo "crosscheck: $t is not installed" >&2; exit 1; }
done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

# The tool: `go install` through the module proxy; failing that, a build of a
# checkout named by MQTT_BENCHMARK_SRC (its own go.mod, unchanged).
if [ -z "${MQTT_BENCHMARK:-}" ]; then
	MQTT_BENCHMARK=$WORK/mqtt-benchmark
	if GOBIN=$WORK go install github.com/krylovsk/mqtt-benchmark@latest 2>"$WORK/install.log"; then
		echo "crosscheck: installed github.com/krylovsk/mqtt-benchmark@latest"
	elif [ -n "${MQTT_BENCHMARK_SRC:-}" ]; then
		echo "crosscheck: go install failed ($(tail -1 "$WORK/install.log")); building $MQTT_BENCHMARK_SRC"
		(cd "$MQTT_BENCHMARK_SRC" && go build -o "$MQTT_BENCHMARK" .)
	else
		echo "crosscheck: cannot install mqtt-benchmark: $(tail -1 "$WORK/install.log")" >&2
		echo "crosscheck: set MQTT_BENCHMARK (a binary) or MQTT_BENCHMARK_SRC (a checkout)" >&2
		exit 1
	fi
fi
if [ -z "${MOTE:-}" ]; then
	MOTE=$WORK/mote
	go build -o "$MOTE" ./cmd/mote
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # port: until it accepts, at most 10 s
	for _ in $(seq 200); do
		python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2).close()" 2>/dev/null && return 0
		sleep 0.05
	done
	echo "crosscheck: broker on port $1 did not start" >&2
	return 1
}

start_broker() { # name port: fresh broker, persistence as `mote bench` runs it
	local dir=$WORK/data-$RANDOM
	mkdir -p "$dir"
	case $1 in
	mote)
		"$MOTE" broker --tcp "127.0.0.1:$2" --ws off --http off --data "$dir" --log-level warn \
			>"$WORK/broker.log" 2>&1 &
		;;
	mosquitto)
		printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\nset_tcp_nodelay true\n' \
			"$2" >"$dir/mosquitto.conf"
		"$MOSQUITTO" -c "$dir/mosquitto.conf" >"$WORK/broker.log" 2>&1 &
		;;
	esac
	BROKER_PID=$!
	wait_port "$2"
}

stop_broker() {
	kill "$BROKER_PID" 2>/dev/null || true
	wait "$BROKER_PID" 2>/dev/null || true
	BROKER_PID=
}

cpu_seconds() { # pid: utime + stime
	awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}

RESULTS=$WORK/results.tsv
: >"$RESULTS"

run_one() { # broker qos round
	local broker=$1 qos=$2 round=$3 port out
	port=$(free_port)
	start_broker "$broker" "$port"
	local load
	load=$(cut -d' ' -f1 /proc/loadavg)
	out=$WORK/sub.out
	# The one subscriber: prints each message's topic and arrival time (ns);
	# exits after the probe and all TOTAL messages, or after 120 s.
	mosquitto_sub -h 127.0.0.1 -p "$port" -i fanin-sub -q "$qos" -t 'fan/#' \
		-F '%t %U' -C $((TOTAL + 1)) -W 120 >"$out" 2>"$WORK/sub.err" &
	SUB_PID=$!
	# Its subscription is in place once a probe published after it arrives.
	for _ in $(seq 200); do
		mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -t fan/ready -m r
		grep -q '^fan/ready ' "$out" && break
		sleep 0.05
	done
	grep -q '^fan/ready ' "$out" || { echo "crosscheck: subscriber not ready" >&2; exit 1; }
	local cpu0 start
	cpu0=$(cpu_seconds "$BROKER_PID")
	start=$(date +%s.%N)
	"$MQTT_BENCHMARK" -broker "tcp://127.0.0.1:$port" -topic fan/kb -clients "$PUBS" -count "$EACH" \
		-size "$SIZE" -qos "$qos" -message-interval 0 -client-prefix fanin -quiet -format json \
		>"$WORK/pub.json"
	wait "$SUB_PID" || true
	SUB_PID=
	local cpu1
	cpu1=$(cpu_seconds "$BROKER_PID")
	stop_broker
	# received, last arrival; the tool's own totals
	local got last rate toolrate ok
	got=$(grep -c '^fan/kb ' "$out" || true)
	last=$(grep '^fan/kb ' "$out" | tail -1 | cut -d' ' -f2)
	rate=0
	[ "$got" -gt 0 ] && rate=$(python3 -c "print(round($got / ($last - $start)))")
	toolrate=$(jq '.totals.total_msgs_per_sec | round' "$WORK/pub.json")
	ok=$(jq '.totals.successes' "$WORK/pub.json")
	printf '%s\t%s\tqos%s\t%s\t%s\t%s\t%s\t%s\t%.2f\n' "$round" "$broker" "$qos" "$rate" "$toolrate" "$got" "$ok" "$load" \
		"$(python3 -c "print($cpu1 - $cpu0)")" | tee -a "$RESULTS"
}

echo "crosscheck: $PUBS publishers x $EACH x ${SIZE}-byte messages -> 1 subscriber, $ROUNDS rounds"
printf 'round\tbroker\tqos\tfan-in msgs/s\ttool msgs/s\treceived\tpublished\tload1\tbroker cpu s\n'
for r in $(seq "$ROUNDS"); do
	for q in 0 1; do
		for b in mote mosquitto; do
			run_one "$b" "$q" "$r"
		done
	done
done

python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
print("\nbroker     qos   fan-in msgs/s median (min-max)   tool msgs/s median (min-max)   received min   broker cpu s median")
for q in ("qos0", "qos1"):
    for b in ("mote", "mosquitto"):
        rs = [r for r in rows if r[1] == b and r[2] == q]
        fan = [float(r[3]) for r in rs]; tool = [float(r[4]) for r in rs]
        print(f"{b:10} {q:5} {statistics.median(fan):8.0f} ({min(fan):.0f}-{max(fan):.0f})        "
              f"{statistics.median(tool):8.0f} ({min(tool):.0f}-{max(tool):.0f})        "
              f"{min(int(r[5]) for r in rs):8d}   {statistics.median(float(r[8]) for r in rs):.2f}")
    m = {r[0]: float(r[3]) for r in rows if r[1] == "mote" and r[2] == q}
    s = {r[0]: float(r[3]) for r in rows if r[1] == "mosquitto" and r[2] == q}
    ratios = [m[k] / s[k] for k in m if k in s]
    print(f"mote/mosquitto {q}, round by round: {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
loads = [float(r[7]) for r in rows]
print(f"load average (1 min) at run starts: {min(loads):.2f}-{max(loads):.2f}")
EOF

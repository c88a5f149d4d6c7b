#!/bin/bash
# One case-1 sample: fio over NBD against an fss volume with no snapshot, or against qemu-nbd
# (--cache=none --aio=native) on the same image, as bench case 1 takes it in a full run (2 GiB
# image of random data, 3 s after a 1 s ramp, page cache dropped first), for quick A/B runs of
# two builds and for profiles. As root, from anywhere:
#
#   bench/volume-io.sh FSS_BINARY|qemu-nbd read|write|randread|randwrite BS QD [perf]
#
# `perf`: also record the serving process for 3 s (perf.data in the work directory).
# Work directory: $BASE/fss-volume-io (BASE defaults to /var/tmp); the image is kept there.
set -euo pipefail
SERVER=$1; RW=$2; BS=$3; QD=$4; PERF=${5:-}
H=${BASE:-/var/tmp}/fss-volume-io; S=$H/state
SP=
cleanup() { [ -n "$SP" ] && kill "$SP" 2>/dev/null && wait "$SP" 2>/dev/null; true; }
trap cleanup EXIT
mkdir -p "$H"; rm -rf "$S"; mkdir -p "$S"
if [ ! -f "$H/img" ]; then
    fio --name=prefill --filename="$H/img" --size=2G --bs=1M --rw=write --ioengine=libaio \
        --iodepth=16 --direct=1 --output=/dev/null
fi
if [ "$SERVER" = qemu-nbd ]; then
    qemu-nbd --format=raw --cache=none --aio=native --persistent --shared=8 \
        --socket="$S/nbd.sock" --export-name=vol "$H/img" >"$H/serve.log" 2>&1 & SP=$!
    for _ in $(seq 100); do [ -S "$S/nbd.sock" ] && break; sleep 0.1; done
    PID=$SP
else
    BIN=$(realpath "$SERVER")
    export FSS_STATE_DIR=$S
    "$BIN" serve >"$H/serve.log" 2>&1 & SP=$!
    for _ in $(seq 100); do "$BIN" status >/dev/null 2>&1 && break; sleep 0.1; done
    "$BIN" volume add vol --device "$H/img" >/dev/null
    PID=$("$BIN" status --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])')
fi
URI="nbd+unix:///vol?socket=$S/nbd.sock"
sync; echo 3 >/proc/sys/vm/drop_caches
PP=
if [ -n "$PERF" ]; then
    (sleep 1; perf record -g -p "$PID" -o "$H/perf.data" -- sleep 3 >/dev/null 2>&1) & PP=$!
fi
fio --name=volume-io --ioengine=nbd --uri="$URI" --rw="$RW" --bs="$BS" --iodepth="$QD" \
    --time_based --runtime=3 --ramp_time=1 --size=2G \
    --output-format=json --output="$H/fio.json" >/dev/null
if [ -n "$PP" ]; then wait "$PP"; fi
python3 - "$H/fio.json" "$SERVER $RW $BS qd$QD" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
print(f"{sys.argv[2]}: {d['bw'] / 1024:.0f} MB/s, {d['iops']:.0f} IOPS")
PY

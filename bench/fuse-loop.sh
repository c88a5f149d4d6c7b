#!/bin/bash
# One case-8 sample: fio (libaio, O_DIRECT) on a direct-I/O loop device over the fss FUSE
# file of a volume, or over the plain image (`plain`), as bench case 8 takes it (2 GiB image
# of random data, 3 s after a 1 s ramp, page cache dropped first), for quick A/B runs of two
# builds and for profiles. As root, from anywhere:
#
#   bench/fuse-loop.sh FSS_BINARY|plain read|write|randread|randwrite BS QD [perf]
#
# `perf`: also record the serving process for 3 s (perf.data in the work directory).
# Work directory: $BASE/fss-fuse-loop (BASE defaults to /var/tmp); the image is kept there.
# The loop device and the daemon are removed in every outcome.
set -euo pipefail
SERVER=$1; RW=$2; BS=$3; QD=$4; PERF=${5:-}
H=${BASE:-/var/tmp}/fss-fuse-loop; S=$H/state
SP=; DEV=
cleanup() {
    [ -n "$DEV" ] && losetup -d "$DEV" 2>/dev/null
    [ -n "$SP" ] && kill "$SP" 2>/dev/null && wait "$SP" 2>/dev/null
    true
}
trap cleanup EXIT
mkdir -p "$H"; rm -rf "$S"; mkdir -p "$S"
if [ ! -f "$H/img" ]; then
    fio --name=prefill --filename="$H/img" --size=2G --bs=1M --rw=write --ioengine=libaio \
        --iodepth=16 --direct=1 --output=/dev/null
fi
PID=
if [ "$SERVER" = plain ]; then
    TARGET=$H/img
else
    BIN=$(realpath "$SERVER")
    export FSS_STATE_DIR=$S
    "$BIN" serve >"$H/serve.log" 2>&1 & SP=$!
    for _ in $(seq 100); do "$BIN" status >/dev/null 2>&1 && break; sleep 0.1; done
    "$BIN" volume add vol --device "$H/img" >/dev/null
    read -r PID FDIR < <("$BIN" status --json |
        python3 -c 'import json, sys; j = json.load(sys.stdin); print(j["pid"], j["fuse_dir"])')
    TARGET=$FDIR/vol
    for _ in $(seq 100); do [ -e "$TARGET" ] && break; sleep 0.05; done
fi
DEV=$(losetup -f --show --direct-io=on "$TARGET")
sync; echo 3 >/proc/sys/vm/drop_caches
PP=
if [ -n "$PERF" ] && [ -n "$PID" ]; then
    (sleep 1; perf record -g -p "$PID" -o "$H/perf.data" -- sleep 3 >/dev/null 2>&1) & PP=$!
fi
fio --name=fuse-loop --ioengine=libaio --direct=1 --filename="$DEV" --rw="$RW" --bs="$BS" \
    --iodepth="$QD" --time_based --runtime=3 --ramp_time=1 --size=2G \
    --output-format=json --output="$H/fio.json" >/dev/null
if [ -n "$PP" ]; then wait "$PP"; fi
python3 - "$H/fio.json" "$SERVER $RW $BS qd$QD" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
print(f"{sys.argv[2]}: {d['bw'] / 1024:.0f} MB/s, {d['iops']:.0f} IOPS")
PY

#!/bin/bash
# One first-overwrite sample against one `fss serve`, as bench case 2 takes it in a full run
# (2 GiB image of random data, sample stopped after 4 s, page cache dropped first), for quick
# A/B runs of two builds and for profiles. As root, from anywhere:
#
#   bench/first-overwrite.sh FSS_BINARY none|transient|persistent 1M|4k QD [perf]
#
# 1M: sequential 1 MiB writes; 4k: 4 KiB writes, one into each 64 KiB cluster in a random
# order (the bench's iolog). `perf`: also record the serving process for 3 s (perf.data).
# Work directory: $BASE/fss-first-overwrite (BASE defaults to /var/tmp); the image and the
# iolog are kept there between runs.
set -euo pipefail
BIN=$(realpath "$1"); MODE=$2; BS=$3; QD=$4; PERF=${5:-}
H=${BASE:-/var/tmp}/fss-first-overwrite; S=$H/state
SP=
cleanup() { [ -n "$SP" ] && kill "$SP" 2>/dev/null && wait "$SP" 2>/dev/null; true; }
trap cleanup EXIT
mkdir -p "$H"; rm -rf "$S"; mkdir -p "$S"
if [ ! -f "$H/img" ]; then
    fio --name=prefill --filename="$H/img" --size=2G --bs=1M --rw=write --ioengine=libaio \
        --iodepth=16 --direct=1 --output=/dev/null
fi
if [ ! -f "$H/fresh.iolog" ]; then
    python3 - "$H/fresh.iolog" <<'PY'
import random, sys
clusters = list(range((2 << 30) // 65536))
random.Random(1).shuffle(clusters)
with open(sys.argv[1], "w") as f:
    f.write("fio version 2 iolog\nnbd add\nnbd open\n")
    f.writelines(f"nbd write {c * 65536} 4096\n" for c in clusters)
    f.write("nbd close\n")
PY
fi
export FSS_STATE_DIR=$S
"$BIN" serve >"$H/serve.log" 2>&1 & SP=$!
for _ in $(seq 100); do "$BIN" status >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN" volume add vol --device "$H/img" >/dev/null
case $MODE in
    transient) "$BIN" snapshot create vol s --transient >/dev/null ;;
    persistent) "$BIN" snapshot create vol s >/dev/null ;;
    none) ;;
    *) echo "mode: none, transient or persistent" >&2; exit 2 ;;
esac
PID=$("$BIN" status --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])')
sync; echo 3 >/proc/sys/vm/drop_caches
if [ "$BS" = 4k ]; then RW=(--read_iolog="$H/fresh.iolog"); else RW=(--rw=write); fi
PP=
if [ -n "$PERF" ]; then
    perf record -g -p "$PID" -o "$H/perf.data" -- sleep 3 >/dev/null 2>&1 & PP=$!
fi
fio --name=first-overwrite --ioengine=nbd --uri="nbd+unix:///vol?socket=$S/nbd.sock" \
    "${RW[@]}" --bs="$BS" --iodepth="$QD" --runtime=4 --size=2G \
    --output-format=json --output="$H/fio.json" >/dev/null
if [ -n "$PP" ]; then wait "$PP"; fi
python3 - "$H/fio.json" "$MODE $BS qd$QD" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print(f"{sys.argv[2]}: {w['bw'] / 1024:.0f} MB/s, {w['iops']:.0f} IOPS")
PY

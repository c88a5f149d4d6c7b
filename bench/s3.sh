#!/usr/bin/env bash
# bench/s3.sh - fss repository backups vs restic 0.14, side by side, on one Ceph RGW on
# loopback (tools/ceph-rgw/up.sh), in one run:
#   full backup of a 2 GiB volume holding 1.5 GiB of data (1 GiB random, 0.5 GiB text-like),
#   incremental after changing 0.5% of it (40 x 256 KiB at spread offsets),
#   restore of the second backup into a new file, and the bytes each stores (radosgw-admin).
# fss reads its snapshot through the daemon's change list; restic reads the snapshot's FUSE
# file (dev/SNAP) in full each time, as it must. Both repositories are encrypted.
# Usage (root; needs ceph-mon ceph-osd ceph-mgr radosgw ceph-common uuid-runtime restic):
#   bench/s3.sh            # about 3 minutes; prints a markdown table
# Env: FSS_BIN (default target/release/fss, built if missing), BASE (work dir parent,
#   default /var/tmp), CONNECTIONS (fss --connections, default 4), CHUNK (fss repo init
#   --chunk-size, default 1M).
# Only processes started here are stopped (by PID); the gateway is stopped in every outcome.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FSS=${FSS_BIN:-$ROOT/target/release/fss}
[ -x "$FSS" ] || cargo build --release -p fss-cli >/dev/null
CONN=${CONNECTIONS:-4}
W=$(mktemp -d "${BASE:-/var/tmp}/fss-s3bench.XXXXXX")
export D=$W/ceph FSS_STATE_DIR=$W/state FSS_REPO_CACHE=$W/cache
export AWS_ENDPOINT_URL=http://127.0.0.1:7480 AWS_ACCESS_KEY_ID=AKTEST AWS_SECRET_ACCESS_KEY=SKTEST \
  AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=s3:http://127.0.0.1:7480/restic/r
DAEMON=
cleanup() {
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null || true
  bash tools/ceph-rgw/down.sh >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
bucket() {
  curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user AKTEST:SKTEST \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X PUT "http://127.0.0.1:7480/$1"
}
stored() {
  radosgw-admin -c "$D/ceph.conf" bucket stats --bucket="$1" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["usage"].get("rgw.main",{}).get("size",0))'
}
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
mibs() { python3 -c "print(f'{$1 / 1048576 / ($3 - $2):.0f}')"; }

bash tools/ceph-rgw/up.sh >/dev/null
bucket fss; bucket restic
"$FSS" serve >"$W/serve.log" 2>&1 &
DAEMON=$!
for _ in $(seq 100); do "$FSS" status >/dev/null 2>&1 && break; sleep 0.1; done
"$FSS" volume create vol --size 2G >/dev/null
IMG=$FSS_STATE_DIR/dev/vol
# 1 GiB random, then 0.5 GiB of compressible text-like data.
dd if=/dev/urandom of="$IMG" bs=1M count=1024 oflag=direct conv=notrunc status=none
python3 - "$IMG" <<'PY'
import random, sys
random.seed(7)
words = [bytes(random.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(random.randint(2, 9))) for _ in range(5000)]
with open(sys.argv[1], "r+b") as f:
    f.seek(1 << 30)
    for _ in range(512):
        f.write(b" ".join(random.choice(words) for _ in range(200000))[: 1 << 20].ljust(1 << 20, b"\n"))
PY
sync
"$FSS" snapshot create vol s1 >/dev/null
"$FSS" repo init s3://fss/r --encrypt "$W/key" --chunk-size "${CHUNK:-1M}" >/dev/null
restic init >/dev/null 2>&1

t0=$(now); "$FSS" backup s1 s3://fss/r --key "$W/key" --connections "$CONN" >/dev/null; t1=$(now)
restic backup -q "$FSS_STATE_DIR/dev/s1" >/dev/null; t2=$(now)
FULL_FSS=$(secs "$t0" "$t1"); FULL_RESTIC=$(secs "$t1" "$t2")
FULL_FSS_R=$(mibs $((1536 << 20)) "$t0" "$t1"); FULL_RESTIC_R=$(mibs $((1536 << 20)) "$t1" "$t2")
S_FSS1=$(stored fss); S_RESTIC1=$(stored restic)

# 0.5% of 2 GiB: 40 x 256 KiB, spread over the data.
for i in $(seq 0 39); do
  dd if=/dev/urandom of="$IMG" bs=256K count=1 seek=$((i * 151 + 7)) oflag=direct conv=notrunc status=none
done
sync
"$FSS" snapshot create vol s2 >/dev/null
t0=$(now); "$FSS" backup s2 s3://fss/r --key "$W/key" --connections "$CONN" >/dev/null; t1=$(now)
restic backup -q "$FSS_STATE_DIR/dev/s2" >/dev/null; t2=$(now)
INC_FSS=$(secs "$t0" "$t1"); INC_RESTIC=$(secs "$t1" "$t2")
S_FSS2=$(stored fss); S_RESTIC2=$(stored restic)

ID=$("$FSS" repo list s3://fss/r --json --key "$W/key" | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
t0=$(now); "$FSS" restore s3://fss/r --backup "$ID" "$W/fss.img" --key "$W/key" --connections "$CONN" >/dev/null; t1=$(now)
restic restore -q latest --target "$W/restic" >/dev/null; t2=$(now)
REST_FSS=$(secs "$t0" "$t1"); REST_RESTIC=$(secs "$t1" "$t2")
REST_FSS_R=$(mibs $((2048 << 20)) "$t0" "$t1"); REST_RESTIC_R=$(mibs $((2048 << 20)) "$t1" "$t2")
RIMG=$(find "$W/restic" -type f -name s2)
[ "$(sha256sum <"$W/fss.img")" = "$(sha256sum <"$FSS_STATE_DIR/dev/s2")" ] || { echo "fss restore differs" >&2; exit 1; }
[ "$(sha256sum <"$RIMG")" = "$(sha256sum <"$FSS_STATE_DIR/dev/s2")" ] || { echo "restic restore differs" >&2; exit 1; }

ratio() { python3 -c "print(f'{$1 / $2:.2f}x')"; }
cat <<TABLE
| 2 GiB volume, 1.5 GiB data, Ceph RGW on loopback | fss ($(basename "$FSS"), --connections $CONN) | restic $(restic version | awk '{print $2}') | fss / restic |
|---|---|---|---|
| full backup | ${FULL_FSS} s (${FULL_FSS_R} MiB/s of data) | ${FULL_RESTIC} s (${FULL_RESTIC_R} MiB/s) | throughput $(ratio "$FULL_RESTIC" "$FULL_FSS") |
| incremental, 0.5% changed | ${INC_FSS} s | ${INC_RESTIC} s | time $(ratio "$INC_FSS" "$INC_RESTIC") |
| restore (2 GiB image) | ${REST_FSS} s (${REST_FSS_R} MiB/s) | ${REST_RESTIC} s (${REST_RESTIC_R} MiB/s) | throughput $(ratio "$REST_RESTIC" "$REST_FSS") |
| bytes stored after full | ${S_FSS1} | ${S_RESTIC1} | $(ratio "$S_FSS1" "$S_RESTIC1") |
| bytes stored after incremental | ${S_FSS2} | ${S_RESTIC2} | $(ratio "$S_FSS2" "$S_RESTIC2") |
TABLE

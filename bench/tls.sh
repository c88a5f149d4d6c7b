#!/usr/bin/env bash
# NBD over TLS: fss against plaintext TCP and against qemu-nbd with the same certificates.
# fio (ioengine=nbd, one job) reads a 512 MiB volume of random data held in the page cache:
# 1 MiB sequential reads (iodepth 8) and 4 KiB random reads (iodepth 16), ROUNDS rounds of
# SECONDS each, interleaved across servers; prints the median MiB/s and IOPS per server as a
# markdown table. Everything listens on 127.0.0.1 only.
#
#   bench/tls.sh [ROUNDS [SECONDS]]      # default 3 rounds of 10 s
#
# Needs a release build (cargo build --release -p fss-cli), fio, qemu-utils, libnbd-bin,
# openssl; run as root (fss serve mounts its FUSE directory).
set -euo pipefail
rounds=${1:-3}
secs=${2:-10}
repo=$(cd "$(dirname "$0")/.." && pwd)
fss=$repo/target/release/fss
[ -x "$fss" ] || { echo "build first: cargo build --release -p fss-cli" >&2; exit 1; }
work=$(mktemp -d /tmp/fss-tls-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  umount -l "$work/state/dev" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

sh "$repo/crates/fss-nbd/tests/make-certs.sh" "$work/certs"
certs=$work/certs
dd if=/dev/urandom of="$work/fss.img" bs=1M count=512 status=none
cp "$work/fss.img" "$work/qemu.img"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p_fss=$(port); p_qtls=$(port); p_qplain=$(port)

# fss with TLS offered (--tls on): TLS and plaintext clients on the same port.
FSS_STATE_DIR=$work/state FSS_RUN_DIR=$work/run FSS_LOG=info \
  "$fss" serve --nbd-listen "127.0.0.1:$p_fss" --tls on --tls-certificates "$certs/server" \
  >"$work/fss.out" 2>"$work/fss.log" &
pids+=($!)
for _ in $(seq 100); do grep -q ready "$work/fss.out" 2>/dev/null && break; sleep 0.1; done
FSS_STATE_DIR=$work/state "$fss" volume add v --device "$work/fss.img" >/dev/null

qemu-nbd -f raw -x v -b 127.0.0.1 -p "$p_qtls" -e 4 -t \
  --object "tls-creds-x509,id=tls0,endpoint=server,dir=$certs/server,verify-peer=no" \
  --tls-creds tls0 "$work/qemu.img" &
pids+=($!)
qemu-nbd -f raw -x v -b 127.0.0.1 -p "$p_qplain" -e 4 -t -r "$work/qemu.img" &
pids+=($!)
sleep 1

declare -A uri=(
  [fss-tcp]="nbd://127.0.0.1:$p_fss/v"
  [fss-tls]="nbds://127.0.0.1:$p_fss/v"
  [qemu-nbd-tcp]="nbd://127.0.0.1:$p_qplain/v"
  [qemu-nbd-tls]="nbds://127.0.0.1:$p_qtls/v"
)
servers=(fss-tcp fss-tls qemu-nbd-tcp qemu-nbd-tls)
# fio's nbd engine refuses tls-certificates in a URI (local file access): libnbd then looks in
# $HOME/.pki/libnbd for the CA.
mkdir -p "$work/home/.pki"
cp -r "$certs/anon" "$work/home/.pki/libnbd"
# Warm the page cache for both images.
cat "$work/fss.img" "$work/qemu.img" >/dev/null

run() { # server workload -> "MiB/s IOPS"
  local args
  case $2 in
    seq1m) args=(--rw=read --bs=1M --iodepth=8) ;;
    rand4k) args=(--rw=randread --bs=4k --iodepth=16) ;;
  esac
  HOME=$work/home fio --name=b --ioengine=nbd --uri="${uri[$1]}" --size=512M --time_based \
    --runtime="$secs" --numjobs=1 "${args[@]}" --output-format=json 2>"$work/fio.err" >"$work/fio.json" ||
    { echo "fio on $1 failed:" >&2; cat "$work/fio.err" "$work/fss.log" >&2; exit 1; }
  python3 -c 'import json,sys; t=sys.stdin.read(); r=json.loads(t[t.index("{"):])["jobs"][0]["read"];
print("%.1f %.0f" % (r["bw"]/1024, r["iops"]))' <"$work/fio.json"
}

declare -A res
for r in $(seq "$rounds"); do
  for w in seq1m rand4k; do
    for s in "${servers[@]}"; do
      last=$(run "$s" "$w")
      res[$s,$w]+="$last "
      echo "round $r $w $s: $last (MiB/s IOPS)" >&2
    done
  done
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "| server | 1 MiB seq. read, MiB/s | 4 KiB random read, IOPS |"
echo "|---|---|---|"
for s in "${servers[@]}"; do
  read -ra seq <<<"${res[$s,seq1m]}"
  read -ra rnd <<<"${res[$s,rand4k]}"
  bw=(); iops=()
  for ((i = 0; i < ${#seq[@]}; i += 2)); do bw+=("${seq[i]}"); done
  for ((i = 1; i < ${#rnd[@]}; i += 2)); do iops+=("${rnd[i]}"); done
  echo "| $s | $(median "${bw[@]}") | $(median "${iops[@]}") |"
done
echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs; rounds $rounds x ${secs}s"
echo "fss negotiated: $(grep -o 'tls=TLS[A-Z0-9_]*' "$work/fss.log" | sort -u | tr '\n' ' ')"

#!/bin/bash
# Same-run A/B: plaintext vs TLS corum local clusters (3 nodes x 1 shard), loadgen put and get.
set -u
B=${B:-target/release}
OUT=${OUT:-/tmp/tlsab}
for mode in plain tls; do
  D=$OUT/cluster-$mode; rm -rf $D
  FLAG=""; [ $mode = tls ] && FLAG="--tls"
  $B/corum local $FLAG --dir $D --base-port 26000 --no-metrics > $OUT/local-$mode.out 2>&1 &
  for i in $(seq 1 120); do grep -q "cluster ready" $OUT/local-$mode.out && break; sleep 0.5; done
  E=$(python3 -c "import json;print(json.load(open('$D/cluster.json'))['endpoints'])")
  PIDS=$(python3 -c "import json;print(','.join(str(n['pid']) for n in json.load(open('$D/cluster.json'))['nodes']))")
  TLS=""; [ $mode = tls ] && TLS="--cacert $D/tls/ca.pem --cert $D/tls/client.pem --key $D/tls/client-key.pem"
  for w in put get; do
    nice -n 0 $B/loadgen run --target corum --endpoints $E $TLS --workload $w --connections 16 --concurrency 256 \
      --duration 12s --warmup 3s --server-pids $PIDS --client-threads 1 --out-dir $OUT/reports --name tls-ab-$mode-$w \
      > $OUT/$mode-$w.txt 2> $OUT/$mode-$w.err
    tail -1 $OUT/$mode-$w.txt > $OUT/$mode-$w.json
  done
  SP=$(python3 -c "import json;print(json.load(open('$D/cluster.json'))['supervisor_pid'])")
  kill $SP; wait
done

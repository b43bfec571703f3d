#!/usr/bin/env bash
# A local Redis Cluster for development: 3 masters + 3 replicas from the redis-server binary on loopback ports.
#   deploy/local-cluster.sh start [DIR] [BASE_PORT]   # default DIR=./redis-cluster, BASE_PORT=30001 (bus: +10000)
#   deploy/local-cluster.sh stop  [DIR]
# Then: STEPLINE_REDIS_URL=redis+cluster://127.0.0.1:30001 stepline worker ...
# (tests/redis_cluster.py does the same for the test suite, on free ports.)
set -euo pipefail
cmd=${1:-start}
dir=${2:-./redis-cluster}
base=${3:-30001}
ports=$(seq "$base" $((base + 5)))

case "$cmd" in
  start)
    mkdir -p "$dir"
    for p in $ports; do
      mkdir -p "$dir/$p"
      redis-server --port "$p" --bind 127.0.0.1 --dir "$dir/$p" --daemonize yes \
        --pidfile "$dir/$p/redis.pid" --logfile "$dir/$p/redis.log" \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
        --appendonly yes --appendfsync everysec --save ""
    done
    for p in $ports; do
      for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
    done
    if [ "$(redis-cli -p "$base" cluster info | tr -d '\r' | grep -c '^cluster_state:ok')" = 0 ]; then
      # shellcheck disable=SC2046
      redis-cli --cluster create $(for p in $ports; do printf '127.0.0.1:%s ' "$p"; done) \
        --cluster-replicas 1 --cluster-yes >/dev/null
    fi
    for _ in $(seq 300); do
      ok=1
      for p in $ports; do
        redis-cli -p "$p" cluster info | tr -d '\r' | grep -q '^cluster_state:ok' || ok=0
      done
      [ "$ok" = 1 ] && break
      sleep 0.1
    done
    [ "$ok" = 1 ] || { echo "cluster did not reach cluster_state:ok" >&2; exit 1; }
    echo "redis+cluster://127.0.0.1:$base"
    ;;
  stop)
    for p in $ports; do
      if [ -f "$dir/$p/redis.pid" ]; then
        kill "$(cat "$dir/$p/redis.pid")" 2>/dev/null || true
      fi
    done
    ;;
  *)
    echo "usage: $0 start|stop [DIR] [BASE_PORT]" >&2
    exit 2
    ;;
esac

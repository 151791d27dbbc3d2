# The guest's workload (.ci/arm64): stanza on the file store on the virtio disk; a publisher
# and a live subscriber; a publisher and a replaying subscriber; kill -9 and a restart with
# every acknowledged message back; a replay of them all from disk. Exits non-zero on the first
# failure.
set -e
S=/bin/stanza
store=/mnt/store
n=${N:-4000}

start() {
  $S -a 127.0.0.1 -p 4222 -m 8222 --cores 2 -st file --dir "$store" > "/mnt/server-$1.log" 2>&1 &
  echo $! > /tmp/server.pid
  i=0
  until grep -q "Server is ready" "/mnt/server-$1.log" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 600 ]; then
      echo "step: server $1 not ready"
      return 1
    fi
    sleep 0.1
  done
  echo "step: server $1 ready ($(grep -o "DMA reads capped at [0-9]* KiB" "/mnt/server-$1.log" | head -1))"
}

# stanza bench with its report's rate lines shown; its errors in full when it fails.
bench() {
  if ! $S bench --timeout 100 "$@" > /tmp/bench.out 2> /tmp/bench.err; then
    echo "step: stanza bench $* failed:"
    cat /tmp/bench.out /tmp/bench.err
    return 1
  fi
  grep -E 'stats' /tmp/bench.out | sed 's/^/bench: /'
}

stored() {
  wget -qO- "http://127.0.0.1:8222/streaming/channelsz?channel=$1" | sed -n 's/.*"msgs": \([0-9]*\).*/\1/p'
}

expect_stored() {
  got=$(stored "$1")
  if [ "$got" != "$2" ]; then
    echo "step: channel $1 holds '$got' messages, $2 were acknowledged"
    return 1
  fi
}

start 1
echo "step: $n messages of 1 KiB, one publisher and one live subscriber"
bench --np 1 --ns 1 -n "$n" --ms 1024 live
echo "step: $n messages of 4 KiB, then a replaying subscriber (reads from disk)"
bench --np 1 -n "$n" --ms 4096 --replay replay
kill -9 "$(cat /tmp/server.pid)"
sleep 1
start 2
# The replay run publishes an end marker after its messages.
expect_stored live "$n"
expect_stored replay "$((n + 1))"
echo "step: after kill -9 every acknowledged message is back"
echo "step: replaying the $((n + 1)) messages of channel replay from disk"
bench --np 0 --ns 1 -n "$((n + 1))" replay
kill "$(cat /tmp/server.pid)"
wait
echo "step: done"

#!/usr/bin/env bash
# The offline demo (make demo-replay): replays deploy/demo/events.jsonl (recorded watch events of a "Greeter"
# custom resource, with a malformed line, a duplicate delivery, a bookmark and a 410 watch error)
# through a chain of three listeners: rust-logger (classname), rust-metrics (reference) and
# faulty (classname), which misbehaves as each object's kubelisten.dev/fault annotation asks:
# panic, infinite loop, memory blow-up, stack overflow, out-of-bounds access, error return.
# Every fault is contained and the next event is served normally.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${KUBELISTEN_BIN:-target/release/kubelisten}
exec "$bin" replay \
  --listener target/guests/rust-logger.wasm:classname \
  --listener target/guests/rust-metrics.wasm:reference \
  --listener target/guests/faulty.wasm:classname \
  --call-timeout-ms 200 \
  deploy/demo/events.jsonl "$@"

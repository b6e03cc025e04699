#!/usr/bin/env bash
# Original (Node.js Lambda algorithm) vs ours (Rust), same data, one run.
#
#   benches/original/run.sh
#   RACERS=10000 BATCHES=20 RECORDS=2000 SEED=1 REPEAT=1 benches/original/run.sh
#
# 1. generates the data into a temporary directory (generate.mjs),
# 2. runs the original merge (merge.mjs) and ours
#    (cargo run --release -p alleycat-loadtest --bin original-compare), each printing one JSON line,
# 3. checks both sets of published class files (check.mjs, untimed),
# 4. prints both lines and ratio = node median per-batch ms / ours median
#    per-batch ms; exit status 1 if a side fails or its output is wrong,
#    3 if the ratio is below MIN_RATIO (default 30).
#
# RUST_CMD replaces the command for our side (words split on spaces; it gets
# --data DIR --out DIR --repeat K appended and runs in the repository root).
# KEEP=1 keeps the temporary directory and prints its path.
set -euo pipefail

RACERS=${RACERS:-10000}
BATCHES=${BATCHES:-20}
RECORDS=${RECORDS:-2000}
SEED=${SEED:-1}
REPEAT=${REPEAT:-1}
MIN_RATIO=${MIN_RATIO:-30}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
command -v node >/dev/null || { echo "run.sh: node (20 or later) is required" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/alleycat-original.XXXXXX")
if [[ "${KEEP:-0}" == 1 ]]; then
  echo "run.sh: keeping $tmp" >&2
else
  trap 'rm -rf "$tmp"' EXIT
fi
data=$tmp/data

echo "== generating: RACERS=$RACERS BATCHES=$BATCHES RECORDS=$RECORDS SEED=$SEED" >&2
node "$here/generate.mjs" --out "$data" --racers "$RACERS" --batches "$BATCHES" \
  --records-per-batch "$RECORDS" --seed "$SEED"

echo "== original (node) merge, REPEAT=$REPEAT" >&2
node_line=$(node "$here/merge.mjs" --data "$data" --out "$tmp/out-node" --repeat "$REPEAT")

echo "== ours (original-compare)" >&2
if [[ -n "${RUST_CMD:-}" ]]; then
  read -r -a rust_cmd <<<"$RUST_CMD"
else
  rust_cmd=(cargo run --release --quiet -p alleycat-loadtest --bin original-compare --)
fi
set +e
rust_out=$(cd "$root" && "${rust_cmd[@]}" --data "$data" --out "$tmp/out-rust" --repeat "$REPEAT" 2>"$tmp/rust.stderr")
rust_rc=$?
set -e
rust_line=$(printf '%s\n' "$rust_out" | grep '^{' | tail -n 1 || true)
if [[ $rust_rc -ne 0 || -z "$rust_line" ]]; then
  echo "$node_line"
  if grep -q "no bin target named" "$tmp/rust.stderr"; then
    echo "run.sh: the Rust side (original-compare) is not built yet: cargo has no binary target 'original-compare'" >&2
  else
    why="exit status $rust_rc"
    [[ -z "$rust_line" ]] && why+=", no JSON line on stdout"
    echo "run.sh: the Rust side (original-compare) is not built yet or failed ($why); its stderr ends with:" >&2
    tail -n 20 "$tmp/rust.stderr" >&2
  fi
  exit 1
fi

echo "== checking published class files" >&2
ok=1
node "$here/check.mjs" --data "$data" --out "$tmp/out-node" --label node-original >&2 || ok=0
node "$here/check.mjs" --data "$data" --out "$tmp/out-rust" --label alleycat >&2 || ok=0

echo "$node_line"
echo "$rust_line"
status=0
node -e '
  const [a, b, min] = [JSON.parse(process.argv[1]), JSON.parse(process.argv[2]), Number(process.argv[3])];
  const r = a.per_batch_ms.median / b.per_batch_ms.median;
  console.log(`ratio (${a.impl} median / ${b.impl} median per batch): ${a.per_batch_ms.median} ms / ${b.per_batch_ms.median} ms = ${r.toFixed(1)}x (target >= ${min}x: ${r >= min ? "PASS" : "FAIL"})`);
  process.exit(r >= min ? 0 : 3);
' "$node_line" "$rust_line" "$MIN_RATIO" || status=$?
if [[ $ok -ne 1 ]]; then
  echo "run.sh: published class files differ from the expected merge (see check lines above)" >&2
  exit 1
fi
exit "$status"

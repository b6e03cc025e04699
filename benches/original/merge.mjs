#!/usr/bin/env node
// The ORIGINAL history merge (the S3-processor Lambda of the AWS sample), as
// the main README's "The system it replaces" describes it, run over the batches
// written by generate.mjs:
//
//   node merge.mjs --data DIR --out OUTDIR [--repeat K]
//
// For every delivery object, timed end to end:
//   zlib.gunzipSync -> split lines -> JSON.parse each -> group by classId ->
//   for each touched class: history[second][racerId] = max(existing, output)
//   in plain nested objects -> JSON.stringify(whole class) ->
//   zlib.gzipSync (default level) -> writeFileSync(OUTDIR/class-<c>.gz)
//
// One deliberate difference, in Node's favour: the Lambda re-read and
// re-parsed class-<c>.gz from S3 on every object; here each class history is
// loaded once (untimed) and kept in memory across batches.
//
// Prints one JSON line on stdout:
//   {"impl":"node-original","batches":B,"repeat":K,"records":R,
//    "per_batch_ms":{"median":..,"p90":..,"max":..},"total_ms":..,
//    "writes":..,"node":"v20..."}
// See README.md beside this file.

import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { gunzipSync, gzipSync } from "node:zlib";

const { values: opt } = parseArgs({
  strict: true,
  options: {
    data: { type: "string" },
    out: { type: "string" },
    repeat: { type: "string", default: "1" },
  },
});
const repeat = Number(opt.repeat);
if (!opt.data || !opt.out || !Number.isSafeInteger(repeat) || repeat < 1) {
  console.error("usage: node merge.mjs --data DIR --out OUTDIR [--repeat K]");
  process.exit(2);
}

// Delivery objects, in order (batch-0.gz, batch-1.gz, ...). Their bytes are
// read before timing: the timed work starts with the object in memory, as
// after the S3 GET.
const batchDir = join(opt.data, "batches");
const batchNames = readdirSync(batchDir)
  .map((f) => /^batch-(\d+)\.gz$/.exec(f))
  .filter(Boolean)
  .sort((a, b) => Number(a[1]) - Number(b[1]))
  .map((m) => m[0]);
if (batchNames.length === 0) {
  console.error(`merge.mjs: no batch-<k>.gz in ${batchDir}`);
  process.exit(2);
}
const batches = batchNames.map((f) => readFileSync(join(batchDir, f)));

// Starting histories (untimed). A class without a file starts empty.
function loadHistories() {
  const histories = {};
  for (let c = 1; c <= 6; c++) {
    const p = join(opt.data, "classes", `class-${c}.gz`);
    histories[c] = existsSync(p) ? JSON.parse(gunzipSync(readFileSync(p)).toString("utf8")) : {};
  }
  return histories;
}

mkdirSync(opt.out, { recursive: true });
const times = [];
let records = 0;
let writes = 0;

for (let pass = 0; pass < repeat; pass++) {
  // Every pass starts from the same histories, so every pass does the same work.
  const histories = loadHistories();

  for (const object of batches) {
    const t0 = process.hrtime.bigint();

    // 1. gunzip, split lines, parse each, group by class
    const lines = gunzipSync(object).toString("utf8").split("\n");
    const byClass = new Map();
    let n = 0;
    for (const line of lines) {
      if (line.length === 0) continue;
      const record = JSON.parse(line);
      n++;
      let group = byClass.get(record.classId);
      if (group === undefined) byClass.set(record.classId, (group = []));
      group.push(record);
    }

    // 2. per touched class: merge the maxima, then publish the whole class
    for (const [classId, group] of byClass) {
      const history = (histories[classId] ??= {});
      for (const { second, racerId, output } of group) {
        // Keys become the strings "second" and "racerId" (JavaScript property
        // keys); indexing with the numbers is the same key, without the
        // String() call.
        let row = history[second];
        if (row === undefined) row = history[second] = {};
        const existing = row[racerId];
        row[racerId] = existing === undefined ? output : Math.max(existing, output);
      }
      writeFileSync(join(opt.out, `class-${classId}.gz`), gzipSync(JSON.stringify(history)));
      writes++;
    }

    const t1 = process.hrtime.bigint();
    times.push(Number(t1 - t0) / 1e6);
    if (pass === 0) records += n;
  }
}

// Nearest-rank quantile: the ceil(q*n)-th smallest sample.
const sorted = [...times].sort((a, b) => a - b);
const q = (p) => sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)];
const ms = (x) => Math.round(x * 1000) / 1000;
console.log(
  JSON.stringify({
    impl: "node-original",
    batches: batches.length,
    repeat,
    records,
    per_batch_ms: { median: ms(q(0.5)), p90: ms(q(0.9)), max: ms(sorted[sorted.length - 1]) },
    total_ms: ms(times.reduce((a, b) => a + b, 0)),
    writes,
    node: process.version,
  }),
);

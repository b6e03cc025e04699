#!/usr/bin/env node
// Data generator for the "original vs ours" history-merge benchmark.
//
//   node generate.mjs --out DIR [--racers 10000] [--batches 20]
//                     [--records-per-batch 2000] [--seed 1]
//                     [--seconds-per-batch 5] [--new-racer-share 0.01]
//                     [--history-draws 4]
//
// Writes, deterministically from the parameters (Node 20, node: built-ins only):
//   DIR/classes/class-<c>.gz   c = 1..6: starting history of class c, as the
//                              original stored it: gzip of JSON
//                              {"<second>": {"<racerId>": best}}
//   DIR/batches/batch-<k>.gz   k = 0..B-1: delivery objects (gzipped NDJSON,
//                              one telemetry message + "output" per line)
//   DIR/manifest.json          parameters, counts and file sizes
// See README.md beside this file.

import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { gzipSync } from "node:zlib";

const RACE_SECONDS = 300;
const CLASSES = 6;
const FIRST_RACE_ID = 5397285; // floor(epoch_ms / 300000) on 2021-04-23, as in the reference

const { values: opt } = parseArgs({
  strict: true,
  options: {
    out: { type: "string" },
    racers: { type: "string", default: "10000" },
    batches: { type: "string", default: "20" },
    "records-per-batch": { type: "string", default: "2000" },
    seed: { type: "string", default: "1" },
    "seconds-per-batch": { type: "string", default: "5" },
    "new-racer-share": { type: "string", default: "0.01" },
    "history-draws": { type: "string", default: "4" },
  },
});

function intArg(name, min) {
  const v = Number(opt[name]);
  if (!Number.isSafeInteger(v) || v < min) {
    console.error(`generate.mjs: --${name} must be an integer >= ${min}, got ${opt[name]}`);
    process.exit(2);
  }
  return v;
}
if (!opt.out) {
  console.error("usage: node generate.mjs --out DIR --racers N --batches B --records-per-batch R --seed S");
  process.exit(2);
}
const N = intArg("racers", 1);
const B = intArg("batches", 1);
const R = intArg("records-per-batch", 1);
const SEED = intArg("seed", 0);
const S = intArg("seconds-per-batch", 1);
const DRAWS = intArg("history-draws", 1);
const NEW_SHARE = Number(opt["new-racer-share"]);
if (!(NEW_SHARE >= 0 && NEW_SHARE <= 1)) {
  console.error(`generate.mjs: --new-racer-share must be in 0..1, got ${opt["new-racer-share"]}`);
  process.exit(2);
}

// ---- deterministic PRNG: mulberry32, one independent stream per purpose ----
function mix(...xs) {
  let h = 0x9e3779b9;
  for (const x of xs) {
    h = Math.imul(h ^ (x >>> 0), 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
  }
  return h >>> 0;
}
function rng(...xs) {
  let a = mix(SEED % 2 ** 32, Math.floor(SEED / 2 ** 32), ...xs);
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const STREAM_HISTORY = 1, STREAM_BATCH = 2, STREAM_RACE = 3;

// Typical ranges of the reference (cadence 30-90, resistance 33-86), 2 decimals.
const cadence = (r) => Math.round((30 + 60 * r()) * 100) / 100;
const resistance = (r) => Math.round((33 + 53 * r()) * 100) / 100;
// The contract's formula: 4 decimals, scaled by 100 in one step.
const output = (c, s) => Math.round((c + 35) * (s + 65) * 100) / 1e4;
const classOf = (racerId) => (racerId % CLASSES) + 1;

const out = opt.out;
rmSync(join(out, "classes"), { recursive: true, force: true });
rmSync(join(out, "batches"), { recursive: true, force: true });
mkdirSync(join(out, "classes"), { recursive: true });
mkdirSync(join(out, "batches"), { recursive: true });

// ---- starting class histories ----
// Racer i (1..N) rides in class i%6+1 and has a best at every second 1..300:
// the best of DRAWS past rides (so a new ride beats it with probability
// about 1/(DRAWS+1)).
const history = {};
for (let c = 1; c <= CLASSES; c++) history[c] = {};
{
  const r = rng(STREAM_HISTORY);
  for (let second = 1; second <= RACE_SECONDS; second++) {
    const rows = [];
    for (let c = 1; c <= CLASSES; c++) rows[c] = history[c][second] = {};
    for (let id = 1; id <= N; id++) {
      let best = 0;
      for (let d = 0; d < DRAWS; d++) best = Math.max(best, output(cadence(r), resistance(r)));
      rows[classOf(id)][id] = best;
    }
  }
}
const classFiles = [];
for (let c = 1; c <= CLASSES; c++) {
  const json = JSON.stringify(history[c]);
  const gz = gzipSync(json);
  const file = `classes/class-${c}.gz`;
  writeFileSync(join(out, file), gz);
  const racers = Object.keys(history[c][1] ?? {}).length;
  classFiles.push({ classId: c, file, racers, entries: racers * RACE_SECONDS, rawBytes: Buffer.byteLength(json), gzBytes: gz.length });
}

// ---- delivery batches ----
// Batch k holds R records of the race being ridden now: race seconds
// S*k+1 .. S*k+S (counted across races; race second = that mod 300, 1-based;
// a new raceId every 300 seconds), about R/S records per second, one per
// participant. Each race has P = ceil(R/S) participants drawn from all
// classes (racers 1..N, plus a share of newcomers N+1.. with no history yet);
// if P > N+newcomers, participants repeat within a second (= duplicate
// deliveries, which at-least-once delivery produces anyway).
const P = Math.ceil(R / S);
const raceCache = new Map();
function participants(race) {
  let list = raceCache.get(race);
  if (list) return list;
  const r = rng(STREAM_RACE, race);
  const pool = Array.from({ length: N }, (_, i) => i + 1);
  const take = Math.min(P, N);
  for (let i = 0; i < take; i++) {
    const j = i + Math.floor(r() * (N - i));
    [pool[i], pool[j]] = [pool[j], pool[i]];
  }
  list = pool.slice(0, take);
  for (let slot = 0; slot < list.length; slot++) {
    if (r() < NEW_SHARE) list[slot] = N + 1 + race * P + slot; // unique newcomer id
  }
  raceCache.clear(); // races are consecutive: keep only the current one
  raceCache.set(race, list);
  return list;
}

let totalRecords = 0;
let improving = 0;
const batchFiles = [];
for (let k = 0; k < B; k++) {
  const r = rng(STREAM_BATCH, k);
  const lines = [];
  const seconds = [];
  for (let o = 0; o < S; o++) {
    const count = Math.floor(R / S) + (o < R % S ? 1 : 0);
    if (count === 0) continue;
    const abs = S * k + o; // 0-based second counted across races
    const race = Math.floor(abs / RACE_SECONDS);
    const second = (abs % RACE_SECONDS) + 1;
    const raceId = FIRST_RACE_ID + race;
    seconds.push(second);
    const ids = participants(race);
    const start = Math.floor(r() * ids.length); // rotate so lines are not always in the same order
    for (let i = 0; i < count; i++) {
      const racerId = ids[(start + i) % ids.length];
      const classId = classOf(racerId);
      const cad = cadence(r);
      const res = resistance(r);
      const value = output(cad, res);
      const rec = {
        event: second === RACE_SECONDS ? "final" : "update",
        deviceTimestamp: raceId * 300000 + (second - 1) * 1000 + Math.floor(r() * 1000),
        second,
        raceId,
        name: `Racer ${racerId}`,
        racerId,
        classId,
        cadence: cad,
        resistance: res,
        output: value,
      };
      lines.push(JSON.stringify(rec) + "\n");
      // Track the running maxima only to report how many records improve a best.
      const row = (history[classId][second] ??= {});
      const prev = row[racerId];
      if (prev === undefined || value > prev) {
        improving++;
        row[racerId] = value;
      }
    }
  }
  const text = lines.join("");
  const gz = gzipSync(text);
  const file = `batches/batch-${k}.gz`;
  writeFileSync(join(out, file), gz);
  totalRecords += lines.length;
  batchFiles.push({ file, records: lines.length, seconds, rawBytes: Buffer.byteLength(text), gzBytes: gz.length });
}

const manifest = {
  generator: "benches/original/generate.mjs",
  racers: N,
  batches: B,
  recordsPerBatch: R,
  seed: SEED,
  secondsPerBatch: S,
  newRacerShare: NEW_SHARE,
  historyDraws: DRAWS,
  raceSeconds: RACE_SECONDS,
  classes: CLASSES,
  firstRaceId: FIRST_RACE_ID,
  participantsPerRace: Math.min(P, N),
  records: totalRecords,
  improvingRecords: improving,
  classFiles,
  classRawBytes: classFiles.reduce((a, f) => a + f.rawBytes, 0),
  classGzBytes: classFiles.reduce((a, f) => a + f.gzBytes, 0),
  batchRawBytes: batchFiles.reduce((a, f) => a + f.rawBytes, 0),
  batchGzBytes: batchFiles.reduce((a, f) => a + f.gzBytes, 0),
  batchFiles,
  node: process.version,
};
writeFileSync(join(out, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
console.error(
  `generate.mjs: ${N} racers, ${B} batches x ${R} records (${improving} improve a best) -> ${out}; ` +
    `class files ${(manifest.classRawBytes / 1e6).toFixed(1)} MB raw, ${(manifest.classGzBytes / 1e6).toFixed(1)} MB gz`,
);

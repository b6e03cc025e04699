#!/usr/bin/env node
// Checks the class files a merge published (either implementation) against
// an independent recomputation from the same inputs:
//
//   node check.mjs --data DIR --out OUTDIR [--label NAME]
//
// Expected = starting history (DIR/classes) merged with every record of every
// batch (DIR/batches) by max per (class, second, racerId), computed here with
// a flat Map, not with the merge code. For each class touched by a batch,
// OUTDIR/class-<c>.gz must exist, gunzip, JSON.parse to the reference format
// ({"<second>": {"<racerId>": number}}, both keys decimal strings without
// leading zeros, second 1..3600) and hold exactly the expected entries and
// values, in a single gzip member. A class no batch touched needs no file;
// if there is one, it must hold the starting history. Prints one JSON line;
// exit status 1 if anything differs. Not timed, not part of the benchmark.

import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { gunzipSync, inflateRawSync } from "node:zlib";

// Number of gzip members in buf (RFC 1952). Browsers' DecompressionStream
// ("gzip") accepts exactly one member and fails on anything after it (see
// whatwg/compression#42), while Node's gunzipSync silently decodes all of
// them, so a published file must be checked for this separately.
function gzipMembers(buf) {
  let pos = 0, members = 0;
  while (pos < buf.length) {
    if (buf[pos] !== 0x1f || buf[pos + 1] !== 0x8b || buf[pos + 2] !== 8) throw new Error(`no gzip header at byte ${pos}`);
    const flg = buf[pos + 3];
    let p = pos + 10;
    if (flg & 4) p += 2 + (buf[p] | (buf[p + 1] << 8)); // FEXTRA
    if (flg & 8) p = buf.indexOf(0, p) + 1; // FNAME
    if (flg & 16) p = buf.indexOf(0, p) + 1; // FCOMMENT
    if (flg & 2) p += 2; // FHCRC
    const { engine } = inflateRawSync(buf.subarray(p), { info: true });
    pos = p + engine.bytesWritten + 8; // deflate data + CRC32 + ISIZE
    members++;
  }
  return members;
}

const { values: opt } = parseArgs({
  strict: true,
  options: { data: { type: "string" }, out: { type: "string" }, label: { type: "string", default: "" } },
});
if (!opt.data || !opt.out) {
  console.error("usage: node check.mjs --data DIR --out OUTDIR [--label NAME]");
  process.exit(2);
}

const expected = {}; // classId -> Map("second:racerId" -> best)
for (let c = 1; c <= 6; c++) {
  const m = (expected[c] = new Map());
  const p = join(opt.data, "classes", `class-${c}.gz`);
  if (!existsSync(p)) continue;
  const h = JSON.parse(gunzipSync(readFileSync(p)).toString("utf8"));
  for (const s of Object.keys(h)) for (const r of Object.keys(h[s])) m.set(`${s}:${r}`, h[s][r]);
}
const touched = new Set();
let records = 0, improving = 0;
const batchDir = join(opt.data, "batches");
const names = readdirSync(batchDir)
  .map((f) => /^batch-(\d+)\.gz$/.exec(f))
  .filter(Boolean)
  .sort((a, b) => Number(a[1]) - Number(b[1]));
for (const [f] of names) {
  for (const line of gunzipSync(readFileSync(join(batchDir, f))).toString("utf8").split("\n")) {
    if (!line) continue;
    const rec = JSON.parse(line);
    records++;
    touched.add(rec.classId);
    const m = expected[rec.classId];
    const key = `${rec.second}:${rec.racerId}`;
    const prev = m.get(key);
    if (prev === undefined || rec.output > prev) {
      improving++;
      m.set(key, rec.output);
    }
  }
}

const errors = [];
const err = (msg) => { if (errors.length < 20) errors.push(msg); };
const SECOND = /^([1-9][0-9]{0,2}|[12][0-9]{3}|3[0-5][0-9]{2}|3600)$/;
const RACER = /^(0|[1-9][0-9]*)$/;
let entries = 0, rawBytes = 0, gzBytes = 0, files = 0;
for (let c = 1; c <= 6; c++) {
  const p = join(opt.out, `class-${c}.gz`);
  if (!existsSync(p)) {
    if (touched.has(c)) err(`class-${c}.gz missing`);
    continue;
  }
  files++;
  const gz = readFileSync(p);
  gzBytes += gz.length;
  let h;
  try {
    const members = gzipMembers(gz);
    if (members !== 1) err(`class-${c}.gz: ${members} gzip members; browsers' DecompressionStream reads exactly one`);
    const raw = gunzipSync(gz);
    rawBytes += raw.length;
    h = JSON.parse(raw.toString("utf8"));
  } catch (e) { err(`class-${c}.gz: not gzip JSON: ${e.message}`); continue; }
  if (typeof h !== "object" || h === null || Array.isArray(h)) { err(`class-${c}.gz: not a JSON object`); continue; }
  const m = expected[c];
  let n = 0;
  for (const s of Object.keys(h)) {
    if (!SECOND.test(s)) err(`class ${c}: bad second key ${JSON.stringify(s)}`);
    const row = h[s];
    if (typeof row !== "object" || row === null || Array.isArray(row)) { err(`class ${c}: second ${s} is not an object`); continue; }
    for (const r of Object.keys(row)) {
      n++;
      if (!RACER.test(r)) err(`class ${c}: bad racerId key ${JSON.stringify(r)}`);
      const v = row[r], want = m.get(`${s}:${r}`);
      if (typeof v !== "number" || !(v >= 0)) err(`class ${c} [${s}][${r}]: not a number >= 0: ${JSON.stringify(v)}`);
      else if (v !== want) err(`class ${c} [${s}][${r}] = ${v}, expected ${want}`);
    }
  }
  if (n !== m.size) err(`class ${c}: ${n} entries, expected ${m.size}`);
  entries += n;
}

console.log(JSON.stringify({ check: opt.label || opt.out, ok: errors.length === 0, records, improving, classFiles: files, entries, rawBytes, gzBytes, errors }));
process.exit(errors.length === 0 ? 0 : 1);

#!/usr/bin/env node
// Writes the test vectors that pin Alleycat's numbers to the original
// system's JavaScript, computed here by Node itself (no npm packages):
//
//   services/core/tests/data/output-vectors.tsv.gz
//     cadence<TAB>resistance<TAB>output, one triple a line, where
//       value  = ((cadence + 35) * (resistance + 65)) / 100
//       output = Number(Math.round(value+'e'+4)+'e-'+4)
//     exactly as the original's real-time functions computed it, every
//     number written with String() (JavaScript's shortest round-trip text).
//     Mix: a grid of the realistic range (cadence 30.00-90.00 by 0.01 at
//     7 resistances), random realistic inputs (cadence with 2 decimals,
//     resistance 33.0-86.0 with 1 or 2), random inputs over the whole valid
//     range 0-1000 with 0 to 6 decimals or full precision, and inputs whose
//     value sits on a tie of the 4th decimal (found by search).
//
//   services/core/tests/data/js-number-vectors.tsv.gz
//     bits<TAB>json<TAB>rounded, one double a line: its IEEE-754 bits (16
//     hex digits), JSON.stringify of it, and JSON.stringify of
//     Number(Math.round(v+'e'+4)+'e-'+4) (null when that is NaN). Doubles:
//     random bit patterns, random values of many magnitudes and decimals,
//     integers around 2^53 and 1e21, powers of ten and their neighbours,
//     subnormals, extremes, NaN and the infinities.
//
// Deterministic (a seeded generator): the same Node version writes the same
// lines. Usage: node scripts/make-output-vectors.js [OUT_DIR]
'use strict';
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');

const outDir = process.argv[2] || path.join(__dirname, '..', 'services', 'core', 'tests', 'data');

// mulberry32: a small seeded 32-bit generator.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0);
  };
}
const next = rng(20240511);
const uniform = () => next() / 4294967296; // [0, 1)
const int = (lo, hi) => lo + Math.floor(uniform() * (hi - lo + 1)); // [lo, hi]

// The original's expression, verbatim.
const round = (value, decimals) => Number(Math.round(value + 'e' + decimals) + 'e-' + decimals);
const output = (cadence, resistance) => round(((cadence + 35) * (resistance + 65)) / 100, 4);

// ---- output vectors ----
const triples = [];
const add = (c, r) => triples.push(`${c}\t${r}\t${output(c, r)}`);

// Known cases: the example and the README's.
add(30.01, 63.5);
add(80.25, 78.5);
add(0, 0);
add(1000, 1000);
add(30, 33);
add(90, 86);

// Grid of the realistic range.
for (const r of [33, 47.3, 55.55, 63.5, 70.1, 78.5, 86]) {
  for (let i = 3000; i <= 9000; i++) add(i / 100, r);
}
// Random realistic inputs.
for (let n = 0; n < 35000; n++) {
  const c = int(3000, 9000) / 100;
  const r = n % 2 ? int(330, 860) / 10 : int(3300, 8600) / 100;
  add(c, r);
}
// The whole valid range, various decimals.
for (let n = 0; n < 20000; n++) {
  const decimals = n % 8;
  let c, r;
  if (decimals === 7) {
    c = uniform() * 1000;
    r = uniform() * 1000;
  } else {
    const scale = 10 ** decimals;
    c = int(0, 1000 * scale) / scale;
    r = int(0, 1000 * scale) / scale;
  }
  add(c, r);
}
// Ties: the value's 5th decimal is a 5 (or close to it, in binary).
const isTie = (c, r) => {
  const shifted = (((c + 35) * (r + 65)) / 100) * 1e4;
  return Math.abs(shifted - Math.floor(shifted) - 0.5) < 1e-6;
};
let ties = 0;
for (let tries = 0; ties < 12000 && tries < 10000000; tries++) {
  let c, r;
  if (tries % 3 === 2) {
    c = int(0, 100000) / 100;
    r = int(0, 10000) / 10;
  } else {
    c = int(3000, 9000) / 100;
    r = tries % 3 ? int(330, 860) / 10 : int(3300, 8600) / 100;
  }
  if (isTie(c, r)) {
    add(c, r);
    ties++;
  }
}

// ---- JSON number vectors ----
const view = new DataView(new ArrayBuffer(8));
const fromBits = (hi, lo) => {
  view.setUint32(0, hi);
  view.setUint32(4, lo);
  return view.getFloat64(0);
};
const bitsOf = (v) => {
  view.setFloat64(0, v);
  return view.getUint32(0).toString(16).padStart(8, '0') + view.getUint32(4).toString(16).padStart(8, '0');
};
// The next double up (toward +infinity) and down, for positive finite v.
const up = (v) => {
  view.setFloat64(0, v);
  const big = view.getBigUint64(0) + 1n;
  view.setBigUint64(0, big);
  return view.getFloat64(0);
};
const down = (v) => {
  view.setFloat64(0, v);
  const big = view.getBigUint64(0) - 1n;
  view.setBigUint64(0, big);
  return view.getFloat64(0);
};
const numbers = [];
const num = (v) => numbers.push(`${bitsOf(v)}\t${JSON.stringify(v)}\t${JSON.stringify(round(v, 4))}`);

for (const v of [0, -0, NaN, Infinity, -Infinity, Number.MIN_VALUE, -Number.MIN_VALUE,
  Number.MAX_VALUE, 2.2250738585072014e-308, 2.225073858507201e-308, Number.EPSILON,
  Number.MAX_SAFE_INTEGER, 2 ** 53, 2 ** 53 + 2, 2 ** 60, 2 ** 64, 1e21, 999999999999999900000,
  1e-6, 1e-7, 0.000001234, 0.0000001234, 81, 81.5, 165.38375, 83.53785, 0.5, 1.5, 2.5, -0.5,
  -1.5, -2.5, 0.00005, 0.00015, 0.00025, 1.00005, 22.75, 11022.75, 5e-5, 4.9999e-5]) {
  num(v);
}
for (let e = -325; e <= 309; e++) {
  const p = Number(`1e${e}`);
  if (p > 0 && Number.isFinite(p)) {
    num(p);
    num(up(p));
    num(down(p));
    num(-p);
    num(Number(`5e${e}`));
    num(Number(`1.5e${e}`));
    num(Number(`1.23456789012345678e${e}`));
  }
}
for (let k = 0; k < 1000; k++) {
  num(2 ** 53 + k * 2 ** (k % 20));
  num(2 ** 53 - k);
  num(1e21 - k * 65536);
  num(1e21 + k * 131072);
}
for (let n = 0; n < 8000; n++) {
  // Random bit patterns: every exponent and sign.
  num(fromBits(next(), next()));
}
for (let n = 0; n < 16000; n++) {
  // Random values of many magnitudes, full precision.
  num((uniform() * 10) * 10 ** int(-12, 25) * (n % 5 === 0 ? -1 : 1));
}
for (let n = 0; n < 12000; n++) {
  // Short decimals of outputs' and class files' magnitudes, and ties.
  const decimals = int(0, 8);
  const v = int(0, 2 ** 31) / 10 ** decimals;
  num(v);
  num(Math.floor(v * 1e4) / 1e4 + 0.00005);
}
for (let n = 0; n < 6000; n++) {
  // Realistic outputs, unrounded (as the original's history files hold them).
  num(((int(3000, 9000) / 100 + 35) * (int(330, 860) / 10 + 65)) / 100);
}

fs.mkdirSync(outDir, { recursive: true });
const write = (name, header, lines) => {
  const text = `${header}\n${lines.join('\n')}\n`;
  const file = path.join(outDir, name);
  fs.writeFileSync(file, zlib.gzipSync(text, { level: 9 }));
  console.log(`${file}: ${lines.length} lines, ${text.length} bytes, node ${process.version}`);
};
write('output-vectors.tsv.gz', 'cadence\tresistance\toutput', triples);
write('js-number-vectors.tsv.gz', 'bits\tjson\trounded', numbers);

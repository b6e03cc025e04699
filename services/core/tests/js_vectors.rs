//! Alleycat's numbers against the original's JavaScript, on vectors Node
//! computed.
//!
//! How the files were made: `node scripts/make-output-vectors.js` (Node
//! v20.20.2, no npm packages; the script is seeded, so it writes the same
//! files again), which writes, gzipped, into `tests/data/`:
//!
//! - `output-vectors.tsv.gz`: 109,013 lines `cadence<TAB>resistance<TAB>output`
//!   after a header, each number as `String()` writes it, where `output` is
//!   `Number(Math.round(value+'e'+4)+'e-'+4)` of
//!   `value = ((cadence + 35) * (resistance + 65)) / 100`, the original's
//!   real-time expression verbatim. Inputs: a grid of the realistic range
//!   (cadence 30.00-90.00 by 0.01 at 7 resistances from 33.0 to 86.0),
//!   random realistic inputs (cadence with 2 decimals, resistance 33.0-86.0
//!   with 1 or 2), random inputs over the whole valid range 0-1000 with 0 to
//!   6 decimals or full precision, and 12,000 inputs whose value is within
//!   1e-6 of a tie of the 4th decimal.
//! - `js-number-vectors.tsv.gz`: 62,464 lines `bits<TAB>json<TAB>rounded`:
//!   a double's bits (hex), `JSON.stringify` of it, and `JSON.stringify` of
//!   that same rounding applied to it; doubles of every kind (random bit
//!   patterns, magnitudes from 1e-12 to 1e26 and decimals, integers around
//!   2^53 and 1e21, powers of ten and their neighbours, subnormals, NaN,
//!   the infinities).
//!
//! Every line must match bit for bit and byte for byte.

use alleycat_core::js_number;
use serde::Serialize as _;
use std::io::Read as _;

fn lines(name: &str) -> Vec<String> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let gz = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    text.lines().skip(1).map(str::to_owned).collect()
}

fn json(value: f64) -> String {
    let mut out = Vec::new();
    js_number::write(value, &mut out);
    String::from_utf8(out).unwrap()
}

/// The same value through serde_json with the JavaScript formatter.
fn serde_json_text(value: f64) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, js_number::JsonFormatter);
    value.serialize(&mut serializer).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn outputs_match_javascript_bit_for_bit() {
    let lines = lines("output-vectors.tsv.gz");
    assert!(lines.len() >= 100_000, "{} vectors", lines.len());
    let mut failures = Vec::new();
    // Rounding the double itself (what Alleycat did before) is wrong on
    // enough of these to tell the two apart.
    let mut naive_differs = 0;
    for line in &lines {
        let mut fields = line.split('\t');
        let (Some(cadence), Some(resistance), Some(expected), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            panic!("malformed line {line:?}");
        };
        let cadence: f64 = cadence.parse().unwrap();
        let resistance: f64 = resistance.parse().unwrap();
        let got = alleycat_core::output(cadence, resistance);
        let wanted: f64 = expected.parse().unwrap();
        let naive = ((cadence + 35.0) * (resistance + 65.0) * 100.0).round() / 10_000.0;
        naive_differs += usize::from(naive != wanted);
        if got.to_bits() != wanted.to_bits() || json(got) != expected {
            failures.push(format!("{line}: got {}", json(got)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ, e.g. {:?}",
        failures.len(),
        lines.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(naive_differs > 1000, "only {naive_differs} vectors tell");
}

#[test]
fn numbers_are_written_and_rounded_as_javascript() {
    let lines = lines("js-number-vectors.tsv.gz");
    assert!(lines.len() >= 50_000, "{} vectors", lines.len());
    let mut failures = Vec::new();
    for line in &lines {
        let fields: Vec<&str> = line.split('\t').collect();
        let [bits, text, rounded] = fields[..] else {
            panic!("malformed line {line:?}");
        };
        let value = f64::from_bits(u64::from_str_radix(bits, 16).unwrap());
        if json(value) != text || serde_json_text(value) != text {
            failures.push(format!(
                "{line}: written {} / {}",
                json(value),
                serde_json_text(value)
            ));
        }
        let got = js_number::round(value, 4);
        let same = if rounded == "null" {
            got.is_nan()
        } else {
            got.to_bits() == rounded.parse::<f64>().unwrap().to_bits()
        };
        if !same || json(got) != rounded {
            failures.push(format!("{line}: rounded {}", json(got)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ, e.g. {:?}",
        failures.len(),
        lines.len(),
        &failures[..failures.len().min(10)]
    );
}

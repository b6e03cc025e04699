//! Reading class-file JSON (`{"1": {"101": 152.34, ...}, ...}`) into each
//! second's bests as a vector in racer order, checked as it is parsed, with
//! no map of maps built on the way: its readers keep the bests in the shape
//! they need ([`super::ClassHistory`]'s maps, rankings' sorted vectors),
//! and building a map of maps first cost more than the parse (in the
//! stretch run, rankings indexing six class files every 10 s was 7% of the
//! server's CPU, most of it building maps).

use super::{HistoryError, MAX_CLASS_FILE_BYTES};
use crate::codec;
use crate::telemetry::{RacerId, Second};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::collections::BTreeMap;

/// [`read_seconds`] of a published, gzipped class file (`class-N.gz`),
/// decompressed up to [`MAX_CLASS_FILE_BYTES`].
pub fn read_class_file(gz: &[u8]) -> Result<BTreeMap<Second, Vec<(RacerId, f64)>>, HistoryError> {
    read_seconds(&codec::gunzip(gz, MAX_CLASS_FILE_BYTES)?)
}

/// Each second of the class-file JSON `json` and its bests, ordered by
/// racer id, checking that every second is in range and every output finite
/// and not negative. As in a map parsed from the file, a second or a racer
/// listed twice keeps its later entry; a second with no bests is left out.
pub fn read_seconds(json: &[u8]) -> Result<BTreeMap<Second, Vec<(RacerId, f64)>>, HistoryError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    deserializer
        .deserialize_map(Seconds)
        .and_then(|seconds| deserializer.end().map(|()| seconds))
        .map_err(|e| HistoryError::Format(e.to_string()))
}

struct Seconds;

impl<'de> Visitor<'de> for Seconds {
    type Value = BTreeMap<Second, Vec<(RacerId, f64)>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map of seconds to each racer's best")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seconds = BTreeMap::new();
        while let Some(second) = map.next_key::<u64>()? {
            let second = Second::new(second)
                .ok_or_else(|| de::Error::custom(format!("second {second} out of range")))?;
            let bests = map.next_value_seed(Bests(second))?;
            if bests.is_empty() {
                seconds.remove(&second);
            } else {
                seconds.insert(second, bests);
            }
        }
        Ok(seconds)
    }
}

/// One second's bests; the second is named in errors.
struct Bests(Second);

impl<'de> DeserializeSeed<'de> for Bests {
    type Value = Vec<(RacerId, f64)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Bests {
    type Value = Vec<(RacerId, f64)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a map of racers to their best at second {}", self.0)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut bests = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(racer) = map.next_key::<u64>()? {
            let output: f64 = map.next_value()?;
            if !(output.is_finite() && output >= 0.0) {
                return Err(de::Error::custom(format!(
                    "output {output} of racer {racer} at second {} is not a valid output",
                    self.0
                )));
            }
            bests.push((RacerId(racer), output));
        }
        let bests = by_racer(bests);
        // The JSON gives no count, so the vector grew by doubling; what
        // reads the file keeps it (the rankings' all-time index), and the
        // slack was up to half of it (a heap profile: 84 MB where the
        // bests need 29). A copy, not `shrink_to_fit`: mimalloc keeps a
        // block shrunk by less than half as it is, slack included.
        if bests.capacity() == bests.len() {
            Ok(bests)
        } else {
            Ok(bests.as_slice().to_vec())
        }
    }
}

/// `bests` ordered by racer, the later of a racer's entries kept. A file
/// Alleycat wrote is in this order already, and passes through untouched.
fn by_racer(mut bests: Vec<(RacerId, f64)>) -> Vec<(RacerId, f64)> {
    if bests.is_sorted_by(|a, b| a.0 < b.0) {
        return bests;
    }
    // Stable, so the later of a racer's entries stays later.
    bests.sort_by_key(|&(racer, _)| racer);
    let mut kept: Vec<(RacerId, f64)> = Vec::with_capacity(bests.len());
    for entry in bests {
        match kept.last_mut() {
            Some(last) if last.0 == entry.0 => *last = entry,
            _ => kept.push(entry),
        }
    }
    kept
}

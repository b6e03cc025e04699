//! Reading class-file JSON (`{"1": {"101": 152.34, ...}, ...}`) a second at
//! a time, each checked as it is parsed, with no map built on the way: its
//! readers keep the bests in the shape they need ([`super::ClassHistory`]'s
//! maps, rankings' sorted vectors), and building a map of maps first cost
//! more than the parse (in the stretch run, rankings indexing six class
//! files every 10 s was 7% of the server's CPU, most of it building maps).

use super::HistoryError;
use crate::telemetry::{RacerId, Second};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

/// Calls `each` with every second of the class-file JSON `json` and its
/// bests in the file's order (ascending racer ids in a file Alleycat wrote),
/// checking that every second is in range and every output finite and not
/// negative. A second listed twice is given twice: as with a map, the later
/// stands. A second with no bests is given too, empty.
pub fn read_seconds(
    json: &[u8],
    each: impl FnMut(Second, Vec<(RacerId, f64)>),
) -> Result<(), HistoryError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    deserializer
        .deserialize_map(Seconds(each))
        .and_then(|()| deserializer.end())
        .map_err(|e| HistoryError::Format(e.to_string()))
}

struct Seconds<F>(F);

impl<'de, F: FnMut(Second, Vec<(RacerId, f64)>)> Visitor<'de> for Seconds<F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map of seconds to each racer's best")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(second) = map.next_key::<u64>()? {
            let second = Second::new(second)
                .ok_or_else(|| de::Error::custom(format!("second {second} out of range")))?;
            let bests = map.next_value_seed(Bests(second))?;
            (self.0)(second, bests);
        }
        Ok(())
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
        Ok(bests)
    }
}

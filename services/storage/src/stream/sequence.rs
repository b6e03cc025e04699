//! Sequence numbers: a record's position in its shard.
//!
//! Kinesis hands them out as decimal strings (56 digits today, up to 129
//! by its API: beyond `u128`); the embedded stream numbers its records with
//! a `u64`. Either way they are compared as numbers, and written out exactly
//! as the stream gave them, because they appear in object keys, lease and
//! checkpoint objects and pending deliveries that are already stored.
//!
//! One Kinesis record may carry many user records in the KPL aggregated
//! format; each of those has the Kinesis record's sequence number and its
//! own *sub-sequence* number (0, 1, ...), written `<digits>.<sub>`. A
//! sequence number without a sub-sequence stands for the whole Kinesis
//! record, so it sorts after every user record within it: a checkpoint
//! taken before aggregation existed still covers the whole record.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A record's position in its shard; sequence numbers of one shard sort in
/// stream order.
///
/// Equality is numeric, like the order: `"007"` equals `"7"`, though each
/// displays as it was parsed.
#[derive(Clone)]
pub struct SequenceNumber {
    position: Repr,
    /// The user record's index within an aggregated Kinesis record.
    sub: Option<u32>,
}

#[derive(Clone)]
enum Repr {
    /// An embedded-stream position, kept as a number so the stream needs no
    /// parsing to use it.
    Index(u64),
    /// Decimal digits as the stream gave them (at least one, nothing else).
    Digits(Box<str>),
}

/// Why a string is not a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a sequence number (decimal digits, optionally `.` and a sub-sequence): {0:?}")]
pub struct ParseSequenceError(String);

impl SequenceNumber {
    /// The number as a `u64`, if it fits (every embedded-stream position
    /// does) and has no sub-sequence.
    #[must_use]
    pub fn to_u64(&self) -> Option<u64> {
        if self.sub.is_some() {
            return None;
        }
        match &self.position {
            Repr::Index(n) => Some(*n),
            Repr::Digits(digits) => digits.parse().ok(),
        }
    }

    /// User record `sub` of the (aggregated) record at this position.
    #[must_use]
    pub fn with_sub_sequence(self, sub: u32) -> SequenceNumber {
        SequenceNumber {
            sub: Some(sub),
            ..self
        }
    }

    /// The user record's index within its aggregated record, if it has one.
    #[must_use]
    pub fn sub_sequence(&self) -> Option<u32> {
        self.sub
    }

    /// The position of the whole stream record, without a sub-sequence:
    /// what the stream itself knows (for example to start reading at).
    #[must_use]
    pub fn record_position(&self) -> SequenceNumber {
        SequenceNumber {
            position: self.position.clone(),
            sub: None,
        }
    }

    /// The digits without leading zeros ("0" for zero), for comparing.
    fn normalized(&self) -> Cow<'_, str> {
        match &self.position {
            Repr::Index(n) => Cow::Owned(n.to_string()),
            Repr::Digits(digits) => {
                let trimmed = digits.trim_start_matches('0');
                Cow::Borrowed(if trimmed.is_empty() { "0" } else { trimmed })
            }
        }
    }
}

impl From<u64> for SequenceNumber {
    fn from(index: u64) -> Self {
        SequenceNumber {
            position: Repr::Index(index),
            sub: None,
        }
    }
}

impl FromStr for SequenceNumber {
    type Err = ParseSequenceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ParseSequenceError(text.to_owned());
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        let (position, sub) = match text.split_once('.') {
            Some((position, sub)) if digits(sub) => {
                (position, Some(sub.parse().map_err(|_| bad())?))
            }
            Some(_) => return Err(bad()),
            None => (text, None),
        };
        if !digits(position) {
            return Err(bad());
        }
        Ok(SequenceNumber {
            position: Repr::Digits(position.into()),
            sub,
        })
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.position {
            // Zero-padded, so embedded positions sort as strings too (the
            // format the embedded stream has always written).
            Repr::Index(n) => write!(f, "{n:020}")?,
            Repr::Digits(digits) => f.write_str(digits)?,
        }
        match self.sub {
            Some(sub) => write!(f, ".{sub}"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SequenceNumber({self})")
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let position = if let (Repr::Index(a), Repr::Index(b)) = (&self.position, &other.position) {
            a.cmp(b)
        } else {
            // Without leading zeros, a longer number is a larger one.
            let (a, b) = (self.normalized(), other.normalized());
            a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
        };
        // No sub-sequence: the whole record, after each of its user records.
        position.then_with(|| match (self.sub, other.sub) {
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for SequenceNumber {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for SequenceNumber {}

impl Serialize for SequenceNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SequenceNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seq(text: &str) -> SequenceNumber {
        text.parse().unwrap()
    }

    const KINESIS: &str = "49617562271853452710231452089870573953214820913201119234";

    #[test]
    fn sequences_compare_as_numbers() {
        assert!(seq("9") < seq("10"));
        assert!(seq("00000000000000000010") > seq("9"));
        let next = "49617562271853452710231452089870573953214820913201119235";
        assert!(seq(KINESIS) < seq(next));
        assert_eq!(seq(KINESIS).cmp(&seq(KINESIS)), Ordering::Equal);
        assert!(seq(KINESIS) > SequenceNumber::from(u64::MAX));
        assert_eq!(seq("0"), seq("000"));
    }

    #[test]
    fn leading_zeros_do_not_count_but_are_kept() {
        assert_eq!(seq("00000000000000000003"), SequenceNumber::from(3));
        assert!(seq("0004") > SequenceNumber::from(3));
        assert!(seq("0000000000000000000000000000002") < SequenceNumber::from(10));
        assert_eq!(seq("007").to_string(), "007");
        assert_eq!(seq("007").to_u64(), Some(7));
    }

    #[test]
    fn embedded_positions_display_zero_padded() {
        let three = SequenceNumber::from(3);
        assert_eq!(three.to_string(), "00000000000000000003");
        assert_eq!(three.to_u64(), Some(3));
        assert_eq!(seq(KINESIS).to_u64(), None, "beyond u64");
    }

    #[test]
    fn only_decimal_digits_parse() {
        for bad in [
            "",
            "x",
            "-1",
            "+1",
            "1 ",
            "１",
            "1.",
            ".1",
            "1.2.3",
            "1.x",
            "1.99999999999",
        ] {
            assert_eq!(
                bad.parse::<SequenceNumber>(),
                Err(ParseSequenceError(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn serializes_as_the_string_it_was_read_from() {
        for text in [KINESIS, "00000000000000000000", "42"] {
            let json = format!("\"{text}\"");
            let parsed: SequenceNumber = serde_json::from_str(&json).unwrap();
            assert_eq!(serde_json::to_string(&parsed).unwrap(), json);
        }
        assert_eq!(
            serde_json::to_string(&SequenceNumber::from(5)).unwrap(),
            "\"00000000000000000005\""
        );
        assert!(serde_json::from_str::<SequenceNumber>("\"5a\"").is_err());
        assert!(serde_json::from_str::<SequenceNumber>("5").is_err());
    }

    #[test]
    fn user_records_of_an_aggregate_sort_within_it_and_before_the_whole() {
        let record = seq(KINESIS);
        let first = record.clone().with_sub_sequence(0);
        let second = record.clone().with_sub_sequence(1);
        assert!(first < second);
        assert!(second < record, "the whole record covers its user records");
        assert!(seq("49617562271853452710231452089870573953214820913201119233") < first);
        let next = seq("49617562271853452710231452089870573953214820913201119235");
        assert!(second < next.clone().with_sub_sequence(0));
        assert_eq!(second.record_position(), record);
        assert_eq!(second.sub_sequence(), Some(1));
        assert_eq!(record.sub_sequence(), None);
        assert_eq!(second.to_u64(), None);
        assert_eq!(SequenceNumber::from(7).with_sub_sequence(2).to_u64(), None);
    }

    #[test]
    fn a_sub_sequence_is_written_after_a_dot_and_read_back() {
        let second = seq(KINESIS).with_sub_sequence(12);
        let text = format!("{KINESIS}.12");
        assert_eq!(second.to_string(), text);
        assert_eq!(seq(&text), second);
        let json = serde_json::to_string(&second).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(
            serde_json::from_str::<SequenceNumber>(&json).unwrap(),
            second
        );
    }

    proptest! {
        #[test]
        fn sub_sequences_order_like_pairs(a in 0..1000u64, b in 0..1000u64, sub_a: Option<u32>, sub_b: Option<u32>) {
            let make = |n: u64, sub: Option<u32>| {
                let position = seq(&n.to_string());
                match sub { Some(s) => position.with_sub_sequence(s), None => position }
            };
            // `None` is the whole record: after any of its sub-sequences.
            let key = |n: u64, sub: Option<u32>| (n, sub.map_or(u64::MAX, u64::from));
            let (x, y) = (make(a, sub_a), make(b, sub_b));
            prop_assert_eq!(x.cmp(&y), key(a, sub_a).cmp(&key(b, sub_b)));
            prop_assert_eq!(seq(&x.to_string()), x);
        }

        #[test]
        fn order_agrees_with_the_numbers(a: u128, b: u128, pad_a in 0..5usize, pad_b in 0..5usize) {
            let a_text = format!("{}{a}", "0".repeat(pad_a));
            let b_text = format!("{}{b}", "0".repeat(pad_b));
            prop_assert_eq!(seq(&a_text).cmp(&seq(&b_text)), a.cmp(&b));
        }

        #[test]
        fn embedded_positions_order_like_parsed_ones(a: u64, b: u64) {
            let (index, parsed) = (SequenceNumber::from(a), seq(&b.to_string()));
            prop_assert_eq!(index.cmp(&parsed), a.cmp(&b));
            prop_assert_eq!(parsed.cmp(&index), b.cmp(&a));
            prop_assert_eq!(index.cmp(&SequenceNumber::from(b)), a.cmp(&b));
        }
    }
}

//! How the embedded stream lays its records out in the database: the
//! records of a commit are packed, in sequence order, into a few values of
//! up to [`PACK_BYTES`], each keyed by the sequence of its first record.
//!
//! One B-tree entry per record made the inserts most of the writer's CPU
//! and every read walk one entry per record (profile of the pipeline
//! bench: `redb` inserts were half of the writer thread); a commit of
//! thousands of records now inserts a handful of values.
//!
//! A value: `count: u32 LE`, then `count` entries of
//! `arrival_ms: i64 LE, len: u32 LE, data`. The records of a value have
//! consecutive sequences from its key.

/// Most bytes packed into one value; a larger record is a value of its own.
pub(super) const PACK_BYTES: usize = 256 << 10;

const COUNT_BYTES: usize = 4;
const ENTRY_HEADER: usize = 12;

/// A value the stream did not write (a bug, or a damaged file that redb's
/// checksums let through): reading refuses it rather than guess.
#[derive(Debug, thiserror::Error)]
#[error("a packed value of the stream database is malformed ({0})")]
pub(super) struct Malformed(&'static str);

/// Packs records appended in sequence order into values: each full value
/// is handed to `emit` with the sequence of its first record. Returns the
/// sequence after the last record.
pub(super) fn pack<'a, E>(
    first: u64,
    records: impl IntoIterator<Item = (i64, &'a [u8])>,
    mut emit: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let mut value = Vec::with_capacity(PACK_BYTES.min(64 << 10));
    let (mut key, mut count, mut next) = (first, 0u32, first);
    for (arrival_ms, data) in records {
        if count > 0 && value.len() + ENTRY_HEADER + data.len() > PACK_BYTES {
            value[..COUNT_BYTES].copy_from_slice(&count.to_le_bytes());
            emit(key, &value)?;
            (key, count) = (next, 0);
        }
        if count == 0 {
            value.clear();
            value.extend_from_slice(&0u32.to_le_bytes());
        }
        let len = u32::try_from(data.len()).expect("a record is far below 4 GiB");
        value.extend_from_slice(&arrival_ms.to_le_bytes());
        value.extend_from_slice(&len.to_le_bytes());
        value.extend_from_slice(data);
        count += 1;
        next += 1;
    }
    if count > 0 {
        value[..COUNT_BYTES].copy_from_slice(&count.to_le_bytes());
        emit(key, &value)?;
    }
    Ok(next)
}

/// How many records `value` holds.
pub(super) fn count(value: &[u8]) -> Result<u64, Malformed> {
    let bytes = value
        .get(..COUNT_BYTES)
        .ok_or(Malformed("shorter than its count"))?;
    Ok(u64::from(u32::from_le_bytes(
        bytes.try_into().expect("4 bytes"),
    )))
}

/// The records of `value` in sequence order: `(arrival_ms, data)`.
pub(super) fn unpack(value: &[u8]) -> Result<Unpacked<'_>, Malformed> {
    let left = count(value)?;
    Ok(Unpacked {
        rest: &value[COUNT_BYTES..],
        left,
    })
}

pub(super) struct Unpacked<'a> {
    rest: &'a [u8],
    left: u64,
}

impl<'a> Iterator for Unpacked<'a> {
    type Item = Result<(i64, &'a [u8]), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return (!self.rest.is_empty())
                .then_some(Err(Malformed("bytes after its last record")));
        }
        self.left -= 1;
        let Some((header, rest)) = self.rest.split_at_checked(ENTRY_HEADER) else {
            // One error, then the end (not a second error for the rest).
            (self.left, self.rest) = (0, &[]);
            return Some(Err(Malformed("a record header cut short")));
        };
        let arrival_ms = i64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[8..].try_into().expect("4 bytes")) as usize;
        let Some((data, rest)) = rest.split_at_checked(len) else {
            (self.left, self.rest) = (0, &[]);
            return Some(Err(Malformed("a record cut short")));
        };
        self.rest = rest;
        Some(Ok((arrival_ms, data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packed(first: u64, records: &[(i64, Vec<u8>)]) -> (u64, Vec<(u64, Vec<u8>)>) {
        let mut values = Vec::new();
        let next = pack(
            first,
            records.iter().map(|(a, d)| (*a, d.as_slice())),
            |key, value| {
                values.push((key, value.to_vec()));
                Ok::<_, ()>(())
            },
        )
        .unwrap();
        (next, values)
    }

    proptest! {
        #[test]
        fn every_record_comes_back_once_in_order_under_its_sequence(
            first in 0u64..1 << 40,
            records in proptest::collection::vec(
                (any::<i64>(), proptest::collection::vec(any::<u8>(), 0..40_000)),
                0..40,
            ),
        ) {
            let (next, values) = packed(first, &records);
            prop_assert_eq!(next, first + records.len() as u64);
            let mut back = Vec::new();
            let mut expected_key = first;
            for (key, value) in &values {
                prop_assert_eq!(*key, expected_key, "keys are the first sequence of each value");
                let n = count(value).unwrap();
                prop_assert!(n > 0);
                prop_assert!(value.len() <= PACK_BYTES || n == 1, "only a lone record exceeds the cap");
                for entry in unpack(value).unwrap() {
                    let (arrival, data) = entry.unwrap();
                    back.push((arrival, data.to_vec()));
                }
                expected_key += n;
            }
            prop_assert_eq!(back, records);
        }
    }

    #[test]
    fn records_fill_values_up_to_the_cap_and_a_larger_one_stands_alone() {
        let small = vec![7u8; 100 << 10];
        let huge = vec![9u8; PACK_BYTES * 2];
        let records = [
            (1, small.clone()),
            (2, small.clone()),
            (3, small),
            (4, huge),
        ];
        let (_, values) = packed(10, &records);
        let counts: Vec<(u64, u64)> = values
            .iter()
            .map(|(k, v)| (*k, count(v).unwrap()))
            .collect();
        assert_eq!(counts, [(10, 2), (12, 1), (13, 1)]);
    }

    #[test]
    fn a_malformed_value_is_refused_not_guessed() {
        let (_, values) = packed(0, &[(5, b"hello".to_vec())]);
        let value = &values[0].1;
        for cut in [2, 10, value.len() - 1] {
            let result: Result<Vec<_>, _> = match unpack(&value[..cut]) {
                Ok(entries) => entries.collect(),
                Err(e) => Err(e),
            };
            assert!(result.is_err(), "cut at {cut} was accepted");
        }
        for cut in [10, value.len() - 1] {
            let errors = unpack(&value[..cut])
                .unwrap()
                .filter(Result::is_err)
                .count();
            assert_eq!(errors, 1, "cut at {cut}: one error, then the end");
        }
        let mut longer = value.clone();
        longer.push(0);
        assert!(
            unpack(&longer).unwrap().any(|e| e.is_err()),
            "trailing bytes were accepted"
        );
    }
}

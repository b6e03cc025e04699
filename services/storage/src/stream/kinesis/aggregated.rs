//! The KPL aggregated-record format: many user records in one Kinesis
//! record, as the Kinesis Producer Library writes them and the KCL (and
//! Firehose, and AWS's aggregation libraries) read them.
//!
//! A record is the 4 magic bytes, a protobuf `AggregatedRecord`, and the
//! MD5 digest of that protobuf. Anything else (no magic, a digest that does
//! not match, a protobuf that does not parse) is a plain record, as the KCL
//! treats it: other producers put plain records, and one that merely starts
//! with the magic bytes must not be lost.

use bytes::{BufMut as _, Bytes, BytesMut};
use md5::{Digest as _, Md5};
use prost::Message as _;
use prost::encoding::encoded_len_varint;
use std::collections::HashMap;

/// What an aggregated record starts with.
const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
/// The MD5 digest that ends it.
const DIGEST_LEN: usize = 16;

/// Largest aggregated record this producer makes, all framing included: the
/// KPL's default (`AggregationMaxSize`), well under Kinesis's 1 MiB record.
pub(super) const MAX_AGGREGATE_BYTES: usize = 51_200;

/// The protobuf messages, as `aggregation-format.md` of the KPL defines them
/// (proto2: required fields are written even when zero or empty).
#[derive(Clone, PartialEq, prost::Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<Record>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "bytes", required, tag = "3")]
    data: Bytes,
    #[prost(message, repeated, tag = "4")]
    tags: Vec<Tag>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Tag {
    #[prost(string, required, tag = "1")]
    key: String,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

/// The user records' data in a Kinesis record's `data`, in order, or `None`
/// when it is a plain record.
#[must_use]
pub(super) fn user_records(data: &Bytes) -> Option<Vec<Bytes>> {
    let message = decode(data)?;
    let keys = message.partition_key_table.len() as u64;
    // A user record pointing past the key table is a broken aggregate; the
    // KCL rejects it, and so it stays one plain (and invalid) record here.
    if message
        .records
        .iter()
        .any(|r| r.partition_key_index >= keys)
    {
        return None;
    }
    Some(message.records.into_iter().map(|r| r.data).collect())
}

fn decode(data: &Bytes) -> Option<AggregatedRecord> {
    if data.len() < MAGIC.len() + DIGEST_LEN || !data.starts_with(&MAGIC) {
        return None;
    }
    let body = data.slice(MAGIC.len()..data.len() - DIGEST_LEN);
    let digest = &data[data.len() - DIGEST_LEN..];
    if Md5::digest(&body).as_slice() != digest {
        return None;
    }
    AggregatedRecord::decode(body).ok()
}

/// User records being packed into one aggregated record.
#[derive(Default)]
pub(super) struct Aggregate {
    message: AggregatedRecord,
    /// Each partition key's index in the table, so a key is stored once.
    key_index: HashMap<String, u64>,
    /// The encoded protobuf's length so far.
    body_len: usize,
}

impl Aggregate {
    /// How many user records it holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.message.records.len()
    }

    /// The Kinesis record's size (framing included) once a user record
    /// with this key and data is added.
    pub(super) fn size_with(&self, partition_key: &str, data: &[u8]) -> usize {
        let (index, new_key) = match self.key_index.get(partition_key) {
            Some(&index) => (index, 0),
            None => {
                let index = self.message.partition_key_table.len() as u64;
                (index, field_len(partition_key.len()))
            }
        };
        MAGIC.len()
            + self.body_len
            + new_key
            + field_len(record_len(index, data.len()))
            + DIGEST_LEN
    }

    /// Adds a user record.
    pub(super) fn push(&mut self, partition_key: &str, data: Bytes) {
        let index = match self.key_index.get(partition_key) {
            Some(&index) => index,
            None => {
                let index = self.message.partition_key_table.len() as u64;
                self.message
                    .partition_key_table
                    .push(partition_key.to_owned());
                self.key_index.insert(partition_key.to_owned(), index);
                self.body_len += field_len(partition_key.len());
                index
            }
        };
        self.body_len += field_len(record_len(index, data.len()));
        self.message.records.push(Record {
            partition_key_index: index,
            explicit_hash_key_index: None,
            data,
            tags: Vec::new(),
        });
    }

    /// The partition key of its first user record (the KPL's choice for the
    /// Kinesis record's own key), if it holds any.
    pub(super) fn first_partition_key(&self) -> Option<&str> {
        self.message.partition_key_table.first().map(String::as_str)
    }

    /// The Kinesis record's data: magic, protobuf, digest.
    pub(super) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(MAGIC.len() + self.body_len + DIGEST_LEN);
        out.put_slice(&MAGIC);
        self.message
            .encode(&mut out)
            .expect("the buffer grows as needed");
        let digest = Md5::digest(&out[MAGIC.len()..]);
        out.put_slice(&digest);
        debug_assert_eq!(out.len(), MAGIC.len() + self.body_len + DIGEST_LEN);
        out.freeze()
    }
}

/// Bytes of a length-delimited field with a one-byte tag.
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Bytes of a `Record` message with this key index and data length.
fn record_len(partition_key_index: u64, data_len: usize) -> usize {
    1 + encoded_len_varint(partition_key_index) + field_len(data_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use proptest::prelude::*;

    /// One record made by AWS's Python aggregator (`aws_kinesis_agg`); see
    /// `tests/data/make-kpl-aggregated-record.py`.
    fn reference() -> (Bytes, Vec<(String, Bytes)>) {
        let text = include_str!("../../../tests/data/kpl-aggregated-record.json");
        let json: serde_json::Value = serde_json::from_str(text).unwrap();
        let data = base64::engine::general_purpose::STANDARD
            .decode(json["data_base64"].as_str().unwrap())
            .unwrap();
        let users = json["user_records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                let key = u["partition_key"].as_str().unwrap().to_owned();
                let data = u["data"].as_str().unwrap().as_bytes().to_vec();
                (key, Bytes::from(data))
            })
            .collect();
        (Bytes::from(data), users)
    }

    fn aggregate(users: &[(String, Bytes)]) -> Aggregate {
        let mut aggregate = Aggregate::default();
        for (key, data) in users {
            aggregate.push(key, data.clone());
        }
        aggregate
    }

    #[test]
    fn reads_what_the_aws_aggregator_wrote() {
        let (data, users) = reference();
        let expected: Vec<Bytes> = users.iter().map(|(_, d)| d.clone()).collect();
        assert_eq!(user_records(&data), Some(expected));
        let keys: Vec<String> = users.iter().map(|(k, _)| k.clone()).collect();
        let message = decode(&data).unwrap();
        let read: Vec<String> = message
            .records
            .iter()
            .map(|r| message.partition_key_table[r.partition_key_index as usize].clone())
            .collect();
        assert_eq!(read, keys);
    }

    #[test]
    fn writes_what_the_aws_aggregator_writes_byte_for_byte() {
        let (data, users) = reference();
        let ours = aggregate(&users);
        assert_eq!(ours.encode(), data);
        assert_eq!(ours.first_partition_key(), Some("17"));
        assert_eq!(ours.len(), 4);
    }

    #[test]
    fn anything_else_is_a_plain_record() {
        let (data, _) = reference();
        let mut bad_digest = data.to_vec();
        *bad_digest.last_mut().unwrap() ^= 1;
        let mut bad_body = data.to_vec();
        bad_body[6] ^= 0x40;
        let mut key_past_table = Aggregate::default();
        key_past_table.push("1", Bytes::from_static(b"x"));
        key_past_table.message.records[0].partition_key_index = 5;
        for plain in [
            Bytes::from_static(b"{\"racerId\":1}"),
            Bytes::new(),
            Bytes::from(MAGIC.to_vec()),
            data.slice(..MAGIC.len() + DIGEST_LEN - 1),
            Bytes::from(bad_digest),
            Bytes::from(bad_body),
            key_past_table.encode(),
        ] {
            assert_eq!(user_records(&plain), None, "{plain:?}");
        }
        // Magic, an empty protobuf and its digest: an aggregate of nothing.
        assert_eq!(user_records(&Aggregate::default().encode()), Some(vec![]));
    }

    proptest! {
        #[test]
        fn user_records_come_back_in_order_and_sizes_are_exact(
            users in proptest::collection::vec(("[0-9]{1,6}", proptest::collection::vec(any::<u8>(), 0..300)), 0..60),
        ) {
            let mut aggregate = Aggregate::default();
            for (key, data) in &users {
                let predicted = aggregate.size_with(key, data);
                aggregate.push(key, Bytes::from(data.clone()));
                prop_assert_eq!(aggregate.encode().len(), predicted);
            }
            let expected: Vec<Bytes> = users.iter().map(|(_, d)| Bytes::from(d.clone())).collect();
            prop_assert_eq!(user_records(&aggregate.encode()), Some(expected));
        }
    }
}

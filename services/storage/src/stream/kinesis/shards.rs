//! The stream's shards: listing them, and which open shard a partition key
//! goes to (for the producer, so that it aggregates only records bound for
//! the same shard).

use super::{describe, unavailable};
use crate::stream::StreamError;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::Shard;
use md5::{Digest as _, Md5};

/// Every shard of the stream, open and closed, across ListShards pages.
pub(super) async fn list(client: &Client, stream_name: &str) -> Result<Vec<Shard>, StreamError> {
    let mut shards = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        let request = client.list_shards();
        // ListShards takes either the stream name or a continuation token.
        let request = match &next_token {
            Some(token) => request.next_token(token),
            None => request.stream_name(stream_name),
        };
        let page = request
            .send()
            .await
            .map_err(|e| unavailable("ListShards", describe(&e)))?;
        shards.extend(page.shards.unwrap_or_default());
        next_token = page.next_token;
        if next_token.is_none() {
            return Ok(shards);
        }
    }
}

/// Where Kinesis puts a record: the 128-bit MD5 of its partition key, as a
/// number, falls in exactly one open shard's hash key range.
pub(super) fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// An open shard's hash key range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OpenShard {
    pub(super) id: String,
    pub(super) starting_hash_key: u128,
    pub(super) ending_hash_key: u128,
}

/// The open shards, by hash key range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ShardMap {
    /// Sorted by starting hash key; the ranges do not overlap.
    open: Vec<OpenShard>,
}

impl ShardMap {
    /// The map of the open shards among `shards` (a closed shard has an
    /// ending sequence number). Shards whose ranges do not parse are left
    /// out: their records are put without aggregation.
    pub(super) fn of(shards: &[Shard]) -> ShardMap {
        let mut open: Vec<OpenShard> = shards
            .iter()
            .filter(|s| {
                s.sequence_number_range
                    .as_ref()
                    .is_none_or(|r| r.ending_sequence_number.is_none())
            })
            .filter_map(|s| {
                let range = s.hash_key_range.as_ref()?;
                Some(OpenShard {
                    id: s.shard_id.clone(),
                    starting_hash_key: range.starting_hash_key.parse().ok()?,
                    ending_hash_key: range.ending_hash_key.parse().ok()?,
                })
            })
            .collect();
        open.sort_by_key(|s| s.starting_hash_key);
        ShardMap { open }
    }

    /// The open shard `partition_key`'s records go to, if the map knows it.
    pub(super) fn shard_of(&self, partition_key: &str) -> Option<&OpenShard> {
        self.shard_of_hash(hash_key(partition_key))
    }

    /// The open shard whose range holds `hash`, if the map knows it.
    pub(super) fn shard_of_hash(&self, hash: u128) -> Option<&OpenShard> {
        let after = self.open.partition_point(|s| s.starting_hash_key <= hash);
        let shard = self.open.get(after.checked_sub(1)?)?;
        (hash <= shard.ending_hash_key).then_some(shard)
    }
}

/// A listed shard with this hash key range, closed or open, for tests.
#[cfg(test)]
pub(super) fn listed_shard(id: &str, start: u128, end: u128, closed: bool) -> Shard {
    use aws_sdk_kinesis::types::{HashKeyRange, SequenceNumberRange};
    Shard::builder()
        .shard_id(id)
        .hash_key_range(
            HashKeyRange::builder()
                .starting_hash_key(start.to_string())
                .ending_hash_key(end.to_string())
                .build()
                .unwrap(),
        )
        .sequence_number_range(
            SequenceNumberRange::builder()
                .starting_sequence_number("1")
                .set_ending_sequence_number(closed.then(|| "9".to_owned()))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_key_is_the_md5_of_the_partition_key() {
        // md5("17") = 70efdf2ec9b086079795c442636b55fb
        assert_eq!(hash_key("17"), 0x70ef_df2e_c9b0_8607_9795_c442_636b_55fb);
    }

    #[test]
    fn a_key_maps_to_the_open_shard_whose_range_holds_its_hash() {
        let half = u128::MAX / 2;
        let map = ShardMap::of(&[
            // Closed parent, split into the two below.
            listed_shard("shardId-0", 0, u128::MAX, true),
            listed_shard("shardId-2", half + 1, u128::MAX, false),
            listed_shard("shardId-1", 0, half, false),
        ]);
        for key in (0..200).map(|n| n.to_string()) {
            let hash = hash_key(&key);
            let expected = if hash <= half {
                "shardId-1"
            } else {
                "shardId-2"
            };
            assert_eq!(map.shard_of(&key).unwrap().id, expected, "{key}");
        }
    }

    #[test]
    fn a_hash_no_open_shard_covers_maps_nowhere() {
        let hash = hash_key("17");
        let map = ShardMap::of(&[
            listed_shard("below", 0, hash - 1, false),
            listed_shard("above", hash + 1, u128::MAX, false),
        ]);
        assert_eq!(map.shard_of("17"), None);
        assert!(ShardMap::of(&[]).shard_of("17").is_none());
    }
}

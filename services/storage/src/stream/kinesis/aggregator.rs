//! Record aggregation (`ALLEYCAT_KINESIS_AGGREGATE`): puts from every
//! request of the process are collected for a short while, grouped by the
//! shard each record goes to, and packed into KPL aggregated records.
//!
//! A shard takes 1,000 records a second however small they are, and a
//! telemetry message is about 230 bytes: one Kinesis record per message
//! needs a shard per 1,000 bikes. Aggregated, a shard's limit is its 1 MB a
//! second instead, about 4,000 messages.
//!
//! A caller's put still completes only once every aggregate holding its
//! records is on the stream; a caller whose records are in an aggregate
//! that could not be put in time gets the error and counts nothing as
//! stored (some may be: consumers tolerate duplicates), while the other
//! callers of the same flush succeed.

use super::aggregated::{Aggregate, MAX_AGGREGATE_BYTES};
use super::producer::{self, Entry, Metrics};
use super::shards::{self, OpenShard, ShardMap};
use super::{KinesisSettings, unavailable};
use crate::stream::{PutRecord, StreamError};
use aws_sdk_kinesis::Client;
use metrics::{Counter, Histogram};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

/// Puts waiting to be collected; a full queue makes callers wait.
const QUEUE: usize = 4_096;
/// User records in one flush at most (a flush may take several PutRecords
/// calls; this bounds the memory a flush holds).
const MAX_FLUSH_RECORDS: usize = 50_000;
/// Flushes in flight at once: while one waits for Kinesis, the next
/// collects.
const MAX_IN_FLIGHT: usize = 8;
/// How long a listing of the shards is trusted. A record that lands on
/// another shard than its aggregate was meant for (the shards changed)
/// makes the next flush list them again at once.
const SHARD_MAP_TTL: Duration = Duration::from_secs(10);
/// How long a ListShards call may take, and how long after a failed one
/// the shards are listed again (meanwhile the last map, or none, is used;
/// a flush that finds its records misplaced lists them again regardless,
/// at most [`MAX_REPLACEMENTS`] times).
const LIST_TIMEOUT: Duration = Duration::from_secs(2);
const LIST_RETRY: Duration = Duration::from_secs(1);
/// Times a flush puts again the records that landed on another shard
/// than meant, listing the shards anew each time. They are on the stream
/// already; the KPL puts them again too, because KCL consumers drop the
/// user records of an aggregate that fall outside their shard's range.
const MAX_REPLACEMENTS: usize = 3;
/// How long past its put timeout a caller waits for a flush that is still
/// in a PutRecords call before it gives up (and answers 503).
const CALLER_GRACE: Duration = Duration::from_secs(1);

/// Collects puts and writes them as aggregated records.
pub(super) struct Aggregator {
    requests: mpsc::Sender<Request>,
    put_timeout: Duration,
}

/// One caller's put.
struct Request {
    records: Vec<PutRecord>,
    /// When the caller's put timeout ends.
    deadline: Instant,
    done: oneshot::Sender<Result<(), StreamError>>,
}

impl Aggregator {
    /// Starts the collector. It stops once the aggregator is dropped; the
    /// flushes under way then finish in their own tasks while the runtime
    /// runs (a caller of one that cannot finish gets an error, and counts
    /// nothing as stored).
    pub(super) fn start(
        client: Client,
        settings: Arc<KinesisSettings>,
        metrics: Arc<Metrics>,
        linger: Duration,
    ) -> Aggregator {
        let (requests, queue) = mpsc::channel(QUEUE);
        let put_timeout = settings.put_timeout;
        let flusher = Arc::new(Flusher {
            client,
            settings,
            metrics,
            shard_map: Mutex::new(ShardMapCache::default()),
            instruments: Instruments::new(),
        });
        tokio::spawn(collect(flusher, queue, linger));
        Aggregator {
            requests,
            put_timeout,
        }
    }

    /// Puts `records`; `Ok` once all of them are on the stream, an error
    /// once `ALLEYCAT_PUT_TIMEOUT_MS` has passed without that.
    pub(super) async fn put(&self, records: Vec<PutRecord>) -> Result<(), StreamError> {
        if records.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.put_timeout;
        let timed_out = || unavailable("PutRecords", "not all stored within the put timeout");
        let (done, result) = oneshot::channel();
        let request = Request {
            records,
            deadline,
            done,
        };
        match tokio::time::timeout_at(deadline, self.requests.send(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(StreamError::Closed),
            Err(_) => return Err(timed_out()),
        }
        match tokio::time::timeout_at(deadline + CALLER_GRACE, result).await {
            Ok(Ok(result)) => result,
            // The flush ended without answering (its task panicked, or the
            // runtime is shutting down): nothing the caller can count on.
            Ok(Err(_)) => Err(StreamError::Closed),
            Err(_) => Err(timed_out()),
        }
    }
}

/// Gathers requests for `linger` after the first one, then hands them to a
/// flush, at most [`MAX_IN_FLIGHT`] at a time.
async fn collect(flusher: Arc<Flusher>, mut queue: mpsc::Receiver<Request>, linger: Duration) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let deadline = Instant::now() + linger;
        let mut records = first.records.len();
        let mut batch = vec![first];
        while records < MAX_FLUSH_RECORDS {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(request)) => {
                    records += request.records.len();
                    batch.push(request);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let permit = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let flusher = Arc::clone(&flusher);
        tokio::spawn(async move {
            flusher.flush(batch).await;
            drop(permit);
        });
    }
}

/// The aggregator's instruments (handles made once).
struct Instruments {
    /// User records per aggregated record written.
    per_aggregate: Histogram,
    /// Records put without aggregation (no shard map, or too big).
    plain: Counter,
    /// User records put again because their aggregate landed on another
    /// shard than meant.
    misplaced: Counter,
}

impl Instruments {
    fn new() -> Instruments {
        Instruments {
            per_aggregate: metrics::histogram!("alleycat_stream_aggregated_user_records"),
            plain: metrics::counter!("alleycat_stream_unaggregated_records_total"),
            misplaced: metrics::counter!("alleycat_stream_misplaced_records_total"),
        }
    }
}

/// The open shards as last listed.
#[derive(Default)]
struct ShardMapCache {
    map: ShardMap,
    /// When the map was listed, if ever.
    listed: Option<Instant>,
    /// When listing last failed, if it did since the last success.
    failed: Option<Instant>,
}

struct Flusher {
    client: Client,
    settings: Arc<KinesisSettings>,
    metrics: Arc<Metrics>,
    shard_map: Mutex<ShardMapCache>,
    instruments: Instruments,
}

impl Flusher {
    /// Puts the requests' records; answers each request with whether all
    /// of its records are on the stream.
    async fn flush(&self, batch: Vec<Request>) {
        let deadline = batch
            .iter()
            .map(|r| r.deadline)
            .min()
            .expect("a flush has at least one request");
        // Every record with the request it belongs to.
        let records: Vec<(usize, &PutRecord)> = batch
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.records.iter().map(move |record| (i, record)))
            .collect();
        let mut failed_requests = HashSet::new();
        let mut todo: Vec<usize> = (0..records.len()).collect();
        let mut relist = false;
        for round in 0..=MAX_REPLACEMENTS {
            let map = self.shard_map(relist).await;
            let packed = pack(&map, todo.iter().map(|&i| records[i].1));
            self.count(&packed);
            let placed = producer::put_entries(
                &self.client,
                &self.settings.stream_name,
                &self.metrics,
                packed.entries,
                deadline,
            )
            .await;
            if let Some(error) = &placed.last_error
                && !placed.failed.is_empty()
            {
                tracing::warn!(%error, entries = placed.failed.len(), "aggregated records not stored within the put timeout");
            }
            for entry in placed.failed {
                for &member in &packed.members[entry] {
                    failed_requests.insert(records[todo[member]].0);
                }
            }
            let misplaced: Vec<usize> = placed
                .misplaced
                .iter()
                .flat_map(|&entry| packed.members[entry].iter().map(|&m| todo[m]))
                .collect();
            if misplaced.is_empty() {
                break;
            }
            // Stored already: put again only while there is time, so a
            // KCL consumer that drops them from the wrong shard gets them
            // from the right one.
            tracing::info!(
                records = misplaced.len(),
                round,
                "aggregated records landed on another shard (resharded?); listing the shards again"
            );
            if round == MAX_REPLACEMENTS || Instant::now() >= deadline {
                break;
            }
            self.instruments.misplaced.increment(misplaced.len() as u64);
            todo = misplaced;
            relist = true;
        }
        for (i, request) in batch.into_iter().enumerate() {
            let result = if failed_requests.contains(&i) {
                Err(unavailable(
                    "PutRecords kept failing",
                    "not all records stored within the put timeout",
                ))
            } else {
                Ok(())
            };
            self.metrics.puts.count(request.records.len(), &result);
            // A caller that gave up waiting is no longer listening.
            let _ = request.done.send(result);
        }
    }

    fn count(&self, packed: &Packed) {
        for users in &packed.per_aggregate {
            self.instruments.per_aggregate.record(*users as f64);
        }
        self.instruments.plain.increment(packed.plain as u64);
    }

    /// The open shards: listed again once [`SHARD_MAP_TTL`] old, or at once
    /// when `relist` (a record landed elsewhere than meant). While listing
    /// fails, the last map is used (or none: records go unaggregated), and
    /// it is tried again after [`LIST_RETRY`].
    async fn shard_map(&self, relist: bool) -> ShardMap {
        let mut cache = self.shard_map.lock().await;
        let fresh = cache
            .listed
            .is_some_and(|at| !relist && at.elapsed() < SHARD_MAP_TTL);
        let failed_lately = cache.failed.is_some_and(|at| at.elapsed() < LIST_RETRY);
        if fresh || failed_lately {
            return cache.map.clone();
        }
        let listing = shards::list(&self.client, &self.settings.stream_name);
        match tokio::time::timeout(LIST_TIMEOUT, listing).await {
            Ok(Ok(listed)) => {
                cache.map = ShardMap::of(&listed);
                cache.listed = Some(Instant::now());
                cache.failed = None;
            }
            Ok(Err(e)) => {
                cache.failed = Some(Instant::now());
                tracing::warn!(error = %e, "cannot list the shards; aggregating by the last listing, if any");
            }
            Err(_) => {
                cache.failed = Some(Instant::now());
                tracing::warn!(timeout = ?LIST_TIMEOUT, "ListShards did not answer; aggregating by the last listing, if any");
            }
        }
        cache.map.clone()
    }
}

/// A flush's records as PutRecords entries.
struct Packed {
    entries: Vec<Entry>,
    /// For each entry, the records it holds (by their index in the input).
    members: Vec<Vec<usize>>,
    /// User records in each aggregated entry.
    per_aggregate: Vec<usize>,
    /// Records put as they are.
    plain: usize,
}

/// Packs records into aggregated records, one stream of aggregates per open
/// shard so that each lands whole on the shard its records' keys map to
/// (sent there by its explicit hash key). A record no open shard covers, or
/// too big to share a record, goes as it is.
fn pack<'a>(map: &ShardMap, records: impl Iterator<Item = &'a PutRecord>) -> Packed {
    let mut packed = Packed {
        entries: Vec::new(),
        members: Vec::new(),
        per_aggregate: Vec::new(),
        plain: 0,
    };
    let mut filling: HashMap<&str, (&OpenShard, Aggregate, Vec<usize>)> = HashMap::new();
    for (index, record) in records.enumerate() {
        let key = record.partition_key.as_str();
        let shard = map
            .shard_of(key)
            .filter(|_| Aggregate::default().size_with(key, &record.data) <= MAX_AGGREGATE_BYTES);
        let Some(shard) = shard else {
            packed.plain += 1;
            let entry = Entry::new(record.partition_key.clone(), record.data.clone());
            packed.entries.push(entry);
            packed.members.push(vec![index]);
            continue;
        };
        let (_, aggregate, members) = filling
            .entry(shard.id.as_str())
            .or_insert_with(|| (shard, Aggregate::default(), Vec::new()));
        if aggregate.size_with(key, &record.data) > MAX_AGGREGATE_BYTES {
            let full = std::mem::take(aggregate);
            packed.finish(shard, &full, std::mem::take(members));
        }
        aggregate.push(key, record.data.clone());
        members.push(index);
    }
    // In a fixed order, so a test can tell what went where.
    let mut rest: Vec<_> = filling.into_values().collect();
    rest.sort_by_key(|(shard, _, _)| shard.starting_hash_key);
    for (shard, aggregate, members) in rest {
        packed.finish(shard, &aggregate, members);
    }
    packed
}

impl Packed {
    fn finish(&mut self, shard: &OpenShard, aggregate: &Aggregate, members: Vec<usize>) {
        let key = aggregate
            .first_partition_key()
            .expect("an aggregate is finished only with records in it");
        self.entries.push(Entry::to_shard(
            key.to_owned(),
            aggregate.encode(),
            shard.starting_hash_key,
            shard.id.clone(),
        ));
        self.per_aggregate.push(members.len());
        self.members.push(members);
    }
}

#[cfg(test)]
mod tests {
    use super::super::aggregated::user_records;
    use super::super::shards::{hash_key, listed_shard};
    use super::*;
    use bytes::Bytes;

    fn two_shards() -> ShardMap {
        let half = u128::MAX / 2;
        ShardMap::of(&[
            listed_shard("low", 0, half, false),
            listed_shard("high", half + 1, u128::MAX, false),
        ])
    }

    fn record(racer: u64, second: u64, size: usize) -> PutRecord {
        let mut data = format!("{{\"racerId\":{racer},\"second\":{second}}}").into_bytes();
        data.resize(data.len().max(size), b' ');
        PutRecord {
            partition_key: racer.to_string(),
            data: Bytes::from(data),
            validated: None,
        }
    }

    /// Each entry's user records, with the shard its explicit hash key
    /// sends it to.
    fn unpacked(map: &ShardMap, packed: &Packed) -> Vec<(String, Vec<Bytes>)> {
        packed
            .entries
            .iter()
            .map(|e| {
                let e = e.request();
                let data = Bytes::from(e.data.as_ref().to_vec());
                match (&e.explicit_hash_key, user_records(&data)) {
                    (Some(hash), Some(users)) => {
                        let hash: u128 = hash.parse().unwrap();
                        let shard = map
                            .shard_of_hash(hash)
                            .expect("the explicit hash key is in an open shard");
                        (shard.id.clone(), users)
                    }
                    (None, None) => {
                        let shard = map.shard_of(&e.partition_key).map(|s| s.id.clone());
                        (shard.unwrap_or_default(), vec![data])
                    }
                    other => panic!("an aggregate without its hash key, or the reverse: {other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn every_record_lands_once_on_its_keys_shard_in_order() {
        let map = two_shards();
        let records: Vec<PutRecord> = (0..30)
            .flat_map(|second| (0..200).map(move |racer| record(racer, second, 150)))
            .collect();
        let packed = pack(&map, records.iter());
        assert_eq!(packed.plain, 0);
        // Aggregates are filled: about 900 KB in 50 KiB records, with
        // at most one part-filled aggregate per shard.
        let bytes: usize = records.iter().map(|r| r.data.len()).sum();
        let full = bytes.div_ceil(MAX_AGGREGATE_BYTES);
        assert!(
            (full..=full + 2).contains(&packed.entries.len()),
            "{bytes} bytes in {} aggregates",
            packed.entries.len()
        );
        let mut seen: HashMap<String, Vec<Bytes>> = HashMap::new();
        for (shard, users) in unpacked(&map, &packed) {
            seen.entry(shard).or_default().extend(users);
        }
        for (shard, got) in &seen {
            let expected: Vec<Bytes> = records
                .iter()
                .filter(|r| map.shard_of(&r.partition_key).unwrap().id == *shard)
                .map(|r| r.data.clone())
                .collect();
            assert_eq!(got, &expected, "shard {shard}: every record once, in order");
        }
        assert_eq!(seen.values().map(Vec::len).sum::<usize>(), records.len());
        for entry in &packed.entries {
            let size = entry.request().data.as_ref().len();
            assert!(size <= MAX_AGGREGATE_BYTES, "{size} bytes");
        }
        let members: Vec<usize> = packed.members.iter().flatten().copied().collect();
        let mut sorted = members.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..records.len()).collect::<Vec<_>>(),
            "each record in one entry"
        );
        for (entry, (_, users)) in packed.members.iter().zip(unpacked(&map, &packed)) {
            let expected: Vec<Bytes> = entry.iter().map(|&i| records[i].data.clone()).collect();
            assert_eq!(
                users, expected,
                "an entry's members are the records it holds"
            );
        }
    }

    #[test]
    fn records_too_big_or_without_a_shard_go_as_they_are() {
        let map = two_shards();
        let big = record(1, 1, MAX_AGGREGATE_BYTES);
        let small = record(2, 1, 10);
        let packed = pack(&map, [&big, &small].into_iter());
        assert_eq!(packed.plain, 1);
        assert_eq!(packed.members, [vec![0], vec![1]]);
        assert_eq!(packed.per_aggregate, [1]);
        let unpacked = unpacked(&map, &packed);
        assert_eq!(unpacked[0].1, std::slice::from_ref(&big.data));
        assert_eq!(unpacked[1].1, std::slice::from_ref(&small.data));

        let nowhere = pack(&ShardMap::default(), [&small].into_iter());
        assert_eq!(nowhere.plain, 1);
        assert!(nowhere.entries[0].request().explicit_hash_key.is_none());
        assert_eq!(nowhere.entries[0].request().partition_key, "2");
        assert!(hash_key("2") > 0);
    }
}

//! Publishing a class file without re-encoding all of it.
//!
//! A class of 10,000 racers is about 50 MB of JSON; gzipping it whole for
//! every batch would cost seconds of CPU. But a batch touches only the few
//! seconds of the race being ridden. So each second's part of the JSON is
//! kept as its own raw-deflate segment, ended with a full flush (byte
//! aligned, no back-references across segments), and a publication
//! re-compresses only the touched seconds, then concatenates: gzip header,
//! every segment in order, an empty final block, and the trailer with the
//! CRC-32 combined from the per-segment CRCs (as pigz does). The result is
//! one ordinary gzip member that any gunzip and the original frontend
//! decode, byte for byte the same JSON as [`ClassHistory::to_json`].

use alleycat_core::Second;
use alleycat_core::history::ClassHistory;
use flate2::{Compress, Compression, FlushCompress};
use std::collections::{BTreeMap, BTreeSet};

/// The content type class files are written with (as the original did).
pub const CONTENT_TYPE: &str = "application/gzip";

/// gzip header: magic, deflate, no flags, no mtime, no extra flags, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
/// A final, empty, fixed-Huffman deflate block: ends the stream.
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// One compressed piece of the JSON text.
#[derive(Debug, Clone)]
struct Segment {
    deflated: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
}

impl Segment {
    fn new(text: &[u8], level: u32) -> Segment {
        let mut crc = crc32fast::Hasher::new();
        crc.update(text);
        Segment {
            deflated: deflate_flushed(text, level),
            crc,
            len: text.len() as u64,
        }
    }
}

/// Raw deflate of `text`, ended by a full flush: byte aligned, the stream
/// left open, and no later data refers back into it.
fn deflate_flushed(text: &[u8], level: u32) -> Vec<u8> {
    let mut compress = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(text.len() / 4 + 64);
    loop {
        let consumed = usize::try_from(compress.total_in()).expect("fits");
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        compress
            .compress_vec(&text[consumed..], &mut out, FlushCompress::Full)
            .expect("deflating into a Vec cannot fail");
        // Done once all input is in and the flush did not run out of room.
        if usize::try_from(compress.total_in()).expect("fits") == text.len()
            && out.len() < out.capacity()
        {
            return out;
        }
    }
}

/// A class file kept as per-second compressed segments.
#[derive(Debug, Clone)]
pub struct SegmentedClassFile {
    level: u32,
    open: Segment,
    close: Segment,
    /// Per second: whether its text starts with a comma, and its segment.
    seconds: BTreeMap<Second, (bool, Segment)>,
}

impl SegmentedClassFile {
    /// Encodes all of `history` at gzip `level`.
    #[must_use]
    pub fn new(history: &ClassHistory, level: u32) -> SegmentedClassFile {
        let mut file = SegmentedClassFile {
            level,
            open: Segment::new(b"{", level),
            close: Segment::new(b"}", level),
            seconds: BTreeMap::new(),
        };
        let all: Vec<Second> = history.iter().map(|(s, _)| s).collect();
        file.update(history, all);
        file
    }

    /// Re-encodes the `touched` seconds of `history` (and any second whose
    /// leading comma changed because a new first second appeared).
    pub fn update(&mut self, history: &ClassHistory, touched: impl IntoIterator<Item = Second>) {
        let mut dirty: BTreeSet<Second> = touched.into_iter().collect();
        let first = history.iter().next().map(|(s, _)| s);
        // A second that was first (no comma) may not be any more, and back.
        dirty.extend(
            self.seconds
                .iter()
                .filter(|(s, (comma, _))| *comma == (Some(**s) == first))
                .map(|(s, _)| *s),
        );
        for second in dirty {
            match history.at(second) {
                Some(racers) => {
                    let comma = Some(second) != first;
                    let mut text = Vec::with_capacity(racers.len() * 20 + 16);
                    if comma {
                        text.push(b',');
                    }
                    text.push(b'"');
                    text.extend_from_slice(second.to_string().as_bytes());
                    text.extend_from_slice(b"\":");
                    alleycat_core::history::write_bests_json(racers, &mut text);
                    self.seconds
                        .insert(second, (comma, Segment::new(&text, self.level)));
                }
                None => {
                    self.seconds.remove(&second);
                }
            }
        }
    }

    /// The whole gzip file.
    #[must_use]
    pub fn to_gzip(&self) -> Vec<u8> {
        let segments = || {
            std::iter::once(&self.open)
                .chain(self.seconds.values().map(|(_, s)| s))
                .chain(std::iter::once(&self.close))
        };
        let size: usize = segments().map(|s| s.deflated.len()).sum();
        let mut out = Vec::with_capacity(GZIP_HEADER.len() + size + FINAL_BLOCK.len() + 8);
        out.extend_from_slice(&GZIP_HEADER);
        let mut crc = crc32fast::Hasher::new();
        let mut len: u64 = 0;
        for segment in segments() {
            out.extend_from_slice(&segment.deflated);
            crc.combine(&segment.crc);
            len += segment.len;
        }
        out.extend_from_slice(&FINAL_BLOCK);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        // ISIZE is the length modulo 2^32, by the gzip format.
        out.extend_from_slice(&((len & 0xffff_ffff) as u32).to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alleycat_core::RacerId;
    use alleycat_core::codec::gunzip;
    use proptest::prelude::*;

    fn decode(gz: &[u8]) -> Vec<u8> {
        // The strict single-member decoder: checks CRC and length.
        use std::io::Read as _;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn an_empty_class_is_an_empty_object() {
        let file = SegmentedClassFile::new(&ClassHistory::default(), 6);
        assert_eq!(decode(&file.to_gzip()), b"{}");
    }

    #[test]
    fn decodes_to_exactly_the_class_history_json() {
        let mut h = ClassHistory::default();
        for s in [3u16, 1, 300, 42] {
            for r in 0..50u64 {
                h.merge(Second(s), RacerId(r * 7), f64::from(s) + r as f64 / 3.0);
            }
        }
        let file = SegmentedClassFile::new(&h, 6);
        let gz = file.to_gzip();
        assert_eq!(decode(&gz), h.to_json());
        assert_eq!(gunzip(&gz, 1 << 30).unwrap(), h.to_json());
        assert_eq!(ClassHistory::from_gzip(&gz).unwrap(), h);
    }

    #[test]
    fn updating_touched_seconds_matches_a_full_encode() {
        let mut h = ClassHistory::default();
        h.merge(Second(5), RacerId(1), 1.0);
        let mut file = SegmentedClassFile::new(&h, 6);
        // A new first second, a new last one, a changed one.
        h.merge(Second(2), RacerId(9), 2.0);
        h.merge(Second(9), RacerId(1), 3.0);
        h.merge(Second(5), RacerId(1), 4.0);
        file.update(&h, [Second(2), Second(9), Second(5)]);
        assert_eq!(decode(&file.to_gzip()), h.to_json());
    }

    proptest! {
        #[test]
        fn any_sequence_of_updates_decodes_to_the_history(
            batches in prop::collection::vec(prop::collection::vec((1u16..40, 0u64..30, 0u32..10_000), 1..40), 1..6),
            level in 0u32..=9,
        ) {
            let mut h = ClassHistory::default();
            let mut file = SegmentedClassFile::new(&h, level);
            for batch in batches {
                let mut touched = Vec::new();
                for (s, r, o) in batch {
                    if h.merge(Second(s), RacerId(r), f64::from(o) / 100.0) {
                        touched.push(Second(s));
                    }
                }
                file.update(&h, touched);
                prop_assert_eq!(decode(&file.to_gzip()), h.to_json());
            }
        }
    }
}

/// The class-file decoder (`ClassHistory::from_gzip`) on segmented files
/// as published: each round-trips, and a truncated or damaged one is
/// refused with an error (or, when the damage is in bytes the format
/// ignores, loads the same history), never a panic.
#[cfg(test)]
mod decoder_properties {
    use super::*;
    use alleycat_core::RacerId;
    use proptest::prelude::*;

    /// A segmented file of a history built in a few updates.
    fn published() -> impl Strategy<Value = (ClassHistory, Vec<u8>)> {
        (
            prop::collection::vec(
                prop::collection::vec((1u16..120, 0u64..50, 0u32..1_000_000), 1..30),
                1..4,
            ),
            0u32..=9,
        )
            .prop_map(|(batches, level)| {
                let mut history = ClassHistory::default();
                let mut file = SegmentedClassFile::new(&history, level);
                for batch in batches {
                    let mut touched = Vec::new();
                    for (s, r, o) in batch {
                        if history.merge(Second(s), RacerId(r), f64::from(o) / 1_000.0) {
                            touched.push(Second(s));
                        }
                    }
                    file.update(&history, touched);
                }
                let gz = file.to_gzip();
                (history, gz)
            })
    }

    proptest! {
        #[test]
        fn a_published_file_loads_and_damage_is_refused(
            (history, gz) in published(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            prop_assert_eq!(&ClassHistory::from_gzip(&gz).unwrap(), &history);
            // Every proper prefix (a partial upload or download) is refused.
            let cut = cut.index(gz.len());
            prop_assert!(ClassHistory::from_gzip(&gz[..cut]).is_err(), "cut at {}", cut);
            // A flipped bit is refused, or changes nothing (a header flag or
            // timestamp bit); in the CRC-32 and length trailer, refused.
            let at = flip.index(gz.len());
            let mut flipped = gz.clone();
            flipped[at] ^= 1 << bit;
            if let Ok(loaded) = ClassHistory::from_gzip(&flipped) {
                prop_assert_eq!(&loaded, &history, "bit {} of byte {}", bit, at);
                prop_assert!(at < gz.len() - 8, "trailer byte {} flipped unnoticed", at);
            }
        }
    }
}

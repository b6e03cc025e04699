//! Publishing a class file without re-encoding all of it.
//!
//! A class of 10,000 racers is about 50 MB of JSON; gzipping it whole for
//! every batch would cost seconds of CPU. But a batch touches only the few
//! seconds of the race being ridden. So the JSON is kept as raw-deflate
//! segments, each the text of a run of consecutive seconds, ended with a
//! full flush (byte aligned), and a publication re-compresses only the
//! segments whose text changed, then concatenates: gzip header, every
//! segment in order, an empty final block, and the trailer with the CRC-32
//! combined from the per-segment CRCs. The result is one ordinary gzip
//! member that any gunzip and the original frontend decode, byte for byte
//! the same JSON as [`ClassHistory::to_json`].
//!
//! As pigz does, each segment is compressed with the 32 KiB of text before
//! it as its preset dictionary, so it may refer back across the boundary
//! exactly as a whole-file gzip would; and segments are cut by size (about
//! [`SEGMENT_BYTES`] of text, never inside a second), so that the deflate
//! blocks are as large as a whole-file gzip's. Together these keep a class
//! file within a fraction of a percent of one gzip of the same JSON at the
//! same level, from a handful of racers (one segment) to 10,000 (one second
//! a segment). The price: a changed segment also re-compresses what follows
//! it within one window of text (its dictionary changed), usually the next
//! segment.

use alleycat_core::history::ClassHistory;
use alleycat_core::{RacerId, Second};
use flate2::{Compress, Compression, FlushCompress};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// The content type class files are written with (as the original did).
pub const CONTENT_TYPE: &str = "application/gzip";

/// Text a segment holds before it is cut: large enough that the end of a
/// deflate block at each cut costs nothing measurable, small enough that
/// re-compressing a changed one is cheap. A segment is split once its text
/// is twice this.
pub const SEGMENT_BYTES: usize = 32 * 1024;
/// deflate's window: the most a segment can refer back, and so the text
/// before it given as its dictionary.
pub const WINDOW: usize = 32 * 1024;

/// gzip header: magic, deflate, no flags, no mtime, no extra flags, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
/// A final, empty, fixed-Huffman deflate block: ends the stream.
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];
/// The text around the seconds.
const OPEN: &[u8] = b"{";
const CLOSE: &[u8] = b"}";

/// One compressed piece of the JSON text.
#[derive(Debug, Clone)]
struct Segment {
    deflated: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
}

impl Segment {
    fn new(deflater: &mut Deflater, text: &[u8], dictionary: &[u8]) -> Segment {
        let mut crc = crc32fast::Hasher::new();
        crc.update(text);
        Segment {
            deflated: deflater.deflate_flushed(text, dictionary),
            crc,
            len: text.len() as u64,
        }
    }
}

/// One raw-deflate compressor, reset for each segment.
struct Deflater(Compress);

impl Deflater {
    fn new(level: u32) -> Deflater {
        Deflater(Compress::new(Compression::new(level), false))
    }

    /// Raw deflate of `text` given the text before it (`dictionary`, at
    /// most one window), ended by a full flush: byte aligned, the stream
    /// left open, and no later data refers back into it except through
    /// its own dictionary.
    fn deflate_flushed(&mut self, text: &[u8], dictionary: &[u8]) -> Vec<u8> {
        let compress = &mut self.0;
        compress.reset();
        if !dictionary.is_empty() {
            compress
                .set_dictionary(dictionary)
                .expect("a raw deflate stream takes a dictionary before its first input");
        }
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
}

/// A class file kept as compressed segments of consecutive seconds.
#[derive(Debug, Clone)]
pub struct SegmentedClassFile {
    level: u32,
    /// [`SEGMENT_BYTES`] and [`WINDOW`], but for tests.
    segment_bytes: usize,
    window: usize,
    open: Segment,
    close: Segment,
    /// By the first second of its range: a segment holds the seconds from
    /// its key up to the next segment's key. The first key is `Second(0)`,
    /// so every second has a segment.
    segments: BTreeMap<Second, Segment>,
    /// The history's first second when last encoded: it is the one written
    /// without a leading comma.
    first: Option<Second>,
}

impl SegmentedClassFile {
    /// Encodes all of `history` at gzip `level`.
    #[must_use]
    pub fn new(history: &ClassHistory, level: u32) -> SegmentedClassFile {
        SegmentedClassFile::with_layout(history, level, SEGMENT_BYTES, WINDOW)
    }

    /// [`SegmentedClassFile::new`], cutting segments at `segment_bytes`
    /// and giving each at most `window` bytes of dictionary (at most
    /// [`WINDOW`]; less is valid deflate, it only refers back less far).
    #[must_use]
    pub fn with_layout(
        history: &ClassHistory,
        level: u32,
        segment_bytes: usize,
        window: usize,
    ) -> SegmentedClassFile {
        let mut deflater = Deflater::new(level);
        let mut file = SegmentedClassFile {
            level,
            segment_bytes: segment_bytes.max(1),
            window: window.min(WINDOW),
            open: Segment::new(&mut deflater, OPEN, &[]),
            close: Segment::new(&mut deflater, CLOSE, &[]),
            segments: BTreeMap::from([(Second(0), Segment::new(&mut deflater, b"", OPEN))]),
            first: None,
        };
        let all: Vec<Second> = history.iter().map(|(s, _)| s).collect();
        file.update(history, all);
        file
    }

    /// Number of segments (for tests and benches).
    #[must_use]
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The segment holding `second`.
    fn segment_of(&self, second: Second) -> Second {
        *self
            .segments
            .range(..=second)
            .next_back()
            .expect("the first segment starts at second 0")
            .0
    }

    /// Re-encodes the segments holding the `touched` seconds of `history`
    /// (and those whose leading comma or dictionary changed with them).
    pub fn update(&mut self, history: &ClassHistory, touched: impl IntoIterator<Item = Second>) {
        let mut changed: BTreeSet<Second> =
            touched.into_iter().map(|s| self.segment_of(s)).collect();
        let first = history.first_second();
        if first != self.first {
            // The old and the new first second change their leading comma.
            changed.extend(
                [self.first, first]
                    .into_iter()
                    .flatten()
                    .map(|s| self.segment_of(s)),
            );
            self.first = first;
        }
        let Some(&from) = changed.first() else {
            return;
        };
        let mut deflater = Deflater::new(self.level);
        // The text of each segment as it now is, once written.
        let mut texts: BTreeMap<Second, Vec<u8>> = BTreeMap::new();
        // Text since the end of the last changed segment: a segment less
        // than a window after a change has a changed dictionary.
        let mut since_change = 0;
        let starts: Vec<Second> = self.segments.range(from..).map(|(s, _)| *s).collect();
        for (i, &start) in starts.iter().enumerate() {
            let dirty = changed.contains(&start);
            if !dirty && since_change >= self.window {
                if changed.range(start..).next().is_none() {
                    break;
                }
                since_change += usize::try_from(self.segments[&start].len).expect("fits");
                continue;
            }
            let end = starts.get(i + 1).copied();
            let pieces = if dirty {
                pieces(history, first, start, end, self.segment_bytes)
            } else {
                vec![(start, self.text(history, first, start, &mut texts).clone())]
            };
            // The first piece replaces the segment at `start`, which stays
            // until then: it bounds the text of the segment before it.
            for (piece, text) in pieces {
                // A segment left empty joins the one before it, except the
                // first, which always exists.
                if text.is_empty() && piece != Second(0) {
                    self.segments.remove(&piece);
                    continue;
                }
                let dictionary = self.dictionary(history, first, piece, &mut texts);
                self.segments
                    .insert(piece, Segment::new(&mut deflater, &text, &dictionary));
                if !dirty {
                    since_change += text.len();
                }
                texts.insert(piece, text);
                // Only the last window before the next segment is read again.
                let mut kept = 0;
                let keep_from = self
                    .segments
                    .range(..=piece)
                    .rev()
                    .find_map(|(s, segment)| {
                        kept += usize::try_from(segment.len).expect("fits");
                        (kept >= self.window).then_some(*s)
                    });
                if let Some(from) = keep_from {
                    texts = texts.split_off(&from);
                }
            }
            if dirty {
                // Its text changed (or went, with the segment): what follows
                // within a window has a new dictionary.
                since_change = 0;
            }
        }
    }

    /// The text of the segment at `start`, as `history` now has it.
    fn text<'t>(
        &self,
        history: &ClassHistory,
        first: Option<Second>,
        start: Second,
        texts: &'t mut BTreeMap<Second, Vec<u8>>,
    ) -> &'t Vec<u8> {
        texts.entry(start).or_insert_with(|| {
            let end = self
                .segments
                .range((Bound::Excluded(start), Bound::Unbounded))
                .next()
                .map(|(s, _)| *s);
            let mut text = Vec::new();
            for (second, racers) in seconds(history, start, end) {
                write_second(second, racers, Some(second) != first, &mut text);
            }
            text
        })
    }

    /// The last window of text before the segment at `start`: the end of
    /// the segments before it, or the opening brace.
    fn dictionary(
        &self,
        history: &ClassHistory,
        first: Option<Second>,
        start: Second,
        texts: &mut BTreeMap<Second, Vec<u8>>,
    ) -> Vec<u8> {
        let mut before: Vec<Second> = Vec::new();
        let mut collected = 0;
        for (&s, segment) in self.segments.range(..start).rev() {
            if collected >= self.window {
                break;
            }
            collected += usize::try_from(segment.len).expect("fits");
            before.push(s);
        }
        let mut window: Vec<u8> = Vec::with_capacity(collected.min(self.window) + OPEN.len());
        if collected < self.window {
            window.extend_from_slice(OPEN);
        }
        for s in before.into_iter().rev() {
            window.extend_from_slice(self.text(history, first, s, texts));
        }
        window.split_off(window.len().saturating_sub(self.window))
    }

    /// The whole gzip file.
    #[must_use]
    pub fn to_gzip(&self) -> Vec<u8> {
        let segments = || {
            std::iter::once(&self.open)
                .chain(self.segments.values())
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

/// The seconds of `history` from `start` up to `end` (exclusive; `None`:
/// to the last).
fn seconds(
    history: &ClassHistory,
    start: Second,
    end: Option<Second>,
) -> impl Iterator<Item = (Second, &BTreeMap<RacerId, f64>)> {
    let end = end.map_or(Bound::Unbounded, Bound::Excluded);
    history.range((Bound::Included(start), end))
}

/// The text of one second, after a comma unless it is the first.
fn write_second(second: Second, racers: &BTreeMap<RacerId, f64>, comma: bool, out: &mut Vec<u8>) {
    if comma {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(second.to_string().as_bytes());
    out.extend_from_slice(b"\":");
    alleycat_core::history::write_bests_json(racers, out);
}

/// The text of the seconds from `start` up to `end`, cut into segments of
/// at least `segment_bytes` once it is more than twice that (never inside
/// a second): each piece by its first second, the first at `start`.
fn pieces(
    history: &ClassHistory,
    first: Option<Second>,
    start: Second,
    end: Option<Second>,
    segment_bytes: usize,
) -> Vec<(Second, Vec<u8>)> {
    // Each piece its own buffer: a whole class (50 MB of JSON at 10,000
    // racers) is never one more buffer beside its pieces.
    let mut pieces: Vec<(Second, Vec<u8>)> = vec![(start, Vec::new())];
    let mut total = 0;
    for (second, racers) in seconds(history, start, end) {
        if pieces.last().expect("one piece at least").1.len() >= segment_bytes {
            pieces.push((
                second,
                Vec::with_capacity(segment_bytes + segment_bytes / 2),
            ));
        }
        let piece = &mut pieces.last_mut().expect("one piece at least").1;
        let before = piece.len();
        write_second(second, racers, Some(second) != first, piece);
        total += piece.len() - before;
    }
    if pieces.len() > 1 && total <= 2 * segment_bytes {
        let whole = pieces.iter().flat_map(|(_, piece)| piece.iter().copied());
        return vec![(start, whole.collect())];
    }
    pieces
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

    /// One gzip of the whole JSON at `level`: what a class file is held to.
    fn whole_file_gzip(history: &ClassHistory, level: u32) -> usize {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        gz.write_all(&history.to_json()).unwrap();
        gz.finish().unwrap().len()
    }

    /// A class of `racers` racers, each with a best at every second of a
    /// race, as the output formula gives them (4 decimals at most).
    fn class_of(racers: u64) -> ClassHistory {
        let mut rng = fastrand::Rng::with_seed(racers);
        let mut history = ClassHistory::default();
        let ids: Vec<u64> = (0..racers).map(|_| rng.u64(1..10_000_000)).collect();
        for second in 1..=300u16 {
            for &racer in &ids {
                let output = alleycat_core::output(rng.f64() * 120.0, rng.f64() * 100.0);
                history.merge(Second(second), RacerId(racer), output);
            }
        }
        history
    }

    #[test]
    fn a_class_file_is_within_five_percent_of_a_whole_file_gzip() {
        // Sizes from one segment to one second a segment; 10,000 racers is
        // in the release-built `cargo bench --bench hot_paths -- class_file`.
        for racers in [1, 5, 50, 300, 2_000] {
            let history = class_of(racers);
            let levels: &[u32] = if racers > 1_000 { &[6] } else { &[1, 6, 9] };
            for &level in levels {
                let segmented = SegmentedClassFile::new(&history, level).to_gzip();
                let whole = whole_file_gzip(&history, level);
                let ratio = segmented.len() as f64 / whole as f64;
                println!(
                    "{racers} racers, level {level}: {} against {whole} bytes ({ratio:.4})",
                    segmented.len()
                );
                assert!(
                    ratio <= 1.05,
                    "{racers} racers at level {level}: {} bytes against {whole} ({ratio:.3})",
                    segmented.len()
                );
                assert_eq!(decode(&segmented), history.to_json());
            }
        }
    }

    #[test]
    fn a_large_class_is_cut_into_segments_and_one_second_rewrites_few() {
        let mut history = class_of(300);
        let mut file = SegmentedClassFile::new(&history, 6);
        // 300 racers are about 6 KB a second: several seconds a segment.
        let json = history.to_json().len();
        let segments = file.segments();
        assert!(
            (json / (3 * SEGMENT_BYTES)..=json / SEGMENT_BYTES + 1).contains(&segments),
            "{segments} segments of {json} bytes"
        );
        let before = file.clone();
        history.merge(Second(150), RacerId(1), 999.0);
        file.update(&history, [Second(150)]);
        assert_eq!(decode(&file.to_gzip()), history.to_json());
        let rewritten = before
            .segments
            .iter()
            .filter(|(start, old)| {
                file.segments
                    .get(start)
                    .is_none_or(|new| new.deflated != old.deflated)
            })
            .count();
        // Its segment, and the next (whose dictionary changed).
        assert!(
            (1..=2).contains(&rewritten),
            "{rewritten} segments rewritten"
        );
    }

    proptest! {
        #[test]
        fn any_sequence_of_updates_decodes_to_the_history(
            batches in prop::collection::vec(
                prop::collection::vec((1u16..40, 0u64..30, 0u32..10_000, prop::bool::weighted(0.05)), 1..60),
                1..8,
            ),
            level in 0u32..=9,
            segment_bytes in prop::sample::select(vec![1usize, 16, 100, 400, SEGMENT_BYTES]),
            window in prop::sample::select(vec![0usize, 1, 10, 64, 300, WINDOW]),
        ) {
            let mut h = ClassHistory::default();
            let mut file = SegmentedClassFile::with_layout(&h, level, segment_bytes, window);
            for batch in batches {
                let mut touched = Vec::new();
                for (s, r, o, leaves) in batch {
                    if leaves {
                        // A racer taken out (a disqualification): seconds
                        // may empty, the first second may change.
                        touched.extend(h.replace_racer(RacerId(r), &BTreeMap::new()));
                    } else if h.merge(Second(s), RacerId(r), f64::from(o) / 100.0) {
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

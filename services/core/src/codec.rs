//! Gzip encoding and decoding of delivery objects and class files.

use flate2::Compression;
use flate2::bufread::MultiGzDecoder;
use flate2::write::GzEncoder;
use std::io::{Read, Write};

/// Compression level for class files: level 6 is the zlib default, a
/// balance of size (class files are downloaded by every racer before each
/// race) and CPU.
pub const DEFAULT_LEVEL: u32 = 6;

/// Compression level for delivery objects, which only history reads back:
/// level 1 compresses the same JSON about 3x faster than level 6
/// (`cargo bench --bench hot_paths -- class_file`), for objects some 20%
/// larger.
pub const DELIVERY_LEVEL: u32 = 1;

/// Gzips `data` at `level` (0-9).
#[must_use]
pub fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        Compression::new(level),
    );
    encoder
        .write_all(data)
        .and_then(|()| encoder.finish())
        .expect("writing to a Vec cannot fail")
}

/// Gunzips `data`, accepting concatenated gzip members as `gunzip` does.
///
/// `limit` caps the decompressed size, so a hostile object (a "gzip bomb")
/// cannot exhaust memory: the output buffer never grows past `limit` bytes
/// (the decoder's own state is a fixed 32 KiB window and, for a header's
/// optional name and comment, at most the size of `data`).
pub fn gunzip(data: &[u8], limit: u64) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::new();
    gunzip_into(data, limit, &mut out)?;
    Ok(out)
}

/// [`gunzip`] into `out` (cleared first), whose capacity stays at most
/// `limit`, whatever `data` holds.
fn gunzip_into(data: &[u8], limit: u64, out: &mut Vec<u8>) -> Result<(), GunzipError> {
    let limit_bytes = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut decoder = MultiGzDecoder::new(data);
    out.clear();
    let mut filled = 0;
    let result = loop {
        if filled == out.len() {
            if filled >= limit_bytes {
                // Full: the stream must end here (its checksum is still
                // verified by this read); one more byte is too many.
                match read(&mut decoder, &mut [0]) {
                    Ok(0) => break Ok(()),
                    Ok(_) => break Err(GunzipError::TooLarge { limit }),
                    Err(e) => break Err(GunzipError::Corrupt(e)),
                }
            }
            // A first guess of 4x `data`, then doubling, never past the limit.
            let grown = if filled == 0 {
                data.len().saturating_mul(4).max(64)
            } else {
                filled.saturating_mul(2)
            }
            .min(limit_bytes);
            out.reserve_exact(grown - out.len());
            out.resize(grown, 0);
        }
        match read(&mut decoder, &mut out[filled..]) {
            Ok(0) => break Ok(()),
            Ok(n) => filled += n,
            Err(e) => break Err(GunzipError::Corrupt(e)),
        }
    };
    out.truncate(filled);
    result
}

/// One read, retried when interrupted.
fn read(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Why a gzip body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum GunzipError {
    /// Not gzip, or truncated.
    #[error("not a valid gzip stream: {0}")]
    Corrupt(#[source] std::io::Error),
    /// Decompresses to more than the caller allows.
    #[error("decompresses to more than {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_every_level() {
        let data = br#"{"1":{"101":152.34}}"#.repeat(1000);
        for level in [0, 1, 6, 9] {
            let packed = gzip(&data, level);
            assert_eq!(gunzip(&packed, 1 << 30).unwrap(), data);
        }
        assert!(gzip(&data, 6).len() < data.len() / 10);
        assert_eq!(gunzip(&gzip(b"", 6), 10).unwrap(), b"");
    }

    #[test]
    fn accepts_concatenated_members_like_gunzip() {
        let mut both = gzip(b"hello ", 6);
        both.extend(gzip(b"world", 1));
        assert_eq!(gunzip(&both, 100).unwrap(), b"hello world");
    }

    #[test]
    fn rejects_garbage_truncation_and_bombs() {
        for garbage in [&b"plain json"[..], b"", &[0x1f, 0x8b]] {
            assert!(matches!(gunzip(garbage, 100), Err(GunzipError::Corrupt(_))));
        }
        let packed = gzip(&[b'x'; 10_000], 6);
        assert!(matches!(
            gunzip(&packed[..packed.len() - 4], 1 << 20),
            Err(GunzipError::Corrupt(_))
        ));
        assert!(matches!(
            gunzip(&packed, 9_999),
            Err(GunzipError::TooLarge { limit: 9_999 })
        ));
        assert_eq!(gunzip(&packed, 10_000).unwrap().len(), 10_000);
    }

    #[test]
    fn a_bomb_never_grows_the_buffer_past_the_limit() {
        let packed = gzip(&vec![0; 8 << 20], 9);
        assert!(packed.len() < 16 << 10, "{}", packed.len());
        for limit in [0, 1, 100, 65_536, (8 << 20) - 1] {
            let mut out = Vec::new();
            let result = gunzip_into(&packed, limit, &mut out);
            assert!(
                matches!(result, Err(GunzipError::TooLarge { limit: l }) if l == limit),
                "{result:?}"
            );
            assert!(
                out.capacity() as u64 <= limit,
                "{} > {limit}",
                out.capacity()
            );
        }
        let mut out = Vec::new();
        gunzip_into(&packed, 8 << 20, &mut out).unwrap();
        assert_eq!((out.len(), out.capacity()), (8 << 20, 8 << 20));
    }
}

/// Property tests of the decoder on arbitrary, corrupted and valid gzip,
/// and of the class files it loads.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::history::ClassHistory;
    use crate::telemetry::{MAX_SECOND, RacerId, Second};
    use crate::validate::proptest_config;
    use proptest::prelude::*;

    /// Compressible data: runs of a few repeated bytes, or noise.
    fn data() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec((any::<u8>(), 1usize..300), 0..40)
                .prop_map(|runs| runs.into_iter().flat_map(|(b, n)| vec![b; n]).collect()),
            prop::collection::vec(any::<u8>(), 0..2_000),
        ]
    }

    /// A gzip file changed in one way.
    #[derive(Debug, Clone)]
    enum Damage {
        /// Cut to this many bytes (modulo its length).
        Truncate(usize),
        /// This bit (modulo the file's bits) flipped.
        Flip(usize),
        /// These bytes written over the file from this offset.
        Overwrite(usize, Vec<u8>),
        /// These bytes appended.
        Append(Vec<u8>),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            any::<usize>().prop_map(Damage::Truncate),
            any::<usize>().prop_map(Damage::Flip),
            (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
                .prop_map(|(at, bytes)| Damage::Overwrite(at, bytes)),
            prop::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Append),
        ]
    }

    /// Applies `damage`: the damaged file, or `None` when it is unchanged.
    fn apply(file: &[u8], damage: &Damage) -> Option<Vec<u8>> {
        let mut out = file.to_vec();
        match damage {
            Damage::Truncate(at) => out.truncate(at % file.len()),
            Damage::Flip(bit) => out[bit / 8 % file.len()] ^= 1 << (bit % 8),
            Damage::Overwrite(at, bytes) => {
                for (i, b) in bytes.iter().enumerate() {
                    if let Some(byte) = out.get_mut(at % file.len() + i) {
                        *byte = *b;
                    }
                }
            }
            Damage::Append(bytes) => out.extend(bytes),
        }
        (out != file).then_some(out)
    }

    /// Any class history the class-file format can hold.
    fn class_history() -> impl Strategy<Value = ClassHistory> {
        let output = prop_oneof![
            (0u32..100_000_000).prop_map(|o| f64::from(o) / 10_000.0),
            prop::num::f64::POSITIVE | prop::num::f64::ZERO | prop::num::f64::SUBNORMAL,
        ];
        prop::collection::vec((1..=MAX_SECOND, any::<u64>(), output), 0..200).prop_map(|bests| {
            let mut history = ClassHistory::default();
            for (second, racer, output) in bests {
                history.merge(Second(second), RacerId(racer), output);
            }
            history
        })
    }

    proptest! {
        #![proptest_config(proptest_config(1000))]

        /// Any bytes, with any limit: an error or at most `limit` bytes,
        /// and never a buffer larger than the limit.
        #[test]
        fn any_bytes_decode_within_the_limit(
            bytes in prop::collection::vec(any::<u8>(), 0..4_096),
            gzip_header in any::<bool>(),
            limit in 0u64..100_000,
        ) {
            // With a gzip header, the decoder gets past it to the deflate
            // data more often than with plain noise.
            let bytes = if gzip_header {
                [&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff][..], &bytes].concat()
            } else {
                bytes
            };
            let mut out = Vec::new();
            let result = gunzip_into(&bytes, limit, &mut out);
            prop_assert!(out.capacity() as u64 <= limit, "{} > {}", out.capacity(), limit);
            if result.is_ok() {
                prop_assert!(out.len() as u64 <= limit);
            }
        }

        /// Valid gzip round-trips at any level, within a limit its size or
        /// more, and is refused (not cut) under a smaller one.
        #[test]
        fn valid_gzip_round_trips_under_its_limit(data in data(), level in 0u32..=9, slack in 0u64..100) {
            let packed = gzip(&data, level);
            let size = data.len() as u64;
            prop_assert_eq!(&gunzip(&packed, size + slack).unwrap(), &data);
            if size > 0 {
                let limit = size.saturating_sub(slack + 1);
                prop_assert!(
                    matches!(gunzip(&packed, limit), Err(GunzipError::TooLarge { .. })),
                    "limit {}", limit
                );
            }
        }

        /// Damaged gzip is refused with an error, or (a flipped flag or
        /// timestamp bit, trailing garbage the decoder stops at) decodes to
        /// exactly the original data: never to other data, never a panic.
        #[test]
        fn damaged_gzip_is_refused_or_unchanged(data in data(), level in 0u32..=9, damage in damage()) {
            let packed = gzip(&data, level);
            if let Some(damaged) = apply(&packed, &damage) {
                match gunzip(&damaged, 1 << 20) {
                    Ok(out) => prop_assert_eq!(out, data, "{:?}", damage),
                    Err(GunzipError::Corrupt(_)) => {}
                    Err(e) => prop_assert!(false, "{e}"),
                }
                let trailer = packed.len() - 8;
                let refused = match damage {
                    Damage::Truncate(_) => true,
                    Damage::Flip(bit) => bit / 8 % packed.len() >= trailer,
                    _ => false,
                };
                if refused {
                    prop_assert!(gunzip(&damaged, 1 << 20).is_err(), "{:?}", damage);
                }
            }
        }

    }

    proptest! {
        // Fewer cases: each encodes and decodes a class file of up to 200
        // bests.
        #![proptest_config(proptest_config(256))]

        /// A class file round-trips; damaged, it is refused or loads the
        /// same history.
        #[test]
        fn class_files_round_trip_and_damage_is_refused(
            history in class_history(),
            level in 0u32..=9,
            damage in damage(),
        ) {
            let file = history.to_gzip(level);
            prop_assert_eq!(&ClassHistory::from_gzip(&file).unwrap(), &history);
            if let Some(damaged) = apply(&file, &damage) {
                if let Ok(loaded) = ClassHistory::from_gzip(&damaged) {
                    prop_assert_eq!(loaded, history, "{:?}", damage);
                }
                if matches!(damage, Damage::Truncate(_)) {
                    prop_assert!(ClassHistory::from_gzip(&damaged).is_err());
                }
            }
        }
    }
}

//! Gzip encoding and decoding of delivery objects and class files.

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use std::io::{Read, Write};

/// Compression level for delivery objects and class files: level 6 is the
/// zlib default, a balance of size (class files are downloaded by every
/// racer before each race) and CPU.
pub const DEFAULT_LEVEL: u32 = 6;

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
/// cannot exhaust memory.
pub fn gunzip(data: &[u8], limit: u64) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::with_capacity(data.len() * 4);
    MultiGzDecoder::new(data)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(GunzipError::Corrupt)?;
    if out.len() as u64 > limit {
        return Err(GunzipError::TooLarge { limit });
    }
    Ok(out)
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
        assert!(matches!(
            gunzip(b"plain json", 100),
            Err(GunzipError::Corrupt(_))
        ));
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
}

//! Splitting a body into records: one JSON object, a JSON array of objects,
//! or NDJSON lines; and the limits on how many records a batch may hold.

use super::diagnose::{Body, Parsed, type_name};
use super::{BatchError, BodyFormat, MAX_BATCH_RECORDS, RecordError};

/// The non-blank lines of an NDJSON body. Both paths number records by this
/// sequence, so a record's index is the same whichever path reports it.
pub(super) fn ndjson_lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|b| *b == b'\n')
        .filter(|line| !line.trim_ascii().is_empty())
}

/// Whether a batch of `len` records may be taken: at least one, at most
/// [`MAX_BATCH_RECORDS`].
pub(super) fn check_size(len: usize) -> Result<(), BatchError> {
    if len == 0 {
        Err(BatchError::Empty)
    } else if len > MAX_BATCH_RECORDS {
        Err(BatchError::TooManyRecords(len))
    } else {
        Ok(())
    }
}

/// The records of a body as parsed JSON, not yet checked, or which lines
/// (or the body as a whole) are not JSON.
pub(super) fn values(body: &[u8], format: BodyFormat) -> Result<Vec<Parsed>, BatchError> {
    match format {
        BodyFormat::Json => json_values(body),
        BodyFormat::NdJson => ndjson_values(body),
    }
}

fn json_values(body: &[u8]) -> Result<Vec<Parsed>, BatchError> {
    match serde_json::from_slice::<Body>(body) {
        Ok(Body::Array(items)) => Ok(items),
        Ok(Body::Record(record)) => Ok(vec![record]),
        Ok(Body::Other(other)) => Err(BatchError::Malformed {
            message: format!(
                "body must be a JSON object or an array of objects, got {}",
                type_name(&other)
            ),
            records: Vec::new(),
        }),
        Err(e) => Err(BatchError::Malformed {
            message: format!("body is not valid JSON: {e}"),
            records: Vec::new(),
        }),
    }
}

fn ndjson_values(body: &[u8]) -> Result<Vec<Parsed>, BatchError> {
    let mut values = Vec::new();
    let mut broken = Vec::new();
    for (index, line) in ndjson_lines(body).enumerate() {
        match serde_json::from_slice::<Parsed>(line) {
            Ok(value) => values.push(value),
            Err(e) => broken.push(RecordError {
                index,
                field: None,
                reason: format!("line is not valid JSON: {e}"),
            }),
        }
    }
    if !broken.is_empty() {
        return Err(BatchError::Malformed {
            message: format!(
                "{} NDJSON line{} not valid JSON; nothing was accepted",
                broken.len(),
                if broken.len() == 1 { " is" } else { "s are" }
            ),
            records: broken,
        });
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::valid;
    use super::super::parse_batch;
    use super::*;

    #[test]
    fn json_body_may_be_an_object_or_an_array() {
        let one = serde_json::to_vec(&valid()).unwrap();
        assert_eq!(parse_batch(&one, BodyFormat::Json).unwrap().len(), 1);
        let many = serde_json::to_vec(&vec![valid(); MAX_BATCH_RECORDS]).unwrap();
        assert_eq!(
            parse_batch(&many, BodyFormat::Json).unwrap().len(),
            MAX_BATCH_RECORDS
        );
        let too_many = serde_json::to_vec(&vec![valid(); MAX_BATCH_RECORDS + 1]).unwrap();
        let err = parse_batch(&too_many, BodyFormat::Json).unwrap_err();
        assert_eq!(err, BatchError::TooManyRecords(MAX_BATCH_RECORDS + 1));
        assert_eq!(
            err.to_string(),
            format!(
                "a batch holds at most {MAX_BATCH_RECORDS} records, this one has {}",
                MAX_BATCH_RECORDS + 1
            )
        );
        assert_eq!(
            parse_batch(b"[]", BodyFormat::Json).unwrap_err(),
            BatchError::Empty
        );
        assert!(matches!(
            parse_batch(b"{not json", BodyFormat::Json).unwrap_err(),
            BatchError::Malformed { .. }
        ));
        assert!(matches!(
            parse_batch(b"42", BodyFormat::Json).unwrap_err(),
            BatchError::Malformed { .. }
        ));
    }

    #[test]
    fn ndjson_reports_broken_lines_by_index() {
        let line = serde_json::to_string(&valid()).unwrap();
        let body = format!("{line}\n\n{line}\r\n{line}\n");
        assert_eq!(
            parse_batch(body.as_bytes(), BodyFormat::NdJson)
                .unwrap()
                .len(),
            3
        );
        let body = format!("{line}\n{{oops\n{line}\n");
        let err = parse_batch(body.as_bytes(), BodyFormat::NdJson).unwrap_err();
        assert!(matches!(err, BatchError::Malformed { .. }));
        assert_eq!(err.records()[0].index, 1);
        assert_eq!(err.records()[0].field, None);
    }
}

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

/// The NDJSON reader on generated bodies: records, blank and broken lines,
/// `\n` or `\r\n` endings, a last newline or not.
#[cfg(test)]
mod ndjson_properties {
    use super::super::fixtures::valid;
    use super::super::{parse_batch, proptest_config};
    use super::*;
    use crate::telemetry::RacerId;
    use proptest::prelude::*;
    use proptest::sample::select;
    use serde_json::json;

    /// One line of a body.
    #[derive(Debug, Clone)]
    enum Line {
        /// A record (of racer `n`, n being its place among the records),
        /// valid or in class 9, with whitespace around it.
        Record { ok: bool, space: &'static str },
        /// Nothing but whitespace.
        Blank(&'static str),
        /// Not JSON.
        Broken(&'static str),
    }

    fn line() -> impl Strategy<Value = Line> {
        prop_oneof![
            6 => (prop::bool::weighted(0.9), select(&["", " ", "\t", "\r", " \r"][..]))
                .prop_map(|(ok, space)| Line::Record { ok, space }),
            2 => select(&["", " ", "\t", "\r", " \t\r", "\u{c}"][..]).prop_map(Line::Blank),
            1 => select(&["{oops", "[", "}", r#"{"classId":"#, "\u{0}", "{}{}"][..])
                .prop_map(Line::Broken),
        ]
    }

    /// The body, and for each line its text (without its ending).
    fn body(lines: &[Line], crlf: &[bool], trailing: bool) -> (String, Vec<String>) {
        let mut body = String::new();
        let mut texts = Vec::new();
        let mut records = 0;
        for (i, line) in lines.iter().enumerate() {
            let text = match line {
                Line::Record { ok, space } => {
                    let mut record = valid();
                    record["racerId"] = json!(records);
                    if !ok {
                        record["classId"] = json!(9);
                    }
                    records += 1;
                    format!("{space}{record}{space}")
                }
                Line::Blank(blank) => (*blank).to_owned(),
                Line::Broken(broken) => (*broken).to_owned(),
            };
            body.push_str(&text);
            if trailing || i + 1 < lines.len() {
                body.push_str(if crlf[i % crlf.len()] { "\r\n" } else { "\n" });
            }
            texts.push(text);
        }
        (body, texts)
    }

    proptest! {
        #![proptest_config(proptest_config(1000))]

        #[test]
        fn records_are_numbered_by_non_blank_line(
            lines in prop::collection::vec(line(), 0..12),
            crlf in prop::collection::vec(any::<bool>(), 1..4),
            trailing in any::<bool>(),
        ) {
            let (body, texts) = body(&lines, &crlf, trailing);
            // The lines as `str::lines` splits them, blank ones left out.
            let expected: Vec<&str> = body
                .lines()
                .map(str::trim_ascii)
                .filter(|line| !line.is_empty())
                .collect();
            let framed: Vec<&str> = ndjson_lines(body.as_bytes())
                .map(|line| std::str::from_utf8(line).unwrap().trim_ascii())
                .collect();
            prop_assert_eq!(&framed, &expected);
            // Every non-blank line is a record, numbered from 0.
            let numbered: Vec<(usize, &Line)> = lines
                .iter()
                .filter(|line| !matches!(line, Line::Blank(_)))
                .enumerate()
                .collect();
            prop_assert_eq!(numbered.len(), texts.iter().filter(|t| !t.trim_ascii().is_empty()).count());
            let result = parse_batch(body.as_bytes(), BodyFormat::NdJson);
            let broken: Vec<usize> = numbered
                .iter()
                .filter(|(_, line)| matches!(line, Line::Broken(_)))
                .map(|(index, _)| *index)
                .collect();
            let invalid: Vec<usize> = numbered
                .iter()
                .filter(|(_, line)| matches!(line, Line::Record { ok: false, .. }))
                .map(|(index, _)| *index)
                .collect();
            match result {
                Err(BatchError::Malformed { records, .. }) => {
                    let indexes: Vec<usize> = records.iter().map(|r| r.index).collect();
                    prop_assert_eq!(indexes, broken);
                    prop_assert!(records.iter().all(|r| r.field.is_none()));
                }
                Err(BatchError::Empty) => prop_assert!(numbered.is_empty()),
                Err(BatchError::Invalid { total, records, .. }) => {
                    prop_assert!(broken.is_empty());
                    prop_assert_eq!(total, numbered.len());
                    let indexes: Vec<usize> = records.iter().map(|r| r.index).collect();
                    prop_assert_eq!(indexes, invalid);
                    prop_assert!(records.iter().all(|r| r.field == Some("classId")));
                }
                Ok(records) => {
                    prop_assert!(broken.is_empty() && invalid.is_empty() && !numbered.is_empty());
                    let racers: Vec<RacerId> = records.iter().map(|r| r.racer_id).collect();
                    let expected: Vec<RacerId> = (0..numbered.len() as u64).map(RacerId).collect();
                    prop_assert_eq!(racers, expected, "in order");
                }
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
    }
}

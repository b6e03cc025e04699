//! `alleycat history import <DIR or s3://bucket/prefix>`: brings the class
//! files the original system wrote into the history store.
//!
//! For each class N (1-6), the source's `class-N.gz` and `class-N` (the
//! original wrote the one and read the other; either may be gzip or plain
//! JSON) are read leniently ([`ClassHistory::from_original`]): every valid
//! best is kept, rounded as the original's real-time path rounded, and
//! what is not valid is dropped and counted by reason. Then, per class:
//!
//! 1. the imported bests are written as a source object
//!    `_imports/class-N/<UTC YYYYMMDDTHHMMSSZ>-<random>.json.gz` (gzipped
//!    class-history JSON): bests of unknown race, which recomputing a
//!    racer's bests (after a disqualification) reads like any other source;
//! 2. they are merged into the store's `class-N.gz` by maximum, written
//!    conditionally on the version read (re-read and merged again on a
//!    conflict, a bounded number of times), so a running history service
//!    loses nothing and the next publication of its own merges them in.
//!
//! A `class-N.gz` in the store that is not in Alleycat's format (e.g. an
//! original file copied there by hand, which blocks the class in the
//! running service) is read as an original file and imported with the
//! source, so importing unblocks the class. A class file holds at most
//! `ALLEYCAT_HISTORY_MAX_RACERS` racers, as the merge keeps it: racers new
//! to the class past it are not imported (the lowest ids are kept).

use crate::HistoryArgs;
use crate::class_file::{CONTENT_TYPE, SegmentedClassFile};
use alleycat_core::ClassId;
use alleycat_core::RacerId;
use alleycat_core::codec;
use alleycat_core::disqualification::Disqualifications;
use alleycat_core::history::{ClassHistory, DropReport, MAX_CLASS_FILE_BYTES, class_file_key};
use alleycat_core::telemetry::CLASS_COUNT;
use alleycat_storage::{ETag, ObjectStore, Precondition, StorageArgs, StoreError};
use anyhow::{Context as _, bail};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Key prefix of the imported bests' source objects in the history store.
pub const IMPORTS_PREFIX: &str = "_imports/";

/// How many times a class file is re-read and written again when another
/// writer changed it in between.
const MAX_ATTEMPTS: u32 = 10;

/// `alleycat history import`: the source and the history store's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// A directory, or `s3://bucket/prefix`, holding the original's class
    /// files: `class-N.gz` and/or `class-N` (N 1-6), gzip or plain JSON.
    #[arg(value_name = "DIR or s3://bucket/prefix")]
    pub source: Source,
    /// The history store to import into (as the history service's).
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Gzip level and bound of racers, as the history service's.
    #[command(flatten)]
    pub history: HistoryArgs,
}

/// Where the original's class files are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local directory.
    Dir(PathBuf),
    /// A prefix in an S3 bucket (empty, or ending in `/`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix.
        prefix: String,
    },
}

impl FromStr for Source {
    type Err = String;

    fn from_str(text: &str) -> Result<Source, String> {
        let Some(rest) = text.strip_prefix("s3://") else {
            if text.is_empty() {
                return Err("an empty path".to_owned());
            }
            return Ok(Source::Dir(PathBuf::from(text)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("no bucket in {text:?}"));
        }
        let mut prefix = prefix.to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Source::S3 {
            bucket: bucket.to_owned(),
            prefix,
        })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Dir(dir) => write!(f, "{}", dir.display()),
            Source::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// The names a class's file may have in the source.
fn source_names(class: ClassId) -> [String; 2] {
    [format!("class-{class}.gz"), format!("class-{class}")]
}

/// An opened source.
enum Reader {
    Dir(PathBuf),
    S3(Arc<dyn ObjectStore>, String),
}

impl Reader {
    async fn open(source: &Source, storage: &StorageArgs) -> anyhow::Result<Reader> {
        Ok(match source {
            Source::Dir(dir) => {
                let meta = tokio::fs::metadata(dir)
                    .await
                    .with_context(|| format!("reading {}", dir.display()))?;
                if !meta.is_dir() {
                    bail!("{} is not a directory", dir.display());
                }
                Reader::Dir(dir.clone())
            }
            Source::S3 { bucket, prefix } => {
                Reader::S3(storage.open_s3_bucket(bucket).await, prefix.clone())
            }
        })
    }

    /// The file `name`, if there is one.
    async fn read(&self, name: &str) -> anyhow::Result<Option<Bytes>> {
        match self {
            Reader::Dir(dir) => {
                let path = dir.join(name);
                let meta = match tokio::fs::metadata(&path).await {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
                };
                if meta.len() > MAX_CLASS_FILE_BYTES {
                    bail!(
                        "{} is larger than {MAX_CLASS_FILE_BYTES} bytes",
                        path.display()
                    );
                }
                let bytes = tokio::fs::read(&path)
                    .await
                    .with_context(|| format!("reading {}", path.display()))?;
                Ok(Some(Bytes::from(bytes)))
            }
            Reader::S3(store, prefix) => {
                let key = format!("{prefix}{name}");
                let object = store
                    .get(&key)
                    .await
                    .with_context(|| format!("reading {key}"))?;
                Ok(object.map(|o| o.body))
            }
        }
    }
}

/// What importing one class did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClassImport {
    /// The source files read (names), and the store's own file when it was
    /// read as an original file.
    pub files: Vec<String>,
    /// What was dropped as invalid, by reason.
    pub dropped: DropReport,
    /// Bests of racers new to the class past the bound of racers: not
    /// imported.
    pub too_many_racers: u64,
    /// Bests imported (valid and rounded; as written to `source_key`).
    pub imported: usize,
    /// Of those, how many raised (or added) a best of the class file.
    pub raised: usize,
    /// The source object written under [`IMPORTS_PREFIX`], if any.
    pub source_key: Option<String>,
    /// Bests in the class file afterwards.
    pub bests_after: usize,
    /// Racers in the class file afterwards.
    pub racers_after: usize,
}

/// What one import did, per class; a class whose import failed has its
/// error instead.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Per class with a file in the source (or a foreign file in the store).
    pub classes: Vec<(ClassId, anyhow::Result<ClassImport>)>,
}

/// Runs `alleycat history import`: imports, prints what it dropped and
/// imported per class on stdout, and fails if any class could not be
/// imported (the others are).
pub async fn run(args: &ImportArgs) -> anyhow::Result<()> {
    let report = import(args, |line| println!("{line}")).await?;
    let failed: Vec<String> = report
        .classes
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(c, _)| format!("class-{c}"))
        .collect();
    if !failed.is_empty() {
        bail!("importing {} failed", failed.join(", "));
    }
    Ok(())
}

/// Imports every class file found in the source; `say` gets each line of
/// the report as it happens. Fails only when the source cannot be read at
/// all or holds no class file.
pub async fn import(args: &ImportArgs, mut say: impl FnMut(&str)) -> anyhow::Result<ImportReport> {
    let reader = Reader::open(&args.source, &args.storage).await?;
    let store = args
        .storage
        .open_history_store()
        .await
        .context("opening the history store")?;
    let disqualified = args
        .storage
        .disqualifications()
        .await?
        .refresh()
        .await
        .context("reading the disqualification list")?;
    let mut report = ImportReport::default();
    let mut found_any = false;
    for class in ClassId::all() {
        let mut files = Vec::new();
        for name in source_names(class) {
            let bytes = reader
                .read(&name)
                .await
                .with_context(|| format!("reading {} in {}", name, args.source))?;
            if let Some(bytes) = bytes {
                files.push((name, bytes));
            }
        }
        found_any |= !files.is_empty();
        let result = import_class(
            store.as_ref(),
            class,
            files,
            &args.history,
            &disqualified,
            &mut say,
        )
        .await;
        match &result {
            Ok(None) => continue,
            Ok(Some(done)) => say(&format!(
                "class-{class}: imported {} bests ({} raised a best){}; class-{class}.gz now holds {} bests of {} racers",
                done.imported,
                done.raised,
                done.source_key
                    .as_ref()
                    .map(|k| format!(", kept as {k}"))
                    .unwrap_or_default(),
                done.bests_after,
                done.racers_after,
            )),
            Err(e) => say(&format!("class-{class}: not imported: {e:#}")),
        }
        report
            .classes
            .push((class, result.map(|done| done.unwrap_or_default())));
    }
    if !found_any {
        bail!(
            "no class file in {}: expected class-N.gz or class-N, N 1 to {CLASS_COUNT}",
            args.source
        );
    }
    let imported: usize = report
        .classes
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|c| c.imported)
        .sum();
    let dropped: u64 = report
        .classes
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|c| c.dropped.total() + c.too_many_racers)
        .sum();
    let failed = report.classes.iter().filter(|(_, r)| r.is_err()).count();
    say(&format!(
        "imported {imported} bests into {} classes, dropped {dropped}{}",
        report.classes.len() - failed,
        if failed > 0 {
            format!(", {failed} classes failed")
        } else {
            String::new()
        }
    ));
    Ok(report)
}

/// The store's class file, as found.
enum Current {
    Absent,
    /// In Alleycat's format, at this version.
    Valid(ClassHistory, ETag),
    /// Not in Alleycat's format, but an original file (read leniently).
    Original {
        history: ClassHistory,
        dropped: DropReport,
        etag: ETag,
        why: String,
    },
}

impl Current {
    async fn read(store: &dyn ObjectStore, class: ClassId) -> anyhow::Result<Current> {
        let key = class_file_key(class);
        let Some(object) = store
            .get(&key)
            .await
            .with_context(|| format!("reading {key} in the history store"))?
        else {
            return Ok(Current::Absent);
        };
        let body = object.body;
        let read = tokio::task::spawn_blocking(move || match ClassHistory::from_gzip(&body) {
            Ok(history) => Ok(Ok(history)),
            Err(alleycat) => match ClassHistory::from_original(&body) {
                Ok(original) => Ok(Err((original, alleycat.to_string()))),
                Err(original) => Err(anyhow::anyhow!(
                    "{key} in the history store is neither a class file ({alleycat}) nor one of \
                     the original's ({original}); it is left as it is"
                )),
            },
        })
        .await??;
        Ok(match read {
            Ok(history) => Current::Valid(history, object.etag),
            Err(((history, dropped), why)) => Current::Original {
                history,
                dropped,
                etag: object.etag,
                why,
            },
        })
    }
}

/// Imports one class's `files`; `None` when there was nothing to do (no
/// file in the source, and the store's file is Alleycat's or absent).
async fn import_class(
    store: &dyn ObjectStore,
    class: ClassId,
    files: Vec<(String, Bytes)>,
    args: &HistoryArgs,
    disqualified: &Disqualifications,
    say: &mut impl FnMut(&str),
) -> anyhow::Result<Option<ClassImport>> {
    let mut current = Current::read(store, class).await?;
    if files.is_empty() && !matches!(current, Current::Original { .. }) {
        return Ok(None);
    }
    let mut done = ClassImport::default();
    let mut imported = ClassHistory::default();
    for (name, bytes) in files {
        let (history, dropped) =
            tokio::task::spawn_blocking(move || ClassHistory::from_original(&bytes))
                .await?
                .with_context(|| format!("{name} is not a class file of the original"))?;
        say(&format!(
            "class-{class}: read {name}: {} valid bests, {} dropped",
            history.len(),
            dropped.total()
        ));
        imported.merge_history(&history);
        done.dropped.merge(&dropped);
        done.files.push(name);
    }
    if let Current::Original {
        history,
        dropped,
        why,
        ..
    } = &current
    {
        let key = class_file_key(class);
        say(&format!(
            "class-{class}: {key} in the history store is not in Alleycat's format ({why}); read \
             as an original file: {} valid bests, {} dropped",
            history.len(),
            dropped.total()
        ));
        imported.merge_history(history);
        done.dropped.merge(dropped);
        done.files.push(format!("{key} (history store)"));
    }
    say(&format!(
        "class-{class}: dropped {}: {}",
        done.dropped.total(),
        done.dropped
    ));

    // The bound of racers, against the file as first read (an original
    // file there is part of `imported`).
    let empty = ClassHistory::default();
    let existing = match &current {
        Current::Valid(existing, _) => existing,
        Current::Absent | Current::Original { .. } => &empty,
    };
    let (kept, refused) = bound_racers(existing, &imported, args.max_racers);
    if refused > 0 {
        say(&format!(
            "class-{class}: not imported: {refused} bests of racers new to the class past \
             ALLEYCAT_HISTORY_MAX_RACERS ({})",
            args.max_racers
        ));
    }
    imported = kept;
    done.too_many_racers = refused;
    done.imported = imported.len();

    // First the source object, so that what the class file will hold is
    // always also kept as a source (once: importing the same again reuses
    // the object that holds the same bests).
    if !imported.is_empty() {
        let json = imported.to_json();
        let key = match kept_import(store, class, &json).await? {
            Some(key) => key,
            None => {
                let key = format!(
                    "{}{}-{:016x}.json.gz",
                    imports_prefix(class),
                    chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
                    fastrand::u64(..)
                );
                let body = codec::gzip(&json, args.gzip_level);
                store
                    .put_if(
                        &key,
                        Bytes::from(body),
                        CONTENT_TYPE,
                        Precondition::IfAbsent,
                    )
                    .await
                    .with_context(|| format!("writing {key} in the history store"))?;
                key
            }
        };
        done.source_key = Some(key);
    }

    // Then the class file, by compare-and-swap, without the racers
    // disqualified from every race (their imported bests stay kept as a
    // source: a reinstatement brings them in).
    let whole_racers: BTreeSet<RacerId> = disqualified
        .entries()
        .iter()
        .filter(|e| e.race_id.is_none())
        .map(|e| e.racer_id)
        .collect();
    if !whole_racers.is_empty() {
        imported.remove_racers(&whole_racers);
    }
    let key = class_file_key(class);
    for attempt in 1..=MAX_ATTEMPTS {
        // A file not in Alleycat's format is replaced even when nothing rises.
        let foreign = matches!(current, Current::Original { .. });
        let (mut merged, condition) = match current {
            Current::Absent => (ClassHistory::default(), Precondition::IfAbsent),
            Current::Valid(history, etag) => (history, Precondition::IfMatch(etag)),
            // As first read, its bests are in `imported` already; one that
            // appeared since is merged with it here.
            Current::Original { history, etag, .. } => (
                if attempt == 1 {
                    ClassHistory::default()
                } else {
                    history
                },
                Precondition::IfMatch(etag),
            ),
        };
        done.raised = imported
            .iter()
            .flat_map(|(second, racers)| racers.iter().map(move |(r, v)| (second, *r, *v)))
            .filter(|&(second, racer, value)| merged.merge(second, racer, value))
            .count();
        if !foreign && done.raised == 0 {
            // Nothing to raise: the file is left as it is.
            done.bests_after = merged.len();
            done.racers_after = merged.racers().collect::<BTreeSet<_>>().len();
            return Ok(Some(done));
        }
        let level = args.gzip_level;
        let (merged, body) = tokio::task::spawn_blocking(move || {
            let body = SegmentedClassFile::new(&merged, level).to_gzip();
            (merged, body)
        })
        .await?;
        match store
            .put_if(&key, Bytes::from(body), CONTENT_TYPE, condition)
            .await
        {
            Ok(_) => {
                done.bests_after = merged.len();
                done.racers_after = merged.racers().collect::<BTreeSet<_>>().len();
                return Ok(Some(done));
            }
            Err(StoreError::PreconditionFailed { .. }) => {
                say(&format!(
                    "class-{class}: {key} changed while importing; reading it again (attempt {attempt} of {MAX_ATTEMPTS})"
                ));
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                current = Current::read(store, class).await?;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("writing {key}")));
            }
        }
    }
    bail!("{key} kept changing while importing ({MAX_ATTEMPTS} attempts); run the import again")
}

/// Where the imported bests of `class` are kept.
#[must_use]
pub fn imports_prefix(class: ClassId) -> String {
    format!("{IMPORTS_PREFIX}class-{class}/")
}

/// The source object of `class` that holds exactly the bests `json`
/// encodes, if one was written before.
async fn kept_import(
    store: &dyn ObjectStore,
    class: ClassId,
    json: &[u8],
) -> anyhow::Result<Option<String>> {
    let prefix = imports_prefix(class);
    let keys = store
        .list(&prefix, None)
        .await
        .with_context(|| format!("listing {prefix} in the history store"))?;
    for key in keys {
        let Some(object) = store
            .get(&key)
            .await
            .with_context(|| format!("reading {key} in the history store"))?
        else {
            continue;
        };
        if codec::gunzip(&object.body, MAX_CLASS_FILE_BYTES).is_ok_and(|kept| kept == json) {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// `imported` without the racers new to `existing` past `max_racers`
/// racers in all (the lowest ids are kept), and how many bests that left
/// out.
fn bound_racers(
    existing: &ClassHistory,
    imported: &ClassHistory,
    max_racers: u64,
) -> (ClassHistory, u64) {
    let mut racers: BTreeSet<RacerId> = existing.racers().collect();
    let room = usize::try_from(max_racers)
        .unwrap_or(usize::MAX)
        .saturating_sub(racers.len());
    // In ascending order: the lowest new ids are admitted.
    let admitted: BTreeSet<RacerId> = imported
        .racers()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|r| !racers.contains(r))
        .take(room)
        .collect();
    racers.extend(admitted);
    let mut kept = ClassHistory::default();
    let mut refused = 0;
    for (second, bests) in imported.iter() {
        for (&racer, &value) in bests {
            if racers.contains(&racer) {
                kept.merge(second, racer, value);
            } else {
                refused += 1;
            }
        }
    }
    (kept, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alleycat_core::Second;
    use alleycat_storage::Object;
    use alleycat_storage::object_store::fs::FsStore;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A store where another writer publishes class-1.gz just before our
    /// first write of it.
    struct Competing {
        inner: FsStore,
        raced: AtomicBool,
    }

    #[async_trait]
    impl ObjectStore for Competing {
        async fn put_if(
            &self,
            key: &str,
            body: Bytes,
            content_type: &'static str,
            condition: Precondition,
        ) -> Result<ETag, StoreError> {
            if key == "class-1.gz" && !self.raced.swap(true, Ordering::SeqCst) {
                let mut theirs = ClassHistory::default();
                theirs.merge(Second(9), RacerId(9), 99.0);
                theirs.merge(Second(1), RacerId(1), 50.0);
                self.inner
                    .put(key, Bytes::from(theirs.to_gzip(6)), content_type)
                    .await?;
            }
            self.inner.put_if(key, body, content_type, condition).await
        }
        async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
            self.inner.get(key).await
        }
        async fn head(&self, key: &str) -> Result<Option<ETag>, StoreError> {
            self.inner.head(key).await
        }
        async fn list(
            &self,
            prefix: &str,
            start_after: Option<&str>,
        ) -> Result<Vec<String>, StoreError> {
            self.inner.list(prefix, start_after).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key).await
        }
    }

    #[tokio::test]
    async fn a_class_file_written_meanwhile_is_read_again_and_merged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Competing {
            inner: FsStore::open(dir.path()).unwrap(),
            raced: AtomicBool::new(false),
        };
        let args: HistoryArgs = alleycat_runtime::defaults();
        let file = br#"{"1":{"1":20.00004,"2":30,"3":77}}"#;
        // Racer 3 is disqualified from every race.
        let (disqualified, _) = Disqualifications::default()
            .with(
                alleycat_core::disqualification::NewDisqualification {
                    racer_id: RacerId(3),
                    race_id: None,
                    reason: "x".into(),
                },
                chrono::Utc::now(),
            )
            .unwrap();
        let mut lines = Vec::new();
        let done = import_class(
            &store,
            ClassId(1),
            vec![("class-1".to_owned(), Bytes::from_static(file))],
            &args,
            &disqualified,
            &mut |line: &str| lines.push(line.to_owned()),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(
            lines.iter().any(|l| l.contains("changed while importing")),
            "{lines:?}"
        );
        let written = store.get("class-1.gz").await.unwrap().unwrap();
        let history = ClassHistory::from_gzip(&written.body).unwrap();
        assert_eq!(
            history.best(Second(9), RacerId(9)),
            Some(99.0),
            "theirs kept"
        );
        assert_eq!(history.best(Second(1), RacerId(1)), Some(50.0), "max kept");
        assert_eq!(
            history.best(Second(1), RacerId(2)),
            Some(30.0),
            "ours merged"
        );
        assert_eq!(history.best(Second(1), RacerId(3)), None, "disqualified");
        assert_eq!((done.imported, done.raised, done.bests_after), (3, 1, 3));
        // The source object holds what was imported, rounded.
        let kept = store
            .get(done.source_key.as_deref().unwrap())
            .await
            .unwrap()
            .unwrap();
        let kept = ClassHistory::from_gzip(&kept.body).unwrap();
        assert_eq!(kept.best(Second(1), RacerId(1)), Some(20.0));
        assert_eq!(
            kept.best(Second(1), RacerId(3)),
            Some(77.0),
            "kept for a reinstatement"
        );
        assert_eq!(kept.len(), 3);
    }

    #[test]
    fn sources_parse() {
        assert_eq!(
            "s3://old-history/prod".parse::<Source>(),
            Ok(Source::S3 {
                bucket: "old-history".into(),
                prefix: "prod/".into()
            })
        );
        assert_eq!(
            "s3://b".parse::<Source>(),
            Ok(Source::S3 {
                bucket: "b".into(),
                prefix: String::new()
            })
        );
        assert_eq!(
            "s3://b/a/".parse::<Source>().unwrap().to_string(),
            "s3://b/a/"
        );
        assert!("s3:///x".parse::<Source>().is_err());
        assert_eq!(
            "./old".parse::<Source>(),
            Ok(Source::Dir(PathBuf::from("./old")))
        );
    }

    #[test]
    fn the_bound_of_racers_keeps_known_racers_and_the_lowest_new_ids() {
        let mut existing = ClassHistory::default();
        existing.merge(Second(1), RacerId(50), 1.0);
        existing.merge(Second(1), RacerId(60), 1.0);
        let mut imported = ClassHistory::default();
        for racer in [60, 10, 20, 30] {
            imported.merge(Second(1), RacerId(racer), 2.0);
            imported.merge(Second(2), RacerId(racer), 2.0);
        }
        let (kept, refused) = bound_racers(&existing, &imported, 3);
        assert_eq!(
            kept.racers().collect::<BTreeSet<_>>(),
            BTreeSet::from([RacerId(10), RacerId(60)])
        );
        assert_eq!(refused, 4);
        let (all, none) = bound_racers(&existing, &imported, 100);
        assert_eq!((all, none), (imported, 0));
    }
}

//! `alleycat history import`: the real binary imports class files the
//! original system wrote (gzip and plain, with the dirt its unvalidated
//! merge let in) into the history store of a running service, on the
//! embedded store and on S3: it prints what it dropped and imported, the
//! class file holds the valid values rounded as the original rounded them,
//! merged by maximum with the bests already there, a class blocked by an
//! original file in the store is unblocked, and the running service serves
//! the result and keeps merging into it.

use crate::common::*;
use alleycat_core::codec;
use alleycat_core::history::ClassHistory;
use alleycat_core::{RacerId, Second};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Runs `alleycat <args>` to its end with `env` added; returns whether it
/// succeeded, and its stdout.
async fn run_alleycat(args: &[&str], env: &[(String, String)]) -> (bool, String) {
    let mut command = alleycat_command();
    command
        .args(args)
        .env("ALLEYCAT_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true);
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("the import ends in time")
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    eprintln!(
        "alleycat {args:?} ({}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), stdout)
}

/// The one line of `stdout` that starts with `prefix`.
fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(lines.len(), 1, "one line starting {prefix:?} in:\n{stdout}");
    lines[0]
}

/// The original's class 1: unrounded values, some below the bests already
/// there, some above, new racers, and dirt of every kind (9 entries).
const ORIGINAL_CLASS_1_GZ: &str = r#"{
    "1": {"1": 20.5, "2": 300.12345},
    "2": {"50": 83.53784999999999, "undefined": 3, "52": null, "53": "12", "54": -1, "55": 1e21},
    "400": {"51": 165.38375},
    "undefined": {"1": 5, "2": 6},
    "0": {"1": 5},
    "3601": {"1": 5}
}"#;
/// The same class's plain (not gzipped) file: rounds to a whole number.
const ORIGINAL_CLASS_1_PLAIN: &str = r#"{"3": {"1": 999.99999}}"#;
/// An original file copied by hand into the store as class 2's file: not
/// in Alleycat's format (plain JSON, dirty), so the class is blocked.
const FOREIGN_CLASS_2: &str = r#"{"1": {"7": 81.00004, "8": null}, "x": {"1": 1}}"#;

/// `bests` raised by what the original class-1 files import, as
/// JavaScript's `Number(Math.round(v+'e'+4)+'e-'+4)` gives them (computed
/// with Node).
fn with_imported_class_1(
    mut bests: BTreeMap<u16, BTreeMap<u64, f64>>,
) -> BTreeMap<u16, BTreeMap<u64, f64>> {
    for (second, racer, value) in [
        (1, 1, 20.5),
        (1, 2, 300.1235),
        (2, 50, 83.5378),
        (3, 1, 1000.0),
        (400, 51, 165.3838),
    ] {
        let best = bests
            .entry(second)
            .or_default()
            .entry(racer)
            .or_insert(f64::MIN);
        *best = best.max(value);
    }
    bests
}

/// Checks the report the import printed for class 1 (both source files).
fn assert_class_1_report(stdout: &str, raised: usize) {
    let dropped = line(stdout, "class-1: dropped");
    assert!(dropped.starts_with("class-1: dropped 9: "), "{dropped}");
    for part in [
        r#"second not an integer 2 (e.g. "undefined")"#,
        r#"second out of range 2 (e.g. "0", "3601")"#,
        r#"racer id not an integer 1 (e.g. "undefined" at second 2)"#,
        "null value 1 (e.g. null of racer 52 at second 2)",
        "value not a number 1",
        "negative value 1 (e.g. -1 of racer 54 at second 2)",
        "value not roundable 1 (e.g. 1e+21 of racer 55 at second 2)",
    ] {
        assert!(dropped.contains(part), "{part:?} missing from {dropped}");
    }
    let imported = line(stdout, "class-1: imported");
    assert!(
        imported.starts_with(&format!(
            "class-1: imported 5 bests ({raised} raised a best), kept as _imports/class-1/"
        )),
        "{imported}"
    );
}

/// Writes the original's files into `dir`.
fn write_original_files(dir: &Path) {
    std::fs::write(
        dir.join("class-1.gz"),
        codec::gzip(ORIGINAL_CLASS_1_GZ.as_bytes(), 6),
    )
    .unwrap();
    std::fs::write(dir.join("class-1"), ORIGINAL_CLASS_1_PLAIN).unwrap();
    std::fs::write(dir.join("unrelated.json"), "not a class file").unwrap();
}

/// `/readyz` names `part` as not ready.
async fn names_not_ready(base: &str, part: &str) -> bool {
    let body: Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["parts"].get(part).is_some()
}

/// The bests a source object under `_imports/` holds.
fn imported_bests(gz: &[u8]) -> BTreeMap<u16, BTreeMap<u64, f64>> {
    serde_json::from_value(decode_class_file(gz)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_original_files_into_the_embedded_store_of_a_running_service() {
    let data = tempfile::tempdir().unwrap();
    let original = tempfile::tempdir().unwrap();
    write_original_files(original.path());
    let history_dir = data.path().join("history");
    std::fs::create_dir_all(&history_dir).unwrap();
    std::fs::write(
        history_dir.join("class-2.gz"),
        codec::gzip(FOREIGN_CLASS_2.as_bytes(), 6),
    )
    .unwrap();

    let server = Server::start(data.path()).await;
    let client = reqwest::Client::new();
    eventually("class 2 to be blocked by the original file", || async {
        names_not_ready(&server.base, "history class-2")
            .await
            .then_some(())
    })
    .await;
    // Bests already there: a race of class 1.
    let first = race(7001, 1, 1, 3, 4);
    for second in &first {
        let body = Value::Array(second.iter().map(Sample::json).collect());
        assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
    }
    let existing = bests(first.iter().flatten());
    wait_for_bests(&server.base, &existing).await;

    let env = vec![(
        "ALLEYCAT_DATA_DIR".to_owned(),
        data.path().to_str().unwrap().to_owned(),
    )];
    let source = original.path().to_str().unwrap();
    let (ok, stdout) = run_alleycat(&["history", "import", source], &env).await;
    assert!(ok);
    assert_class_1_report(&stdout, 4);
    line(
        &stdout,
        "class-1: read class-1.gz: 4 valid bests, 9 dropped",
    );
    line(&stdout, "class-1: read class-1: 1 valid bests, 0 dropped");
    assert!(
        line(
            &stdout,
            "class-2: class-2.gz in the history store is not in Alleycat's format"
        )
        .ends_with("read as an original file: 1 valid bests, 2 dropped"),
        "{stdout}"
    );
    line(&stdout, "class-2: imported 1 bests (1 raised a best)");
    let dropped = line(&stdout, "class-2: dropped");
    assert!(
        dropped.starts_with("class-2: dropped 2: ") && dropped.contains("null value 1"),
        "{dropped}"
    );
    line(&stdout, "imported 6 bests into 2 classes, dropped 11");

    // The class file: rounded, max-merged, numbers as JavaScript writes them.
    let class_1 = with_imported_class_1(existing[&1].clone());
    let want = BTreeMap::from([(1u8, class_1.clone())]);
    wait_for_bests(&server.base, &want).await;
    let raw = codec::gunzip(
        &std::fs::read(history_dir.join("class-1.gz")).unwrap(),
        1 << 30,
    )
    .unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.contains(r#""3":{"1":1000,"#), "{text}");
    assert!(!text.contains(".0,") && !text.contains(".0}"), "{text}");
    // Every imported best kept as a source object, once.
    let imports: Vec<_> = std::fs::read_dir(history_dir.join("_imports/class-1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(imports.len(), 1, "{imports:?}");
    let kept = imported_bests(&std::fs::read(&imports[0]).unwrap());
    assert_eq!(kept, with_imported_class_1(BTreeMap::new()));

    // Class 2 is Alleycat's now: the service unblocks it by itself.
    let class_2 = BTreeMap::from([(
        2u8,
        BTreeMap::from([(1u16, BTreeMap::from([(7u64, 81.0)]))]),
    )]);
    wait_for_bests(&server.base, &class_2).await;
    eventually("class 2 to be unblocked", || async {
        (!names_not_ready(&server.base, "history class-2").await).then_some(())
    })
    .await;

    // The running service goes on merging into the imported file.
    let second = race(7002, 1, 2, 3, 5);
    for records in &second {
        let body = Value::Array(records.iter().map(Sample::json).collect());
        assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
    }
    let mut all = class_1.clone();
    for (second, racers) in &bests(second.iter().flatten())[&1] {
        for (racer, value) in racers {
            let best = all
                .entry(*second)
                .or_default()
                .entry(*racer)
                .or_insert(f64::MIN);
            *best = best.max(*value);
        }
    }
    wait_for_bests(&server.base, &BTreeMap::from([(1u8, all.clone())])).await;

    // Importing again changes nothing and keeps no second copy.
    let (ok, stdout) = run_alleycat(&["history", "import", source], &env).await;
    assert!(ok);
    assert_class_1_report(&stdout, 0);
    assert_eq!(
        std::fs::read_dir(history_dir.join("_imports/class-1"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(fetch_class(&server.base, 1).await, Some(all));

    // A source without class files, or a file that is not one, fails.
    let empty = tempfile::tempdir().unwrap();
    let (ok, _) = run_alleycat(&["history", "import", empty.path().to_str().unwrap()], &env).await;
    assert!(!ok, "a directory without class files is an error");
    std::fs::write(empty.path().join("class-5"), "[1, 2]").unwrap();
    let (ok, stdout) =
        run_alleycat(&["history", "import", empty.path().to_str().unwrap()], &env).await;
    assert!(!ok, "a class file that is not one is an error");
    line(
        &stdout,
        "class-5: not imported: class-5 is not a class file of the original",
    );
    assert_eq!(fetch_class(&server.base, 5).await, None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn imports_from_an_s3_prefix_into_the_s3_history_store() {
    use aws_sdk_s3::primitives::ByteStream;
    let aws = aws::Aws::fresh("history-import", 1).await;
    let original = format!("{}-original", aws.stream);
    aws.s3
        .create_bucket()
        .bucket(&original)
        .send()
        .await
        .unwrap();
    let put = |bucket: String, key: &'static str, body: Vec<u8>| {
        let s3 = aws.s3.clone();
        async move {
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .content_type("application/gzip")
                .body(ByteStream::from(body))
                .send()
                .await
                .unwrap();
        }
    };
    put(
        original.clone(),
        "old/class-1.gz",
        codec::gzip(ORIGINAL_CLASS_1_GZ.as_bytes(), 6),
    )
    .await;
    put(
        original.clone(),
        "old/class-1",
        ORIGINAL_CLASS_1_PLAIN.as_bytes().to_vec(),
    )
    .await;
    // Outside the prefix: not imported.
    put(
        original.clone(),
        "class-3.gz",
        codec::gzip(br#"{"1":{"1":50}}"#, 6),
    )
    .await;
    // Already in the history store: Alleycat's class 1, and an original
    // file as class 2's.
    let mut existing = ClassHistory::default();
    existing.merge(Second(1), RacerId(1), 150.25);
    existing.merge(Second(1), RacerId(2), 22.75);
    put(aws.history.clone(), "class-1.gz", existing.to_gzip(6)).await;
    put(
        aws.history.clone(),
        "class-2.gz",
        FOREIGN_CLASS_2.as_bytes().to_vec(),
    )
    .await;

    let history = spawn_alleycat(&["history"], &aws.env()).await;
    eventually("class 2 to be blocked by the original file", || async {
        names_not_ready(&history.base, "history class-2")
            .await
            .then_some(())
    })
    .await;

    let source = format!("s3://{original}/old");
    let (ok, stdout) = run_alleycat(&["history", "import", &source], &aws.env()).await;
    assert!(ok);
    // Racer 1's 150.25 stays above the imported 20.5; racer 2's 22.75 is raised.
    assert_class_1_report(&stdout, 4);
    assert!(!stdout.contains("class-3"), "{stdout}");

    let class_1 = with_imported_class_1(BTreeMap::from([(
        1u16,
        BTreeMap::from([(1u64, 150.25), (2, 22.75)]),
    )]));
    assert_eq!(aws.class_file(1).await, Some(class_1.clone()));
    assert_eq!(
        aws.class_file(2).await,
        Some(BTreeMap::from([(1u16, BTreeMap::from([(7u64, 81.0)]))]))
    );
    assert_eq!(aws.class_file(3).await, None);
    let imports = aws
        .s3
        .list_objects_v2()
        .bucket(&aws.history)
        .prefix("_imports/class-1/")
        .send()
        .await
        .unwrap()
        .contents
        .unwrap_or_default();
    assert_eq!(imports.len(), 1);
    let (_, kept) = aws
        .object(&aws.history, imports[0].key().unwrap())
        .await
        .unwrap();
    assert_eq!(
        imported_bests(&kept),
        with_imported_class_1(BTreeMap::new())
    );

    // The running service serves the imported files, class 2 unblocked.
    assert_eq!(fetch_class(&history.base, 1).await, Some(class_1));
    eventually("class 2 to be unblocked", || async {
        (!names_not_ready(&history.base, "history class-2").await).then_some(())
    })
    .await;
    history.terminate().await;
}

//! The embedded object store: one file per object under a directory.
//!
//! Writes go to a temporary file that is fsynced and renamed into place (and
//! the directory fsynced), so a crash leaves either the old object or the new
//! one, never a torn file. Writes hold a lock (in-process and `flock` on
//! `.lock`, for other processes), so a conditional write's check and rename
//! are one atomic step. An ETag is the file's inode, modification time and
//! size: every write renames a new file into place, so it always changes.

use super::{ETag, Object, ObjectStore, Precondition, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{self, File};
use std::io::{self, Read as _, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where in-flight writes live; ignored by listings, emptied at start.
const TMP_DIR: &str = ".tmp";

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    next_tmp: AtomicU64,
    /// Serializes this process's writers; `.lock` serializes processes.
    writers: Mutex<File>,
}

impl FsStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> io::Result<FsStore> {
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp)?;
        remove_stale_temporaries(&tmp)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(".lock"))?;
        Ok(FsStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                next_tmp: AtomicU64::new(0),
                writers: Mutex::new(lock),
            }),
        })
    }

    /// The directory the store lives in.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}

/// Longest key, in bytes: S3's limit, so a key that works here works there.
const MAX_KEY_BYTES: usize = 1024;

impl Inner {
    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        let invalid = |reason: std::borrow::Cow<'static, str>| StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        };
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(invalid(
                format!("must be 1 to {MAX_KEY_BYTES} bytes").into(),
            ));
        }
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        {
            return Err(invalid(
                "may hold only ASCII letters, digits, '/', '-', '_' and '.'".into(),
            ));
        }
        if key
            .split('/')
            .any(|part| part.is_empty() || part.starts_with('.'))
        {
            return Err(invalid(
                "path segments must be non-empty and not start with '.'".into(),
            ));
        }
        Ok(self.root.join(key))
    }

    fn put(&self, key: &str, body: &[u8], condition: &Precondition) -> Result<ETag, StoreError> {
        let path = self.path_of(key)?;
        let io_err = |source: io::Error| StoreError::Io {
            operation: "put",
            key: key.to_owned(),
            source: source.into(),
        };
        let lock = self
            .writers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lock.lock().map_err(io_err)?;
        let result = (|| {
            let current = match fs::metadata(&path) {
                Ok(meta) => Some(etag_of(&meta)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err(e)),
            };
            let holds = match condition {
                Precondition::None => true,
                Precondition::IfAbsent => current.is_none(),
                Precondition::IfMatch(expected) => current.as_ref() == Some(expected),
            };
            if !holds {
                return Err(StoreError::PreconditionFailed {
                    key: key.to_owned(),
                });
            }
            self.write_atomically(&path, body).map_err(io_err)
        })();
        let _ = lock.unlock();
        result
    }

    fn write_atomically(&self, path: &Path, body: &[u8]) -> io::Result<ETag> {
        let parent = path.parent().expect("a key always has a parent");
        fs::create_dir_all(parent)?;
        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}-{}",
            std::process::id(),
            self.next_tmp.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> io::Result<ETag> {
            let mut file = match File::create(&tmp) {
                // The data directory was deleted while running: recreate
                // what the store needs (the object's own directory is
                // recreated above).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(self.root.join(TMP_DIR))?;
                    File::create(&tmp)?
                }
                file => file?,
            };
            file.write_all(body)?;
            file.sync_all()?;
            let etag = etag_of(&file.metadata()?);
            fs::rename(&tmp, path)?;
            // The rename is durable only once the directory entry is.
            File::open(parent)?.sync_all()?;
            Ok(etag)
        };
        write().inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let path = self.path_of(key)?;
        let read = || -> io::Result<Object> {
            let mut file = File::open(&path)?;
            // Metadata of the open file, not the path: it matches the bytes
            // read even if a writer renames a new version in meanwhile.
            let meta = file.metadata()?;
            let mut body = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
            file.read_to_end(&mut body)?;
            Ok(Object {
                body: Bytes::from(body),
                etag: etag_of(&meta),
            })
        };
        match read() {
            Ok(object) => Ok(Some(object)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                operation: "get",
                key: key.to_owned(),
                source: source.into(),
            }),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let remove = || -> io::Result<()> {
            match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                removed => removed?,
            }
            let parent = path.parent().expect("a key always has a parent");
            File::open(parent)?.sync_all()
        };
        remove().map_err(|source| StoreError::Io {
            operation: "delete",
            key: key.to_owned(),
            source: source.into(),
        })
    }

    fn head(&self, key: &str) -> Result<Option<ETag>, StoreError> {
        let path = self.path_of(key)?;
        match fs::metadata(&path) {
            Ok(meta) => Ok(Some(etag_of(&meta))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                operation: "head",
                key: key.to_owned(),
                source: source.into(),
            }),
        }
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<String>, StoreError> {
        // Only the directory the prefix names (and below) can hold matches.
        let dir_part = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let dir = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path_of(dir_part)?
        };
        let mut keys = Vec::new();
        walk(&dir, dir_part, &mut keys).map_err(|source| StoreError::Io {
            operation: "list",
            key: prefix.to_owned(),
            source: source.into(),
        })?;
        keys.retain(|k| {
            k.starts_with(prefix) && start_after.is_none_or(|after| k.as_str() > after)
        });
        keys.sort_unstable();
        Ok(keys)
    }
}

/// Temporary files are leftovers of writes a crash interrupted (never
/// renamed, so never visible) once they are older than any write takes.
/// Younger ones may belong to another process sharing the store.
fn remove_stale_temporaries(tmp: &Path) -> io::Result<()> {
    const STALE: std::time::Duration = std::time::Duration::from_secs(3600);
    for entry in fs::read_dir(tmp)? {
        let entry = entry?;
        let age = entry.metadata()?.modified()?.elapsed().unwrap_or_default();
        if age > STALE {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn etag_of(meta: &fs::Metadata) -> ETag {
    ETag(format!(
        "{:x}-{:x}-{:x}",
        meta.ino(),
        meta.mtime_nsec() as u64 ^ ((meta.mtime() as u64) << 30),
        meta.len()
    ))
}

/// Collects the keys of every file below `dir`, whose key prefix is `base`.
fn walk(dir: &Path, base: &str, keys: &mut Vec<String>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let key = if base.is_empty() {
            name.to_owned()
        } else {
            format!("{base}/{name}")
        };
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &key, keys)?;
        } else {
            keys.push(key);
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for FsStore {
    async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        _content_type: &'static str,
        condition: Precondition,
    ) -> Result<ETag, StoreError> {
        let inner = Arc::clone(&self.inner);
        let owned = key.to_owned();
        blocking("put", key, move || inner.put(&owned, &body, &condition)).await
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let owned = key.to_owned();
        blocking("get", key, move || inner.get(&owned)).await
    }

    async fn head(&self, key: &str) -> Result<Option<ETag>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let owned = key.to_owned();
        blocking("head", key, move || inner.head(&owned)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        let owned = key.to_owned();
        blocking("delete", key, move || inner.delete(&owned)).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let owned = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        blocking("list", prefix, move || {
            inner.list(&owned, start_after.as_deref())
        })
        .await
    }
}

/// Runs store I/O (`operation` on `key`) on the blocking pool; cancelled
/// by a runtime shutting down, it failed like any I/O.
async fn blocking<T: Send + 'static>(
    operation: &'static str,
    key: &str,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    alleycat_core::blocking::run(f)
        .await
        .unwrap_or_else(|cancelled| {
            Err(StoreError::Io {
                operation,
                key: key.to_owned(),
                source: Box::new(cancelled),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, FsStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn put_get_overwrite() {
        let (_dir, store) = store().await;
        assert_eq!(store.get("class-1.gz").await.unwrap(), None);
        store
            .put("class-1.gz", Bytes::from_static(b"one"), "application/gzip")
            .await
            .unwrap();
        store
            .put("class-1.gz", Bytes::from_static(b"two"), "application/gzip")
            .await
            .unwrap();
        assert_eq!(store.get("class-1.gz").await.unwrap().unwrap().body, "two");
        assert!(store.exists("class-1.gz").await.unwrap());
        assert!(!store.exists("class-2.gz").await.unwrap());
        let object = store.get("class-1.gz").await.unwrap().unwrap();
        assert_eq!(store.head("class-1.gz").await.unwrap(), Some(object.etag));
    }

    #[tokio::test]
    async fn conditional_writes_refuse_stale_versions() {
        let (_dir, store) = store().await;
        let put = |body: &'static str, condition| {
            store.put_if("k", Bytes::from_static(body.as_bytes()), "x", condition)
        };
        let v1 = put("one", Precondition::IfAbsent).await.unwrap();
        assert!(matches!(
            put("dup", Precondition::IfAbsent).await,
            Err(StoreError::PreconditionFailed { .. })
        ));
        assert_eq!(store.get("k").await.unwrap().unwrap().etag, v1);
        let v2 = put("two", Precondition::IfMatch(v1.clone())).await.unwrap();
        assert_ne!(v1, v2);
        assert!(matches!(
            put("stale", Precondition::IfMatch(v1)).await,
            Err(StoreError::PreconditionFailed { .. })
        ));
        assert_eq!(
            store.get("k").await.unwrap().unwrap(),
            Object {
                body: Bytes::from_static(b"two"),
                etag: v2
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_read_modify_writes_lose_no_update() {
        let (_dir, store) = store().await;
        store
            .put("counter", Bytes::from_static(b"0"), "x")
            .await
            .unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    for _ in 0..25 {
                        loop {
                            let current = store.get("counter").await.unwrap().unwrap();
                            let n: u32 =
                                std::str::from_utf8(&current.body).unwrap().parse().unwrap();
                            let next = Bytes::from((n + 1).to_string());
                            match store
                                .put_if("counter", next, "x", Precondition::IfMatch(current.etag))
                                .await
                            {
                                Ok(_) => break,
                                Err(StoreError::PreconditionFailed { .. }) => {}
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.get("counter").await.unwrap().unwrap().body, "200");
    }

    #[tokio::test]
    async fn lists_by_prefix_after_a_key_in_order() {
        let (_dir, store) = store().await;
        for key in [
            "2026/11/26/10/b.gz",
            "2026/11/26/10/a.gz",
            "2026/11/26/11/c.gz",
            "processing-failed/2026/x.gz",
            "class-1.gz",
        ] {
            store
                .put(key, Bytes::from_static(b"x"), "application/gzip")
                .await
                .unwrap();
        }
        assert_eq!(
            store.list("2026/11/26/10/", None).await.unwrap(),
            ["2026/11/26/10/a.gz", "2026/11/26/10/b.gz"]
        );
        assert_eq!(
            store
                .list("2026/", Some("2026/11/26/10/a.gz"))
                .await
                .unwrap(),
            ["2026/11/26/10/b.gz", "2026/11/26/11/c.gz"]
        );
        assert_eq!(
            store.list("2026/11/26/10/b", None).await.unwrap(),
            ["2026/11/26/10/b.gz"]
        );
        assert_eq!(store.list("class-", None).await.unwrap(), ["class-1.gz"]);
        assert!(store.list("2027/01/", None).await.unwrap().is_empty());
        assert_eq!(store.list("", None).await.unwrap().len(), 5);
    }

    #[tokio::test]
    async fn refuses_keys_that_escape_the_root() {
        let (_dir, store) = store().await;
        for key in [
            "../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            ".tmp/x",
            "",
            "a b",
            "a\\b",
        ] {
            let err = store.put(key, Bytes::new(), "x").await.unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidKey { .. }),
                "{key:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn leftover_temporary_files_are_never_listed_and_are_cleared() {
        let (dir, store) = store().await;
        let old = dir.path().join(TMP_DIR).join("123-0");
        fs::write(&old, b"torn").unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        let young = dir.path().join(TMP_DIR).join("456-0");
        fs::write(&young, b"another process is writing this").unwrap();
        assert!(store.list("", None).await.unwrap().is_empty());
        drop(store);
        FsStore::open(dir.path()).unwrap();
        assert!(!old.exists(), "an old leftover is removed");
        assert!(young.exists(), "a young one may be another writer's");
    }
}

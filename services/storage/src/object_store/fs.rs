//! The embedded object store: one file per object under a directory.
//!
//! Writes go to a temporary file that is fsynced and renamed into place (and
//! the directory fsynced), so a crash leaves either the old object or the new
//! one, never a torn file.

use super::{ObjectStore, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

impl FsStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> io::Result<FsStore> {
        let tmp = root.join(TMP_DIR);
        // Leftovers of writes a crash interrupted: never renamed, so never visible.
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        Ok(FsStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                next_tmp: AtomicU64::new(0),
            }),
        })
    }

    /// The directory the store lives in.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}

impl Inner {
    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        let invalid = |reason| StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        };
        if key.is_empty() || key.len() > 1024 {
            return Err(invalid("must be 1 to 1024 bytes"));
        }
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        {
            return Err(invalid(
                "may hold only ASCII letters, digits, '/', '-', '_' and '.'",
            ));
        }
        if key
            .split('/')
            .any(|part| part.is_empty() || part.starts_with('.'))
        {
            return Err(invalid(
                "path segments must be non-empty and not start with '.'",
            ));
        }
        Ok(self.root.join(key))
    }

    fn put(&self, key: &str, body: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let io_err = |source| StoreError::Io {
            operation: "put",
            key: key.to_owned(),
            source,
        };
        let parent = path.parent().expect("a key always has a parent");
        fs::create_dir_all(parent).map_err(io_err)?;
        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}-{}",
            std::process::id(),
            self.next_tmp.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(body)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            // The rename is durable only once the directory entry is.
            File::open(parent)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(e)
        })
    }

    fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path_of(key)?;
        match fs::read(&path) {
            Ok(body) => Ok(Some(Bytes::from(body))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                operation: "get",
                key: key.to_owned(),
                source,
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
            source,
        })?;
        keys.retain(|k| {
            k.starts_with(prefix) && start_after.is_none_or(|after| k.as_str() > after)
        });
        keys.sort_unstable();
        Ok(keys)
    }
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
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        _content_type: &'static str,
    ) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        let key = key.to_owned();
        blocking(move || inner.put(&key, &body)).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let key = key.to_owned();
        blocking(move || inner.get(&key)).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        blocking(move || inner.list(&prefix, start_after.as_deref())).await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("object store I/O task panicked")
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
        assert_eq!(store.get("class-1.gz").await.unwrap().unwrap(), "two");
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
        fs::write(dir.path().join(TMP_DIR).join("123-0"), b"torn").unwrap();
        assert!(store.list("", None).await.unwrap().is_empty());
        drop(store);
        FsStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
    }
}

//! Choosing and opening the backends.

use crate::object_store::{ObjectStore, fs::FsStore};
use crate::stream::{Stream, embedded::EmbeddedStream};
use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::Arc;

/// Storage settings shared by every service.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// Directory of the embedded stream and object stores.
    #[arg(long, env = "ALLEYCAT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

impl StorageArgs {
    /// The record stream.
    pub fn open_stream(&self) -> anyhow::Result<Arc<dyn Stream>> {
        let dir = self.data_dir.join("stream");
        let stream = EmbeddedStream::open(&dir)
            .with_context(|| format!("opening the embedded stream in {}", dir.display()))?;
        Ok(Arc::new(stream))
    }

    /// The store delivery objects are written to.
    pub fn open_delivery_store(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        self.open_fs_store("delivery")
    }

    /// The store class files are published to.
    pub fn open_history_store(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        self.open_fs_store("history")
    }

    fn open_fs_store(&self, name: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
        let dir = self.data_dir.join(name);
        let store = FsStore::open(&dir)
            .with_context(|| format!("opening the {name} store in {}", dir.display()))?;
        Ok(Arc::new(store))
    }
}

//! Choosing and opening the backends.
//!
//! Embedded (the default): the stream is a redb database and the stores are
//! directories, all under `ALLEYCAT_DATA_DIR`. AWS: `ALLEYCAT_STREAM=kinesis`
//! and `ALLEYCAT_STORE=s3`, configured by the SDK's standard chain
//! (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_KINESIS`,
//! `AWS_ENDPOINT_URL_S3`).

use crate::disqualifications::DisqualificationList;
use crate::freshness::Freshness;
use crate::handoff::Handoff;
use crate::object_store::{ObjectStore, fs::FsStore, s3::S3Store};
use crate::stream::kinesis::{KinesisSettings, KinesisStream};
use crate::stream::{Stream, embedded::EmbeddedStream};
use alleycat_core::{parse_millis, parse_positive_millis};
use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Which stream implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamKind {
    /// A durable stream on local disk.
    Embedded,
    /// Kinesis Data Streams.
    Kinesis,
}

/// Which object-store implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// Directories on local disk.
    Embedded,
    /// Amazon S3 (or a server speaking its protocol).
    S3,
}

/// Storage settings shared by every service.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// The record stream.
    #[arg(
        long = "stream",
        env = "ALLEYCAT_STREAM",
        value_enum,
        default_value = "embedded"
    )]
    pub stream_kind: StreamKind,

    /// The object stores (delivery and history).
    #[arg(
        long = "store",
        env = "ALLEYCAT_STORE",
        value_enum,
        default_value = "embedded"
    )]
    pub store_kind: StoreKind,

    /// Directory of the embedded stream and object stores.
    #[arg(long, env = "ALLEYCAT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Kinesis stream name.
    #[arg(long, env = "ALLEYCAT_STREAM_NAME", default_value = "alleycat")]
    pub stream_name: String,

    /// S3 bucket of delivery objects (and the transformer's shard leases).
    #[arg(
        long,
        env = "ALLEYCAT_DELIVERY_BUCKET",
        default_value = "alleycat-delivery"
    )]
    pub delivery_bucket: String,

    /// S3 bucket of the published class files.
    #[arg(
        long,
        env = "ALLEYCAT_HISTORY_BUCKET",
        default_value = "alleycat-history"
    )]
    pub history_bucket: String,

    /// Longest the embedded stream gathers writes before committing them
    /// together, in ms (0: commit at once); it stops as soon as a quarter
    /// of it (at most 1.25 ms) brings no write. Each commit costs two
    /// fsyncs whatever its size: at 10,000 records a second, 2 ms cut the
    /// server's CPU per record by about a fifth against 0, and 20 ms by
    /// about another fifth, for about 15 ms more ingest latency in all
    /// (README, "Group commit").
    #[arg(long = "stream-linger-ms", env = "ALLEYCAT_STREAM_LINGER_MS", default_value = "20", value_parser = parse_linger)]
    pub stream_linger: Duration,

    /// How long a put to Kinesis retries before the request gets a 503, in ms.
    #[arg(long = "put-timeout-ms", env = "ALLEYCAT_PUT_TIMEOUT_MS", default_value = "10000", value_parser = parse_positive_millis)]
    pub put_timeout: Duration,

    /// How long a Kinesis shard lease lasts without renewal, in ms: how soon
    /// a live process takes over the shards of a dead one.
    #[arg(long = "lease-ms", env = "ALLEYCAT_LEASE_MS", default_value = "10000", value_parser = parse_positive_millis)]
    pub lease_duration: Duration,

    /// Pause after a GetRecords that returned nothing, in ms (a shard allows
    /// 5 GetRecords calls a second across all of its consumers).
    #[arg(long = "kinesis-idle-poll-ms", env = "ALLEYCAT_KINESIS_IDLE_POLL_MS", default_value = "1000", value_parser = parse_positive_millis)]
    pub idle_poll: Duration,

    /// Put records to Kinesis in the KPL aggregated-record format, many to
    /// a Kinesis record (KCL consumers, Firehose and Alleycat read them):
    /// a shard then takes about 4 times more telemetry (bound by its bytes,
    /// not its records).
    #[arg(long = "kinesis-aggregate", env = "ALLEYCAT_KINESIS_AGGREGATE", default_value = "false", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub kinesis_aggregate: bool,

    /// With aggregation, how long puts are collected before they are
    /// packed and sent, in ms (added to every put's latency).
    #[arg(long = "kinesis-aggregate-linger-ms", env = "ALLEYCAT_KINESIS_AGGREGATE_LINGER_MS", default_value = "50", value_parser = parse_positive_millis)]
    pub kinesis_aggregate_linger: Duration,

    /// How often each process reads the disqualification list again, in
    /// ms (a disqualification takes effect everywhere within about this).
    #[arg(long = "disqualifications-poll-ms", env = "ALLEYCAT_DISQUALIFICATIONS_POLL_MS", default_value = "5000", value_parser = parse_positive_millis)]
    pub disqualifications_poll: Duration,

    /// What is opened already: every service of a process shares one stream
    /// and one handle per store (the embedded stream admits one opener).
    #[arg(skip)]
    opened: Arc<Opened>,
}

#[derive(Default)]
struct Opened {
    aws: OnceCell<aws_config::SdkConfig>,
    stream: OnceCell<Arc<dyn Stream>>,
    delivery: OnceCell<Arc<dyn ObjectStore>>,
    history: OnceCell<Arc<dyn ObjectStore>>,
    disqualifications: OnceCell<Arc<DisqualificationList>>,
    freshness: std::sync::OnceLock<Arc<Freshness>>,
    handoff: std::sync::OnceLock<Arc<Handoff>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("stream", &self.stream.initialized())
            .field("delivery", &self.delivery.initialized())
            .field("history", &self.history.initialized())
            .finish_non_exhaustive()
    }
}

impl StorageArgs {
    /// The record stream, opened on first use.
    pub async fn open_stream(&self) -> anyhow::Result<Arc<dyn Stream>> {
        let stream = self
            .opened
            .stream
            .get_or_try_init(|| self.connect_stream())
            .await?;
        Ok(Arc::clone(stream))
    }

    /// What this process's stages hold, for the freshness gauges (see
    /// [`crate::freshness`]): one per process, shared by its services.
    pub fn freshness(&self) -> Arc<Freshness> {
        Arc::clone(self.opened.freshness.get_or_init(Freshness::refreshed))
    }

    /// Where this process's transformer leaves the points of the delivery
    /// objects it writes for history beside it (see [`crate::handoff`]):
    /// one per process, shared by its services.
    pub fn handoff(&self) -> Arc<Handoff> {
        Arc::clone(self.opened.handoff.get_or_init(Arc::default))
    }

    async fn connect_stream(&self) -> anyhow::Result<Arc<dyn Stream>> {
        match self.stream_kind {
            StreamKind::Embedded => {
                let dir = self.data_dir.join("stream");
                let stream = EmbeddedStream::open_lingering(&dir, self.stream_linger)
                    .with_context(|| format!("opening the embedded stream in {}", dir.display()))?;
                Ok(Arc::new(stream.reporting_to(self.freshness())))
            }
            StreamKind::Kinesis => {
                let client = aws_sdk_kinesis::Client::new(self.aws().await);
                let settings = KinesisSettings {
                    stream_name: self.stream_name.clone(),
                    put_timeout: self.put_timeout,
                    lease_duration: self.lease_duration,
                    idle_poll: self.idle_poll,
                    aggregate_linger: self
                        .kinesis_aggregate
                        .then_some(self.kinesis_aggregate_linger),
                };
                // Shard leases and checkpoints live beside the deliveries
                // they describe.
                let leases = self.open_delivery_store().await?;
                Ok(Arc::new(
                    KinesisStream::new(client, settings, leases).reporting_to(self.freshness()),
                ))
            }
        }
    }

    /// The store delivery objects are written to, opened on first use.
    pub async fn open_delivery_store(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        let store = self
            .opened
            .delivery
            .get_or_try_init(|| self.open_store("delivery", &self.delivery_bucket))
            .await?;
        Ok(Arc::clone(store))
    }

    /// The store class files are published to, opened on first use.
    pub async fn open_history_store(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        let store = self
            .opened
            .history
            .get_or_try_init(|| self.open_store("history", &self.history_bucket))
            .await?;
        Ok(Arc::clone(store))
    }

    /// The disqualification list (kept in the history store), watched by
    /// one poller per process, started on first use.
    pub async fn disqualifications(&self) -> anyhow::Result<Arc<DisqualificationList>> {
        let list = self
            .opened
            .disqualifications
            .get_or_try_init(|| async {
                let store = self.open_history_store().await?;
                anyhow::Ok(DisqualificationList::watch(
                    store,
                    self.disqualifications_poll,
                ))
            })
            .await?;
        Ok(Arc::clone(list))
    }

    async fn open_store(&self, name: &str, bucket: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
        match self.store_kind {
            StoreKind::Embedded => {
                let dir = self.data_dir.join(name);
                let store = FsStore::open(&dir)
                    .with_context(|| format!("opening the {name} store in {}", dir.display()))?;
                Ok(Arc::new(store))
            }
            StoreKind::S3 => Ok(self.open_s3_bucket(bucket).await),
        }
    }

    /// Any S3 bucket, whatever `ALLEYCAT_STORE` says, with the client the
    /// S3 stores use (the SDK's standard chain, path-style addressing for
    /// a custom endpoint): e.g. for importing the original's files.
    pub async fn open_s3_bucket(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        let mut config = aws_sdk_s3::config::Builder::from(self.aws().await);
        // A custom endpoint (a local S3-protocol server) rarely
        // resolves bucket subdomains: address buckets by path.
        if ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .any(|v| std::env::var_os(v).is_some())
        {
            config = config.force_path_style(true);
        }
        let client = aws_sdk_s3::Client::from_conf(config.build());
        Arc::new(S3Store::new(client, bucket))
    }

    /// The AWS settings from the SDK's standard chain, loaded once.
    async fn aws(&self) -> &aws_config::SdkConfig {
        self.opened.aws.get_or_init(load_aws_config).await
    }
}

/// AWS settings from the SDK's standard chain (region, credentials,
/// `AWS_ENDPOINT_URL*`), with an HTTPS client on rustls and ring.
pub async fn load_aws_config() -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .load()
        .await
}

/// Longest `ALLEYCAT_STREAM_LINGER_MS`: every write waits up to this long.
const MAX_LINGER_MILLIS: u64 = 1000;

/// [`parse_millis`], at most [`MAX_LINGER_MILLIS`].
fn parse_linger(text: &str) -> Result<Duration, String> {
    let linger = parse_millis(text)?;
    if linger > Duration::from_millis(MAX_LINGER_MILLIS) {
        return Err(format!(
            "at most {MAX_LINGER_MILLIS} ms: every write to the stream waits up to this long"
        ));
    }
    Ok(linger)
}

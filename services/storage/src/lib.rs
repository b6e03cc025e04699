//! Where Alleycat's data lives: the record stream and the object stores.
//!
//! Each is a small trait with two real implementations: the embedded one
//! (local disk, the default, no other server needed) and the AWS one
//! (Kinesis Data Streams, S3). Services only see the traits.

pub mod config;
pub mod disqualifications;
pub mod freshness;
pub mod handoff;
pub mod object_store;
pub mod stream;

pub use config::{StorageArgs, load_aws_config};
pub use disqualifications::DisqualificationList;
pub use freshness::Freshness;
pub use handoff::Handoff;
pub use object_store::{ETag, Object, ObjectStore, Precondition, StoreError};
pub use stream::{
    PendingDelivery, PutRecord, SequenceNumber, Stream, StreamError, StreamRecord, Subscription,
};

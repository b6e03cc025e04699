//! Alleycat's integration tests, one binary (one link): the all-in-one and
//! the real `alleycat` binary through real sockets, on the embedded
//! backends and on local Kinesis and S3 servers.

mod allocator;
mod aws;
mod aws_faults;
mod bike_auth;
mod common;
mod contract;
mod crash;
mod deployment;
mod disk_faults;
mod disqualification;
mod history_faults;
mod history_import;
mod hostile_http;
mod hostile_rankings;
mod kinesis_aggregation;
mod leaderboard_periods;
mod metrics;
mod metrics_pipeline;
mod pipeline;
mod plausibility;
mod rankings;

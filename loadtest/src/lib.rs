//! The Alleycat load-test harness: a simulated fleet of racers and ranking
//! viewers, and the report of what a deployment achieved under them. The
//! binary is `alleycat-loadtest`.

pub mod freshness;
pub mod push;
pub mod racers;
pub mod report;
pub mod schedule;
pub mod sim;
pub mod socket;
pub mod stats;
pub mod target;
pub mod viewers;

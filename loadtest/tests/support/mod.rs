//! What the harness's test binaries share.

/// The all-in-one at its defaults, but for quicker deliveries, merges and
/// pushes, so that a short run sees its records through.
pub(crate) fn quick_config(dir: &std::path::Path) -> alleycat::Config {
    use clap::Parser as _;
    alleycat::Config::parse_from([
        "alleycat",
        "--data-dir",
        dir.to_str().unwrap(),
        "--buffer-interval-ms",
        "300",
        "--history-poll-ms",
        "100",
        "--rankings-push-ms",
        "100",
        "--rankings-history-reload-ms",
        "200",
    ])
}

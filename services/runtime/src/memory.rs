//! How a process asks the kernel for memory: what the server and the load
//! harness, each on mimalloc, both do before anything else.

/// Turns off transparent huge pages for this process, unless
/// `MIMALLOC_ALLOW_THP` says otherwise.
///
/// mimalloc asks for huge pages (`MADV_HUGEPAGE`) and hands freed memory
/// back to the kernel a second later; the next allocation there faults a
/// whole 2 MiB page back in, which the kernel zeroes. In run 1 (10,000
/// racers) that zeroing was 7% of the server's CPU, most of it in the first
/// seconds of a race, for a resident set that was larger, not smaller:
/// three alternating pairs, 78.5 against 72.5 µs of CPU a record, peak RSS
/// 340 against 261 MiB (README, "Benchmarks and measurements"). The load
/// harness, beside the server on the same cores, zeroed 2 MiB pages as
/// 10,000 bikes connected: a spike in the first second of run 1.
pub fn prefer_small_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        // Only a cost: the process runs as it would have anyway.
        tracing::info!(error = %e, "could not turn transparent huge pages off");
    }
}

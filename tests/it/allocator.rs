//! The real binary's memory: it runs without transparent huge pages (whose
//! refaults cost run 1 7% of its CPU) unless `MIMALLOC_ALLOW_THP` asks for
//! them.

use crate::common::*;
use alleycat_loadtest::target::status_value;

/// `THP_enabled` of a process, as Linux reports it (1 or 0).
fn thp_enabled(pid: u32) -> u64 {
    status_value(pid, "THP_enabled").expect("Linux reports THP_enabled")
}

async fn thp_of_all_in_one(env: &[(&str, &str)]) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_all_in_one(dir.path(), env).await;
    let thp = thp_enabled(server.child.id().unwrap());
    server.terminate().await;
    thp
}

#[tokio::test]
async fn the_binary_turns_huge_pages_off_unless_mimalloc_is_told_otherwise() {
    // A child inherits the setting: allow them here, so that the child's 0
    // is its own doing whatever the process running the tests chose.
    nix::sys::prctl::set_thp_disable(false).unwrap();
    assert_eq!(thp_enabled(std::process::id()), 1);
    assert_eq!(thp_of_all_in_one(&[]).await, 0);
    assert_eq!(thp_of_all_in_one(&[("MIMALLOC_ALLOW_THP", "1")]).await, 1);
}

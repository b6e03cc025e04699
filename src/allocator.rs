//! The process's memory allocator: mimalloc, on small pages.

/// glibc's allocator spent about 15% of the server's CPU under load
/// (profiled at 10,000 racers); mimalloc's thread-local free lists cost a
/// fraction of that. Benchmarks that run the server in their own process
/// install the same allocator.
pub type Allocator = mimalloc::MiMalloc;

pub use alleycat_runtime::memory::prefer_small_pages;

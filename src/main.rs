fn main() {
    tune_malloc();
    std::process::exit(datamesh::cli::main());
}

/// Chunk-sized buffers (shards, dirty chunks, decoded chunks) are allocated and freed
/// constantly, from many threads. With glibc's default of an arena per thread, the
/// mount's RSS ended up hundreds of MiB above its live buffers; giving every large
/// buffer its own mapping bounded that but spent a third of the CPU on page faults.
/// One arena reuses freed buffers in place, and a periodic trim hands back what a
/// burst (a random-write workload's dirty budget, say) left free.
#[allow(unsafe_code)]
fn tune_malloc() {
    // SAFETY: mallopt only changes allocator tuning; called first thing in main,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // The thread starts with every signal blocked: signals are for the threads that
    // act on them (the mount unmounts on SIGTERM); one landing here would end the
    // process with its default action.
    use nix::sys::signal::{SigSet, SigmaskHow};
    let old = SigSet::all().thread_swap_mask(SigmaskHow::SIG_BLOCK);
    let _ = std::thread::Builder::new()
        .name("datamesh-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                // SAFETY: malloc_trim is thread-safe and only returns free pages.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        });
    if let Ok(old) = old {
        let _ = old.thread_set_mask();
    }
}

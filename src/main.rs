fn main() {
    bound_malloc();
    std::process::exit(datamesh::cli::main());
}

/// Chunk-sized buffers (shards, dirty chunks, decoded chunks) are allocated and freed
/// constantly. glibc's default raises its mmap threshold after the first such free
/// and then carves them from arenas it cannot shrink: the mount's RSS ended up
/// hundreds of MiB above its live buffers. A fixed threshold keeps every buffer of
/// 256 KiB or more in its own mapping, returned to the system when freed.
#[allow(unsafe_code)]
fn bound_malloc() {
    // SAFETY: mallopt only changes allocator tuning; called once, first thing in
    // main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

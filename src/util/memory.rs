//! Giving freed memory back to the operating system. glibc keeps freed heap pages (and raises
//! its mmap threshold after large frees), so the buffers of a slow consumer that was cut off
//! would stay in the process's RSS for good; `malloc_trim` returns them.

/// Returns the allocator's free memory to the system (glibc; nothing elsewhere). It walks the
/// heap, so it is called on rare events (a slow consumer cut off), never per message.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds as free; it has no
    // preconditions and touches no memory the program uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

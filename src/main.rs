//! The `podium` command line; see `podium --help`.

mod cli;

/// Training and inference allocate and free large buffers every batch:
/// mimalloc keeps them in the process, where glibc's malloc hands them back
/// to the kernel and faults them in again (zeroed) on the next batch.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (libmimalloc-sys
/// 0.1.49 builds v3; its Rust bindings leave this option out).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// By default mimalloc still hands freed memory back to the kernel after a
/// delay, and a training step's buffers (tens of MB, freed every batch)
/// were faulted in and zeroed again: 9,456 page faults in a 2-epoch
/// simple_cnn run, against 509 without purging. Keep them, unless the user
/// set `MIMALLOC_PURGE_DELAY` themselves.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: plain C calls into the linked allocator with a valid option.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
        debug_assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, -1);
    }
}

fn main() {
    // Piped into `head`, exit quietly like other command-line tools.
    // SAFETY: resetting a signal disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // candle's pool for elementwise ops spins its idle workers for a while
    // after each op, taking the cores from podium's own kernels (rayon):
    // let them sleep at once unless the user says otherwise.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: at start-up, before any thread exists.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0") };
    }
    keep_freed_memory();
    std::process::exit(cli::main());
}

//! The `podium` command line; see `podium --help`.

mod cli;

/// Training and inference allocate and free large buffers every batch:
/// mimalloc keeps them in the process, where glibc's malloc hands them back
/// to the kernel and faults them in again (zeroed) on the next batch.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    podium::nn::memory::keep_freed_memory();
    std::process::exit(cli::main());
}

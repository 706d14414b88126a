//! The `podium` command line; see `podium --help`.

mod cli;

fn main() {
    // Piped into `head`, exit quietly like other command-line tools.
    // SAFETY: resetting a signal disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(cli::main());
}

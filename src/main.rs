//! The `podium` command line; see `podium --help`.

mod cli;

fn main() {
    std::process::exit(cli::main());
}

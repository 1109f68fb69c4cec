//! The `attune` binary; everything is in the library (`lib.rs`).

fn main() {
    std::process::exit(attune_cli::run_from(std::env::args_os()));
}

//! The `loadtest` binary: everything lives in the library (`lib.rs`).

fn main() -> std::process::ExitCode {
    loadtest::main_entry()
}

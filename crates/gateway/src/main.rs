//! The `moonx-ws` binary: see `cli` for the subcommands.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    moonx_ws::cli::main()
}

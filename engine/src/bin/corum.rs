//! The `corum` command: `corum serve`, `corum local`, `corum ctl` (see `engine/CLI.md`).

fn main() -> std::process::ExitCode {
    engine::cli::main()
}

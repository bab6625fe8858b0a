use std::process::ExitCode;

fn main() -> ExitCode {
    taper::cli::main()
}

//! The `rlivepatch` binary: the command line lives in the library ([`rlivepatch::cli`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    // Called as `cc` under `rlivepatch build`: log the call and run the compiler.
    rlivepatch::generate::wrapper::run_if_wrapper();
    rlivepatch::cli::main()
}

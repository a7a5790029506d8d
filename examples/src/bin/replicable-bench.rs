//! `replicable-bench`: the framework against the tools a team would otherwise script. See
//! `replicable-bench --help` and the README's "Benchmarks".

use std::process::ExitCode;

fn main() -> ExitCode {
    replicable_examples::bench::main()
}

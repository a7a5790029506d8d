//! `geo-demo`: the main job. See [`replicable_examples::geo_demo`].
//!
//! ```text
//! cargo run --release -p replicable-examples --bin geo-demo            # run: both sites here
//! geo-demo primary --data DIR [--database URL] [--seed N]
//! geo-demo secondary --data DIR --primary-data DIR [--database URL --primary-database URL]
//! geo-demo status --data DIR --primary-data DIR
//! ```

fn main() -> std::process::ExitCode {
    replicable_examples::geo_demo::main()
}

//! `#[derive(Replicable)]` misuse is a compile error on the offending tokens, and every mistake
//! of a struct is reported in one run. The expected compiler output is checked in beside each
//! case (`ui/*.stderr`); regenerate with `TRYBUILD=overwrite cargo test -p replicable-derive --test
//! compile_fail` after reading the diff.

#[test]
fn derive_misuse_is_a_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}

#[test]
fn correct_models_compile() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui-pass/*.rs");
}

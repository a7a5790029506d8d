//! `#[derive(Replicable)]` for the replicable framework.
//!
//! The entry point is thin: [`ast`] parses the struct and its attributes into a checked model
//! (accumulating every mistake in a [`ctxt::Ctxt`]), [`expand`] generates the code. Generated code
//! reaches the runtime only through `::replicable_core::__private` (or the path given with
//! `#[replicable(crate = "...")]`).

mod ast;
mod ctxt;
mod expand;
mod naming;

use proc_macro::TokenStream;

/// Derives `replicable_core::Replicable` for a struct with named fields.
///
/// Attributes:
/// - `#[replicator(Path)]` (required): the strategy type;
/// - `#[replicable(name = "...")]`: the replicable name (default: snake case of the struct name);
/// - `#[replicable(crate = "...")]`: where `replicable_core` is, for crates that re-export it;
/// - on fields: `#[replicable(id)]` (required, exactly one), `#[replicable(blob)]` (the object
///   key, for blob strategies), `#[replicable(repository)]` (the repository path).
///
/// Besides the trait impl it generates `<Model>Replicator`, `<Model>Registry` and
/// `<Model>VerificationState`, and registers the model so that
/// `replicable_core::registered_replicables()` finds it.
#[proc_macro_derive(Replicable, attributes(replicable, replicator))]
pub fn derive_replicable(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::derive(&input).into()
}

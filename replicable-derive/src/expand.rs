//! Generates the trait impl, the typed rows, the replicator alias and method, and the
//! registration.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::DeriveInput;
use syn::spanned::Spanned;

use crate::ast::{self, MarkedField, Model};
use crate::ctxt::Ctxt;

pub fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let model = ast::read(&cx, input);
    match cx.finish() {
        Ok(()) => expand(&model, false),
        // Emit the errors together with a fallback expansion, so that uses of the model and
        // its generated types elsewhere do not add a cascade of unrelated errors.
        Err(errors) => {
            let fallback = expand(&model, true);
            quote! { #errors #fallback }
        }
    }
}

fn expand(model: &Model<'_>, fallback: bool) -> TokenStream {
    let ident = model.ident;
    let vis = model.vis;
    let name = &model.name;
    let rp = match &model.crate_path {
        Some(path) => quote!(#path::__private),
        None => quote!(::replicable_core::__private),
    };
    let registry_ident = format_ident!("{}Registry", ident);
    let verification_ident = format_ident!("{}VerificationState", ident);
    let replicator_ident = format_ident!("{}Replicator", ident);
    let id_column = format_ident!("{}_id", name);

    // The fallback keeps the user's strategy when it parsed, so that its import stays used and
    // a misspelt path is still reported.
    let strategy = match &model.strategy {
        Some(path) => quote!(#path),
        None => quote!(#rp::UnresolvedStrategy),
    };
    let replicable_id = match (&model.id, fallback) {
        (Some(MarkedField { ident: field, ty }), false) => {
            quote_spanned! {ty.span()=> <i64 as #rp::From<#ty>>::from(self.#field) }
        }
        _ => quote!(0),
    };
    let resource = resource_expr(model, &rp, fallback);
    let data_type_check = if fallback {
        quote!()
    } else {
        data_type_check(model, &rp)
    };
    let registration = if fallback {
        quote!()
    } else {
        quote! {
            #rp::inventory::submit! { #rp::ReplicableDescriptor::of::<#ident>() }
        }
    };
    let registry_doc =
        format!("The registry row of a `{ident}` on a secondary (`{name}_registry`).");
    let verification_doc = format!("The verification row of a `{ident}` on the primary.");
    let replicator_doc = format!("The replicator of a `{ident}`.");
    let id_doc = format!("The id of the `{ident}`.");

    quote! {
        #[doc = #replicator_doc]
        #vis type #replicator_ident<'a> = #rp::Replicator<'a, #ident>;

        #[doc = #registry_doc]
        #[derive(Debug, Clone, PartialEq, Eq)]
        #vis struct #registry_ident {
            #[doc = #id_doc]
            pub #id_column: i64,
            /// Where the sync stands.
            pub state: #rp::SyncState,
            /// Failed syncs in a row.
            pub retry_count: u32,
            /// When a failed sync is tried again.
            pub retry_at: #rp::Option<#rp::DateTime<#rp::Utc>>,
            /// Why the last sync failed.
            pub last_sync_failure: #rp::Option<#rp::String>,
            /// When the last sync started.
            pub last_synced_at: #rp::Option<#rp::DateTime<#rp::Utc>>,
            /// When the row was made.
            pub created_at: #rp::DateTime<#rp::Utc>,
            /// The last failure was because the resource is missing on the primary.
            pub missing_on_primary: bool,
            /// The primary's generation the local copy holds.
            pub synced_generation: #rp::Option<i64>,
            /// A change arrived while the row's sync was running: that sync does not make its
            /// copy visible, and the row goes pending when it ends.
            pub change_pending: bool,
            /// Where verification of the local copy stands.
            pub verification_state: #rp::VerificationState,
            /// The local checksum.
            pub verification_checksum: #rp::Option<#rp::String>,
            /// When the local copy was last verified.
            pub verified_at: #rp::Option<#rp::DateTime<#rp::Utc>>,
            /// When the current or last verification started.
            pub verification_started_at: #rp::Option<#rp::DateTime<#rp::Utc>>,
            /// When a failed verification is tried again.
            pub verification_retry_at: #rp::Option<#rp::DateTime<#rp::Utc>>,
            /// Failed verifications in a row.
            pub verification_retry_count: u32,
            /// Why the last verification failed.
            pub verification_failure: #rp::Option<#rp::String>,
            /// The last verification found a checksum different from the primary's.
            pub checksum_mismatch: bool,
            /// The local checksum that differed.
            pub verification_checksum_mismatched: #rp::Option<#rp::String>,
        }

        #[automatically_derived]
        impl #rp::From<#rp::RegistryRecord> for #registry_ident {
            fn from(row: #rp::RegistryRecord) -> Self {
                let v = row.verification;
                Self {
                    #id_column: row.model_id,
                    state: row.state,
                    retry_count: row.retry_count,
                    retry_at: row.retry_at,
                    last_sync_failure: row.last_sync_failure,
                    last_synced_at: row.last_synced_at,
                    created_at: row.created_at,
                    missing_on_primary: row.missing_on_primary,
                    synced_generation: row.synced_generation,
                    change_pending: row.change_pending,
                    verification_state: v.verification_state,
                    verification_checksum: v.verification_checksum,
                    verified_at: v.verified_at,
                    verification_started_at: v.verification_started_at,
                    verification_retry_at: v.verification_retry_at,
                    verification_retry_count: v.verification_retry_count,
                    verification_failure: v.verification_failure,
                    checksum_mismatch: v.checksum_mismatch,
                    verification_checksum_mismatched: v.verification_checksum_mismatched,
                }
            }
        }

        #[doc = #verification_doc]
        #[derive(Debug, Clone, PartialEq, Eq)]
        #vis struct #verification_ident {
            #[doc = #id_doc]
            pub #id_column: i64,
            /// Where verification stands.
            pub verification_state: #rp::VerificationState,
            /// The checksum.
            pub verification_checksum: #rp::Option<#rp::String>,
            /// When verification last succeeded.
            pub verified_at: #rp::Option<#rp::DateTime<#rp::Utc>>,
            /// When the current or last verification started.
            pub verification_started_at: #rp::Option<#rp::DateTime<#rp::Utc>>,
            /// When a failed verification is tried again.
            pub verification_retry_at: #rp::Option<#rp::DateTime<#rp::Utc>>,
            /// Failed verifications in a row.
            pub verification_retry_count: u32,
            /// Why the last verification failed.
            pub verification_failure: #rp::Option<#rp::String>,
        }

        #[automatically_derived]
        impl #rp::From<#rp::VerificationRecord> for #verification_ident {
            fn from(row: #rp::VerificationRecord) -> Self {
                let v = row.verification;
                Self {
                    #id_column: row.model_id,
                    verification_state: v.verification_state,
                    verification_checksum: v.verification_checksum,
                    verified_at: v.verified_at,
                    verification_started_at: v.verification_started_at,
                    verification_retry_at: v.verification_retry_at,
                    verification_retry_count: v.verification_retry_count,
                    verification_failure: v.verification_failure,
                }
            }
        }

        const _: () = {
            #[automatically_derived]
            impl #rp::Replicable for #ident {
                const REPLICABLE_NAME: &'static str = #name;
                type Strategy = #strategy;
                type Registry = #registry_ident;
                type VerificationState = #verification_ident;

                #[allow(clippy::useless_conversion)]
                fn replicable_id(&self) -> i64 {
                    #replicable_id
                }

                fn resource(&self) -> #rp::Resource {
                    #resource
                }
            }

            #[automatically_derived]
            impl #ident {
                /// The replicator of this record on `site`: publishes its events on the
                /// primary, syncs and verifies it on a secondary.
                #[allow(dead_code)]
                pub fn replicator<'a>(
                    &'a self,
                    site: &'a #rp::Site,
                ) -> #rp::Replicator<'a, Self> {
                    #rp::Replicator::new(site, self)
                }
            }

            #data_type_check
            #registration
        };
    }
}

fn resource_expr(model: &Model<'_>, rp: &TokenStream, fallback: bool) -> TokenStream {
    if fallback {
        return quote!(#rp::Resource::Record);
    }
    let text = |field: &MarkedField| {
        let (ident, ty) = (&field.ident, &field.ty);
        quote_spanned! {ty.span()=>
            #rp::String::from(<#ty as #rp::AsRef<str>>::as_ref(&self.#ident))
        }
    };
    if let Some(field) = &model.blob {
        let key = text(field);
        quote!(#rp::Resource::Blob { key: #key })
    } else if let Some(field) = &model.repository {
        let path = text(field);
        quote!(#rp::Resource::Repository { path: #path })
    } else {
        quote!(#rp::Resource::Record)
    }
}

/// A compile-time check that the strategy's data type matches the marked fields, for strategies
/// the derive does not know by name.
fn data_type_check(model: &Model<'_>, rp: &TokenStream) -> TokenStream {
    let Some(strategy) = &model.strategy else {
        return quote!();
    };
    let ident = model.ident;
    let has_blob = model.blob.is_some();
    let has_repository = model.repository.is_some();
    let blob_msg = format!(
        "the strategy of `{ident}` replicates blobs: mark the object key field #[replicable(blob)]"
    );
    let repo_msg = format!(
        "the strategy of `{ident}` replicates repositories: mark the path field #[replicable(repository)]"
    );
    let db_msg = format!(
        "the strategy of `{ident}` replicates the record itself: remove #[replicable(blob)] / #[replicable(repository)]"
    );
    quote_spanned! {strategy.span()=>
        const _: () = match <#strategy as #rp::Strategy>::DATA_TYPE {
            #rp::DataType::Blob => assert!(#has_blob, #blob_msg),
            #rp::DataType::Repository => assert!(#has_repository, #repo_msg),
            #rp::DataType::Database => assert!(!#has_blob && !#has_repository, #db_msg),
        };
    }
}

//! Reads the derive input into a [`Model`], recording every mistake in the context.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Path, Type, Visibility};

use crate::ctxt::Ctxt;
use crate::naming::{name_problem, snake_case};

/// The container attribute naming the strategy.
pub const REPLICATOR: &str = "replicator";
/// The container and field attribute.
pub const REPLICABLE: &str = "replicable";

const NAME: &str = "name";
const CRATE: &str = "crate";
const ID: &str = "id";
const BLOB: &str = "blob";
const REPOSITORY: &str = "repository";

/// Which resource a field holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Id,
    Blob,
    Repository,
}

impl Role {
    fn key(self) -> &'static str {
        match self {
            Role::Id => ID,
            Role::Blob => BLOB,
            Role::Repository => REPOSITORY,
        }
    }
}

/// A field with a role.
pub struct MarkedField {
    pub ident: Ident,
    pub ty: Type,
}

/// The checked model. Fields are `None` where the input was wrong (an error was recorded).
pub struct Model<'a> {
    pub ident: &'a Ident,
    pub vis: &'a Visibility,
    pub name: String,
    pub strategy: Option<Path>,
    pub crate_path: Option<Path>,
    pub id: Option<MarkedField>,
    pub blob: Option<MarkedField>,
    pub repository: Option<MarkedField>,
}

/// A `key = "value"` or flag seen once; a second occurrence is an error on its own span.
struct Once<T> {
    value: Option<(T, Span)>,
}

impl<T> Once<T> {
    fn new() -> Self {
        Self { value: None }
    }

    fn set(&mut self, cx: &Ctxt, span: Span, what: &str, value: T) {
        if self.value.is_some() {
            cx.syn_error(syn::Error::new(
                span,
                format!("duplicate replicable attribute `{what}`"),
            ));
        } else {
            self.value = Some((value, span));
        }
    }
}

pub fn read<'a>(cx: &Ctxt, input: &'a DeriveInput) -> Model<'a> {
    let strategy = read_strategy(cx, input);
    let (name, crate_path) = read_container_attrs(cx, input);
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            &input.generics,
            "#[derive(Replicable)] does not support generic structs: a replicable is one concrete model",
        );
    }
    let fields = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => Some(&named.named),
            other => {
                cx.error_spanned_by(
                    other,
                    "#[derive(Replicable)] needs a struct with named fields",
                );
                None
            }
        },
        Data::Enum(data) => {
            cx.error_spanned_by(
                data.enum_token,
                "#[derive(Replicable)] works on structs, not enums: a replicable is one record type",
            );
            None
        }
        Data::Union(data) => {
            cx.error_spanned_by(
                data.union_token,
                "#[derive(Replicable)] works on structs, not unions",
            );
            None
        }
    };
    let mut id = None;
    let mut blob = None;
    let mut repository = None;
    for field in fields.into_iter().flatten() {
        for attr in &field.attrs {
            if attr.path().is_ident(REPLICATOR) {
                cx.error_spanned_by(
                    attr,
                    "#[replicator(...)] goes on the struct, not on a field",
                );
            }
        }
        for role in read_field_roles(cx, field) {
            let slot = match role {
                Role::Id => &mut id,
                Role::Blob => &mut blob,
                Role::Repository => &mut repository,
            };
            let ident = field.ident.clone().expect("named field");
            match slot {
                Some(MarkedField { ident: first, .. }) => cx.error_spanned_by(
                    &ident,
                    format!(
                        "two fields are marked #[replicable({})]: `{first}` and `{ident}`; keep one",
                        role.key()
                    ),
                ),
                None => {
                    *slot = Some(MarkedField {
                        ident,
                        ty: field.ty.clone(),
                    })
                }
            }
        }
    }
    if fields.is_some() && id.is_none() {
        cx.error_spanned_by(
            &input.ident,
            format!(
                "`{}` has no #[replicable(id)] field: mark the field that holds the record's id",
                input.ident
            ),
        );
    }
    if let (Some(_), Some(repo)) = (&blob, &repository) {
        cx.error_spanned_by(
            &repo.ident,
            "a replicable has one resource: a field marked #[replicable(blob)] or one marked #[replicable(repository)], not both",
        );
    }
    let model = Model {
        ident: &input.ident,
        vis: &input.vis,
        name: name.unwrap_or_else(|| snake_case(&input.ident.to_string())),
        strategy,
        crate_path,
        id,
        blob,
        repository,
    };
    if fields.is_some() {
        check_known_strategy(cx, &model);
    }
    model
}

fn read_strategy(cx: &Ctxt, input: &DeriveInput) -> Option<Path> {
    let mut found: Once<Path> = Once::new();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident(REPLICATOR)) {
        match attr.parse_args::<Path>() {
            Ok(path) => found.set(cx, attr.span(), REPLICATOR, path),
            Err(_) => cx.error_spanned_by(
                attr,
                "expected a path to a strategy type, like #[replicator(BlobStrategy)]",
            ),
        }
    }
    match found.value {
        Some((path, _)) => Some(path),
        None => {
            let seen_bad = input.attrs.iter().any(|a| a.path().is_ident(REPLICATOR));
            if !seen_bad {
                cx.error_spanned_by(
                    &input.ident,
                    format!(
                        "`{}` needs #[replicator(Strategy)] naming how its resource is replicated, e.g. #[replicator(BlobStrategy)]",
                        input.ident
                    ),
                );
            }
            None
        }
    }
}

fn read_container_attrs(cx: &Ctxt, input: &DeriveInput) -> (Option<String>, Option<Path>) {
    let mut name: Once<String> = Once::new();
    let mut crate_path: Once<Path> = Once::new();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident(REPLICABLE)) {
        let result = attr.parse_nested_meta(|meta| {
            let span = meta.path.span();
            if meta.path.is_ident(NAME) {
                let lit: LitStr = meta.value()?.parse()?;
                match name_problem(&lit.value()) {
                    Some(problem) => cx.error_spanned_by(&lit, problem),
                    None => name.set(cx, span, NAME, lit.value()),
                }
            } else if meta.path.is_ident(CRATE) {
                let lit: LitStr = meta.value()?.parse()?;
                match lit.parse::<Path>() {
                    Ok(path) => crate_path.set(cx, span, CRATE, path),
                    Err(_) => cx.error_spanned_by(
                        &lit,
                        "expected a path, like \"my_app::replicable_core\"",
                    ),
                }
            } else if meta.path.is_ident(ID)
                || meta.path.is_ident(BLOB)
                || meta.path.is_ident(REPOSITORY)
            {
                cx.error_spanned_by(
                    &meta.path,
                    "this replicable attribute goes on a field, not on the struct",
                );
            } else {
                cx.error_spanned_by(
                    &meta.path,
                    format!(
                        "unknown replicable attribute `{}`; on a struct: `name`, `crate`",
                        path_text(&meta.path)
                    ),
                );
                skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.syn_error(e);
        }
    }
    (name.value.map(|(v, _)| v), crate_path.value.map(|(v, _)| v))
}

fn read_field_roles(cx: &Ctxt, field: &syn::Field) -> Vec<Role> {
    let mut roles: Vec<(Role, Span)> = Vec::new();
    for attr in field.attrs.iter().filter(|a| a.path().is_ident(REPLICABLE)) {
        let result = attr.parse_nested_meta(|meta| {
            let role = [Role::Id, Role::Blob, Role::Repository]
                .into_iter()
                .find(|r| meta.path.is_ident(r.key()));
            match role {
                Some(role) => {
                    if roles.iter().any(|(r, _)| *r == role) {
                        cx.error_spanned_by(
                            &meta.path,
                            format!("duplicate replicable attribute `{}`", role.key()),
                        );
                    } else {
                        roles.push((role, meta.path.span()));
                    }
                }
                None if meta.path.is_ident(NAME) || meta.path.is_ident(CRATE) => {
                    cx.error_spanned_by(
                        &meta.path,
                        "this replicable attribute goes on the struct, not on a field",
                    );
                    skip_value(&meta)?;
                }
                None => {
                    cx.error_spanned_by(
                        &meta.path,
                        format!(
                            "unknown replicable attribute `{}`; on a field: `id`, `blob`, `repository`",
                            path_text(&meta.path)
                        ),
                    );
                    skip_value(&meta)?;
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.syn_error(e);
        }
    }
    if roles.len() > 1 && roles.iter().any(|(r, _)| *r == Role::Id) {
        cx.error_spanned_by(
            field.ident.as_ref().expect("named field"),
            "the id field cannot also be the resource field",
        );
    }
    roles.into_iter().map(|(r, _)| r).collect()
}

/// Consumes `= value` or `(...)` after an unknown key so that parsing goes on to the next key.
fn skip_value(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        let _: syn::Expr = meta.value()?.parse()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        let _: proc_macro2::TokenStream = content.parse()?;
    }
    Ok(())
}

fn path_text(path: &Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

/// The built-in strategies are recognised by name, so their field requirements are reported on
/// the attribute. Other strategies are checked by a compile-time assertion in the expansion.
fn check_known_strategy(cx: &Ctxt, model: &Model<'_>) {
    let Some(strategy) = &model.strategy else {
        return;
    };
    let Some(last) = strategy.segments.last() else {
        return;
    };
    let needs = match last.ident.to_string().as_str() {
        "BlobStrategy" => Some(Role::Blob),
        "GitRepositoryStrategy" => Some(Role::Repository),
        "DatabaseStrategy" => None,
        _ => return,
    };
    let has = |role| match role {
        Role::Blob => model.blob.is_some(),
        Role::Repository => model.repository.is_some(),
        Role::Id => true,
    };
    match needs {
        Some(role) if !has(role) => cx.error_spanned_by(
            strategy,
            format!(
                "{} needs a field marked #[replicable({})] holding the {}",
                last.ident,
                role.key(),
                if role == Role::Blob {
                    "object key"
                } else {
                    "repository path"
                }
            ),
        ),
        None => {
            for field in [&model.blob, &model.repository].into_iter().flatten() {
                cx.error_spanned_by(
                    &field.ident,
                    "DatabaseStrategy replicates the record itself; it has no blob or repository field",
                );
            }
        }
        _ => {
            let other = if needs == Some(Role::Blob) {
                &model.repository
            } else {
                &model.blob
            };
            if let Some(field) = other {
                cx.error_spanned_by(
                    &field.ident,
                    format!("{} does not use this field's kind of resource", last.ident),
                );
            }
        }
    }
}

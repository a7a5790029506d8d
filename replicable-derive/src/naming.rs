//! Replicable names: the default derived from the struct name, and the rules a name follows
//! (it becomes table and column names).

/// The longest name accepted (table names like `<name>_registry` must fit in PostgreSQL's 63).
pub const MAX_NAME_LEN: usize = 48;

/// `PackageFile` -> `package_file`, `HTTPServer` -> `http_server`, `Ci2Setting` -> `ci2_setting`.
pub fn snake_case(ident: &str) -> String {
    let chars: Vec<char> = ident.chars().collect();
    let mut out = String::with_capacity(ident.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1).copied();
            let boundary = match prev {
                None | Some('_') => false,
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(char::is_lowercase),
                _ => false,
            };
            if boundary {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Why `name` cannot be a replicable name, if it cannot.
pub fn name_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Some("the name is empty".into()),
        Some(c) if !c.is_ascii_lowercase() => {
            return Some(format!(
                "the name `{name}` must start with a lower-case ASCII letter"
            ));
        }
        _ => {}
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Some(format!(
            "the name `{name}` contains `{bad}`: use lower-case ASCII letters, digits and `_`"
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!(
            "the name `{name}` is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_of_struct_names() {
        assert_eq!(snake_case("PackageFile"), "package_file");
        assert_eq!(snake_case("CiSetting"), "ci_setting");
        assert_eq!(snake_case("HTTPServer"), "http_server");
        assert_eq!(snake_case("Project"), "project");
        assert_eq!(snake_case("Lfs2Object"), "lfs2_object");
        assert_eq!(snake_case("Already_Snake"), "already_snake");
    }

    #[test]
    fn names_must_be_table_safe() {
        assert_eq!(name_problem("package_file"), None);
        assert!(name_problem("").is_some());
        assert!(name_problem("1abc").unwrap().contains("start with"));
        assert!(name_problem("Package").unwrap().contains("start with"));
        assert!(name_problem("pkg-file").unwrap().contains("`-`"));
        assert!(
            name_problem(&"a".repeat(49))
                .unwrap()
                .contains("at most 48")
        );
    }
}

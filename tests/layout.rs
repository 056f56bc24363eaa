//! The crate's layout rule: **a module uses only the modules listed below it** in the `# Layout`
//! section of `src/lib.rs`, so the top-level modules form a graph without cycles and each can be
//! read, tested and changed without the ones above it (`shared/docs/architecture.md`).
//!
//! The check reads the sources with `syn`, leaves out `#[cfg(test)]` items (a test may use
//! anything), and collects every `crate::MODULE::...` path in the remaining tokens, macro bodies
//! included. It fails with the two modules and the names that tie them: first for any cycle,
//! then for any use of a module listed above the user.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;

/// `module -> used module -> the names used (e.g. "storage::ByteStream")`.
type Uses = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

#[test]
fn top_level_modules_use_only_the_modules_listed_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layout = layout_order(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let modules = top_level_modules(&src);
    let listed: BTreeSet<&String> = layout.iter().collect();
    let declared: BTreeSet<&String> = modules.keys().collect();
    assert_eq!(
        listed, declared,
        "src/lib.rs's # Layout must list every top-level module exactly once"
    );
    let uses = collect_uses(&modules);
    if let Some(problem) = cycle(&uses) {
        panic!("{problem}");
    }
    let problems = upward_uses(&layout, &uses);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_names_a_cycle_and_its_ties() {
    let mut uses = Uses::new();
    tie(&mut uses, "storage", "limits", "limits::Pace");
    tie(&mut uses, "limits", "storage", "storage::ByteStream");
    let problem = cycle(&uses).expect("a two-module cycle is found");
    assert!(problem.contains("limits -> storage"), "{problem}");
    assert!(problem.contains("storage::ByteStream"), "{problem}");
    assert!(problem.contains("limits::Pace"), "{problem}");

    let mut uses = Uses::new();
    tie(&mut uses, "a", "b", "b::X");
    tie(&mut uses, "b", "c", "c::Y");
    tie(&mut uses, "c", "a", "a::Z");
    let problem = cycle(&uses).expect("a longer cycle is found");
    for name in ["a::Z", "b::X", "c::Y"] {
        assert!(problem.contains(name), "{problem}");
    }

    let mut uses = Uses::new();
    tie(&mut uses, "api", "storage", "storage::Store");
    tie(&mut uses, "storage", "key", "key::CacheKey");
    assert_eq!(cycle(&uses), None);
    let order = ["api", "storage", "key"].map(String::from).to_vec();
    assert!(upward_uses(&order, &uses).is_empty());
    let order = ["api", "key", "storage"].map(String::from).to_vec();
    let problems = upward_uses(&order, &uses);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("`storage` uses `key`"), "{problems:?}");
}

#[test]
fn paths_are_found_in_use_trees_expressions_and_macros() {
    let file: syn::File = syn::parse_str(
        r#"
        use crate::{key::CacheKey, metrics::{self, Figure}};
        use crate::auth as identity;
        fn f() -> crate::limits::Pace { tracing::info!(x = %crate::config::NAME); todo!() }
        #[cfg(test)]
        mod tests { use crate::server::Prepared; }
        "#,
    )
    .unwrap();
    let mut found = BTreeMap::<String, BTreeSet<String>>::new();
    for item in file.items.iter().filter(|item| !is_test_only(item)) {
        scan(item.to_token_stream(), &mut found);
    }
    let modules: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(modules, ["auth", "config", "key", "limits", "metrics"]);
    assert!(found["metrics"].contains("metrics::Figure"), "{found:?}");
    assert!(found["key"].contains("key::CacheKey"), "{found:?}");
}

fn tie(uses: &mut Uses, from: &str, to: &str, name: &str) {
    uses.entry(from.into())
        .or_default()
        .entry(to.into())
        .or_default()
        .insert(name.into());
}

/// The modules named in `//! - [`name`]: ...` lines of the `# Layout` section, top first.
fn layout_order(lib: &str) -> Vec<String> {
    let section = lib
        .split("//! # Layout")
        .nth(1)
        .expect("src/lib.rs has a # Layout section");
    section
        .lines()
        .skip(1)
        .take_while(|line| line.starts_with("//!"))
        .filter_map(|line| line.trim_start_matches("//!").trim().strip_prefix("- [`"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// Each top-level module and its source files: `src/NAME.rs`, or every file under `src/NAME/`.
fn top_level_modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() && name != "bin" {
            let mut files = Vec::new();
            rust_files(&path, &mut files);
            modules.insert(name, files);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            modules.insert(name, vec![path]);
        }
    }
    modules
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn collect_uses(modules: &BTreeMap<String, Vec<PathBuf>>) -> Uses {
    let mut uses = Uses::new();
    for (module, files) in modules {
        let mut found = BTreeMap::new();
        for file in files {
            let text = std::fs::read_to_string(file).unwrap();
            let parsed = syn::parse_file(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
            for item in parsed.items.iter().filter(|item| !is_test_only(item)) {
                scan(item.to_token_stream(), &mut found);
            }
        }
        found.remove(module);
        uses.insert(module.clone(), found);
    }
    uses
}

/// Items behind `#[cfg(test)]`: unit tests may use any module.
fn is_test_only(item: &syn::Item) -> bool {
    let attrs = match item {
        syn::Item::Mod(m) => &m.attrs,
        syn::Item::Fn(f) => &f.attrs,
        syn::Item::Use(u) => &u.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Struct(s) => &s.attrs,
        syn::Item::Const(c) => &c.attrs,
        _ => return false,
    };
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg") && attr.meta.to_token_stream().to_string() == "cfg (test)"
    })
}

/// Records every `crate :: MODULE ...` in `tokens`: `found[MODULE]` gets `MODULE::Name` (the
/// segment after the module, when there is one). Use trees `crate::{a::X, b}` count for each.
fn scan(tokens: TokenStream, found: &mut BTreeMap<String, BTreeSet<String>>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Group(group) => scan(group.stream(), found),
            TokenTree::Ident(ident) if ident == "crate" => {
                if let Some(after) = path_separator(&tokens, i + 1) {
                    match tokens.get(after) {
                        Some(TokenTree::Ident(module)) => {
                            record(module.to_string(), &tokens[after + 1..], found)
                        }
                        Some(TokenTree::Group(group)) if group.delimiter() == Delimiter::Brace => {
                            use_tree(group.stream(), found)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// The index after `::` at `at`, if there is one.
fn path_separator(tokens: &[TokenTree], at: usize) -> Option<usize> {
    match (tokens.get(at), tokens.get(at + 1)) {
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
            if a.as_char() == ':' && b.as_char() == ':' =>
        {
            Some(at + 2)
        }
        _ => None,
    }
}

/// `module` is used; `rest` follows it (`::Name ...` names what).
fn record(module: String, rest: &[TokenTree], found: &mut BTreeMap<String, BTreeSet<String>>) {
    let names = found.entry(module.clone()).or_default();
    match path_separator(rest, 0).and_then(|at| rest.get(at)) {
        Some(TokenTree::Ident(name)) => {
            names.insert(format!("{module}::{name}"));
        }
        // `module::{self, Name, sub::Other}`: one name per part.
        Some(TokenTree::Group(group)) => {
            let parts: Vec<TokenTree> = group.stream().into_iter().collect();
            for part in parts.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ',')) {
                match part.first() {
                    Some(TokenTree::Ident(name)) if name != "self" => {
                        names.insert(format!("{module}::{name}"));
                    }
                    _ => {
                        names.insert(module.clone());
                    }
                }
            }
        }
        _ => {
            names.insert(module);
        }
    }
}

/// The inside of `crate::{...}`: comma-separated trees, each starting with a module name.
fn use_tree(tokens: TokenStream, found: &mut BTreeMap<String, BTreeSet<String>>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    for part in tokens.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ',')) {
        if let Some(TokenTree::Ident(module)) = part.first() {
            record(module.to_string(), &part[1..], found);
        }
    }
}

/// A cycle between top-level modules, described with the names on each edge.
fn cycle(uses: &Uses) -> Option<String> {
    fn visit(
        module: &str,
        uses: &Uses,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == module) {
            let mut found = path[start..].to_vec();
            found.push(module.to_owned());
            return Some(found);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for used in uses.get(module).into_iter().flat_map(|u| u.keys()) {
            if let Some(found) = visit(used, uses, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for module in uses.keys() {
        if let Some(found) = visit(module, uses, &mut Vec::new(), &mut done) {
            let edges: Vec<String> = found
                .windows(2)
                .map(|pair| {
                    let names = &uses[&pair[0]][&pair[1]];
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    format!("{} -> {} ({})", pair[0], pair[1], names.join(", "))
                })
                .collect();
            return Some(format!(
                "top-level modules form a cycle: {}; move the shared type into the lower module (shared/docs/architecture.md)",
                edges.join("; ")
            ));
        }
    }
    None
}

/// Uses of a module listed above the user in the layout (or not listed at all).
fn upward_uses(layout: &[String], uses: &Uses) -> Vec<String> {
    let rank = |m: &str| layout.iter().position(|l| l == m);
    let mut problems = Vec::new();
    for (module, used) in uses {
        for (target, names) in used {
            let below = matches!((rank(module), rank(target)), (Some(a), Some(b)) if b > a);
            if !below {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                problems.push(format!(
                    "`{module}` uses `{target}` ({}), but `{target}` is not listed below `{module}` in src/lib.rs's # Layout",
                    names.join(", ")
                ));
            }
        }
    }
    problems
}

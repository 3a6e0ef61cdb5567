//! The engine's modules call downward only: no module imports, directly or through others, a
//! module that imports it back — neither the crate's modules nor the files inside a module's
//! directory (`presence/`, `transport/`). Read from the sources (`crate::<module>`, `super::`
//! and `child::` paths outside test code), so a new circle fails here rather than in a review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module of `src/…` that `path` belongs to (`presence/state.rs` → `presence`).
fn module_of(src: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of a source file without its unit tests (`#[cfg(test)] mod tests` to the end, as
/// every file here places them) or, for a `tests.rs`, nothing.
fn non_test_code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// The modules named by `crate::<name>` in `code`.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String =
            rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        if !name.is_empty() {
            names.insert(name);
        }
    }
    names
}

/// Module → the modules it uses (excluding itself, the crate root and the fuzzing entry points,
/// which sit above everything).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        if module == "lib" || module == "fuzzing" {
            continue;
        }
        let uses = graph.entry(module.clone()).or_default();
        for used in referenced(&non_test_code(&file)) {
            if used != module {
                uses.insert(used);
            }
        }
    }
    graph
}

/// A path `from` → … → `to`, if there is one.
fn path(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if from == to {
        return Some(vec![to.to_owned()]);
    }
    if !seen.insert(from.to_owned()) {
        return None;
    }
    for next in graph.get(from).into_iter().flatten() {
        if let Some(mut rest) = path(graph, next, to, seen) {
            rest.insert(0, from.to_owned());
            return Some(rest);
        }
    }
    None
}

/// Whether `code` names `name` as a path's first segment (`name::…`, not `x::name::…`).
fn starts_a_path(code: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    code.match_indices(&needle).any(|(at, _)| {
        code[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'))
    })
}

/// For each module directory under `src/`: file → the files of the same directory it uses.
/// `mod.rs` uses a child through `child::…`; a child uses a sibling through `super::sibling::…`
/// and `mod.rs` through any other `super::…`.
fn directory_graphs() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graphs = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        let stem = |p: &Path| p.file_stem().unwrap().to_string_lossy().into_owned();
        let children: BTreeSet<String> =
            files.iter().map(|f| stem(f)).filter(|s| s != "mod" && s != "tests").collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let name = stem(file);
            let code = non_test_code(file);
            let uses = graph.entry(name.clone()).or_default();
            if name == "mod" {
                uses.extend(children.iter().filter(|c| starts_a_path(&code, c)).cloned());
                continue;
            }
            for (at, _) in code.match_indices("super::") {
                let rest = &code[at + "super::".len()..];
                let next: String =
                    rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                let is_sibling = children.contains(&next) && rest[next.len()..].starts_with("::");
                uses.insert(if is_sibling { next } else { "mod".to_owned() });
            }
            uses.remove(&name);
        }
        graphs.insert(stem(&dir), graph);
    }
    graphs
}

/// Every circle of `graph`, as "a → b → a".
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut circles = Vec::new();
    for (module, uses) in graph {
        for used in uses {
            if let Some(back) = path(graph, used, module, &mut BTreeSet::new()) {
                circles.push(format!("{module} → {}", back.join(" → ")));
            }
        }
    }
    circles
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let graph = graph();
    assert!(graph.len() > 10, "the sources were read: {:?}", graph.keys());
    assert!(graph["hub"].contains("outbox"), "references are found: {:?}", graph["hub"]);
    let circles = circles(&graph);
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn no_file_of_a_module_directory_imports_a_file_that_imports_it() {
    let graphs = directory_graphs();
    let presence = &graphs["presence"];
    assert!(presence["mod"].contains("state"), "child paths are found: {presence:?}");
    assert!(presence["frames"].contains("state"), "sibling paths are found: {presence:?}");
    assert!(presence["replication"].contains("mod"), "parent paths are found: {presence:?}");
    assert!(graphs["transport"]["websocket"].contains("frames"), "{:?}", graphs["transport"]);
    for (dir, graph) in &graphs {
        let circles = circles(graph);
        assert!(circles.is_empty(), "import circles in {dir}/:\n{}", circles.join("\n"));
    }
}

#[test]
fn the_reader_finds_a_circle_when_there_is_one() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert!(path(&graph, "c", "a", &mut BTreeSet::new()).is_none());
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(path(&graph, "b", "a", &mut BTreeSet::new()).unwrap(), ["b", "c", "a"]);
    assert_eq!(
        referenced("use crate::hub::Hub; x: crate::limits::Refused; crate::Hub"),
        BTreeSet::from(["hub".to_owned(), "limits".to_owned()])
    );
    assert!(starts_a_path("use state::{Entry};", "state"));
    assert!(starts_a_path("x(frames::f())", "frames"));
    assert!(!starts_a_path("use super::state::Entry;", "state"));
    assert!(!starts_a_path("use crate::x::state::Entry; my_state::y", "state"));
}

//! The crate's modules depend on each other in one direction only: no file refers to a file
//! that refers back to it, directly or through others, and the same holds for the top-level
//! modules (`sys`, `shm`, `frame`, `message`, `runtime`, `net`, `channel`, `alt`, `process`,
//! ...). The module map is in `src/shm/LAYOUT.md`.
//!
//! A reference is any `crate::` or `super::` path in a file's code (comments are skipped),
//! resolved to the longest module it names. Paths through the crate root's re-exports
//! (`crate::Channel`) count as references to `lib.rs`, which refers to every module: inside the
//! crate, name the module an item lives in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file: `lib.rs` is `""`, `net/mod.rs` is `net`, `net/client.rs`
/// is `net::client`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let parts: Vec<&str> = parts
        .iter()
        .map(String::as_str)
        .filter(|p| *p != "mod" && *p != "lib")
        .collect();
    parts.join("::")
}

/// The code of a file without its comments (line comments and doc comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths that follow `prefix::` in `code`, with `prefix::{a::b, c}` groups expanded.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let pat = format!("{prefix}::");
    let mut rest = code;
    while let Some(i) = rest.find(&pat) {
        let before = rest[..i].chars().last();
        rest = &rest[i + pat.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `pycsp_core::crate`-like or `a::super`: not a path start
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let segs: Vec<String> = item
                    .trim()
                    .split("::")
                    .map(|s| s.trim().to_string())
                    .take_while(|s| !s.is_empty() && !s.starts_with('{'))
                    .collect();
                if !segs.is_empty() {
                    out.push(segs);
                }
            }
            continue;
        }
        let segs: Vec<String> = rest
            .split("::")
            .map(|s| {
                s.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .scan(true, |go, s| {
                // Stop after the first segment that was cut short (the path ended there).
                if !*go {
                    return None;
                }
                *go = !s.is_empty();
                Some(s)
            })
            .filter(|s| !s.is_empty())
            .collect();
        if !segs.is_empty() {
            out.push(segs);
        }
    }
    out
}

/// The longest module among `modules` that `path` (segments from the crate root) names.
fn resolve(modules: &BTreeSet<String>, path: &[String]) -> String {
    for n in (1..=path.len()).rev() {
        let m = path[..n].join("::");
        if modules.contains(&m) {
            return m;
        }
    }
    String::new() // the crate root
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let me = module_of(&src, f);
        let text = code(&std::fs::read_to_string(f).unwrap());
        let mut targets = BTreeSet::new();
        for p in paths_after(&text, "crate") {
            targets.insert(resolve(&modules, &p));
        }
        // `super` in a file is its parent module (in `net/client.rs`: `net`); in a file's
        // inline `mod tests`, `super::*` is the file itself, a self-reference.
        let parent: Vec<String> = me.split("::").map(String::from).collect();
        let parent = &parent[..parent.len().saturating_sub(1)];
        for p in paths_after(&text, "super") {
            if p.first().is_some_and(|s| s == "*") {
                continue;
            }
            let mut full = parent.to_vec();
            full.extend(p);
            targets.insert(resolve(&modules, &full));
        }
        targets.remove(&me);
        edges.entry(me).or_default().extend(targets);
    }
    edges
}

/// A cycle in `edges`, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[i..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn show(c: &[String]) -> String {
    c.iter()
        .map(|m| if m.is_empty() { "lib.rs" } else { m.as_str() })
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn no_file_refers_to_a_file_that_refers_back_to_it() {
    let g = graph();
    assert!(g.len() > 20, "the source files were found: {:?}", g.keys());
    // The crate root only declares and re-exports: nothing may refer to it.
    if let Some(c) = find_cycle(&g) {
        panic!("a cycle of references between files: {}", show(&c));
    }
}

#[test]
fn top_level_modules_form_layers() {
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let head = |m: &str| m.split("::").next().unwrap_or("").to_string();
    for (from, tos) in graph() {
        let f = head(&from);
        let entry = top.entry(f.clone()).or_default();
        for t in tos {
            let t = head(&t);
            if t != f {
                entry.insert(t);
            }
        }
    }
    if let Some(c) = find_cycle(&top) {
        panic!("a cycle of references between modules: {}", show(&c));
    }
    // The layers of the module map, bottom first: each may use only those before it.
    let order = [
        "sys", "error", "trace", "frame", "shm", "observe", "message", "runtime", "block", "array",
        "value", "net", "channel", "alt", "process", "private", "",
    ];
    let rank = |m: &str| order.iter().position(|o| *o == m);
    for (from, tos) in &top {
        let rf = rank(from).unwrap_or_else(|| panic!("module {from} is not in the module map"));
        for t in tos {
            let rt = rank(t).unwrap_or_else(|| panic!("module {t} is not in the module map"));
            assert!(
                rt < rf,
                "{} uses {}, which is not below it in the module map",
                show(std::slice::from_ref(from)),
                show(std::slice::from_ref(t))
            );
        }
    }
}

#[test]
fn the_checker_sees_references_and_cycles() {
    let modules: BTreeSet<String> = ["a", "a::b", "c"].iter().map(|s| s.to_string()).collect();
    let p = paths_after("use crate::a::b::{X, Y};\nlet z = crate::c::f();", "crate");
    let r: BTreeSet<String> = p.iter().map(|p| resolve(&modules, p)).collect();
    assert_eq!(r, ["a::b", "c"].iter().map(|s| s.to_string()).collect());
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), ["b".to_string()].into()),
        ("b".to_string(), ["a".to_string()].into()),
    ]
    .into();
    assert!(find_cycle(&g).is_some());
}

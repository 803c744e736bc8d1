//! `cargo xtask test`'s layering check: no import cycle between the library's modules.
//!
//! Every `crate::` and `super::` path in a module's code (its tests left out) is an edge to the
//! deepest module the path names. An edge between two modules counts between their ancestors
//! that are siblings (`gpu::plan::backward -> gpu::runtime::io` is `plan -> runtime` inside
//! `gpu`); a module using its own ancestor or descendant is one module. Any cycle among
//! siblings fails the check, with the edges that close it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Checks `src` (a crate's source folder); the error lists every cycle found.
pub fn check(src: &Path) -> Result<(), String> {
    let mut files = Vec::new();
    collect(src, src, &mut files)?;
    let sources: BTreeMap<Module, String> = files.into_iter().collect();
    let cycles = cycles(&sources);
    if cycles.is_empty() {
        println!(
            "xtask: {} modules under {}, no import cycle",
            sources.len(),
            src.display()
        );
        return Ok(());
    }
    Err(format!(
        "import cycles under {}:\n{}",
        src.display(),
        cycles.join("\n")
    ))
}

/// Every `.rs` file under `dir` as (module path, code without tests or comments).
fn collect(root: &Path, dir: &Path, out: &mut Vec<(Module, String)>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).map_err(|e| e.to_string())?;
            let mut module: Module = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{rel:?}: {e}"))?;
            out.push((module, code_of(&text)));
        }
    }
    Ok(())
}

/// The text without line comments and without the `#[cfg(test)]` module that ends a file
/// (whose `super::` names the file's own module, and which the layering does not cover).
fn code_of(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where each name a module re-exports (`pub use`, `pub(crate) use`) comes from: (module,
/// name) -> the module that defines it, so that a path through a re-export (`crate::Name`,
/// `super::Name`) counts as an edge to where the name lives.
type Reexports = BTreeMap<(Module, String), Module>;

fn reexports(sources: &BTreeMap<Module, String>, known: &BTreeSet<Module>) -> Reexports {
    let mut out = Reexports::new();
    for (module, code) in sources {
        for prefix in ["pub use ", "pub(crate) use ", "pub(super) use "] {
            for (i, _) in code.match_indices(prefix) {
                let stmt = &code[i + prefix.len()..];
                let stmt = &stmt[..stmt.find(';').unwrap_or(stmt.len())];
                let (base, rest) = base_and_rest(module, stmt);
                for path in paths(rest) {
                    let mut full = base.clone();
                    full.extend(path);
                    let Some(name) = full.last().cloned() else {
                        continue;
                    };
                    let target = deepest(full, known);
                    if &target != module {
                        out.insert((module.clone(), name), target);
                    }
                }
            }
        }
    }
    out
}

/// Where a path starts: `crate::` at the root, `super::` (repeated) above the module, `self::`
/// or a bare name (a `use` of a child module) at the module itself.
fn base_and_rest<'a>(module: &Module, path: &'a str) -> (Module, &'a str) {
    let path = path.trim_start();
    if let Some(rest) = path.strip_prefix("crate::") {
        return (Vec::new(), rest);
    }
    let mut base = module.clone();
    let mut rest = path.strip_prefix("self::").unwrap_or(path);
    while let Some(r) = rest.strip_prefix("super::") {
        base.pop();
        rest = r;
    }
    (base, rest)
}

/// The deepest known module `full` names (the rest is an item inside it).
fn deepest(mut full: Module, known: &BTreeSet<Module>) -> Module {
    while !full.is_empty() && !known.contains(&full) {
        full.pop();
    }
    full
}

/// The module that defines what `full` names, following re-exports (at most 8 hops).
fn resolve(full: Module, known: &BTreeSet<Module>, reexports: &Reexports) -> Module {
    let mut target = deepest(full.clone(), known);
    // The item's name stays the same through each hop (aliases are not followed).
    let Some(name) = full.get(target.len()).cloned() else {
        return target;
    };
    for _ in 0..8 {
        match reexports.get(&(target.clone(), name.clone())) {
            Some(next) if *next != target => target = next.clone(),
            _ => break,
        }
    }
    target
}

/// The modules that `module`'s code names through `crate::` and `super::` paths.
fn uses(
    module: &Module,
    code: &str,
    known: &BTreeSet<Module>,
    reexports: &Reexports,
) -> BTreeSet<Module> {
    let mut out = BTreeSet::new();
    for (i, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // part of a longer path (`super::super::`) or identifier
        }
        let (mut base, mut rest) = if code[i..].starts_with("crate::") {
            (Vec::new(), &code[i + 7..])
        } else {
            (
                module[..module.len().saturating_sub(1)].to_vec(),
                &code[i + 7..],
            )
        };
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        for path in paths(rest) {
            let mut full = base.clone();
            full.extend(path);
            let target = resolve(full, known, reexports);
            if !target.is_empty() && &target != module {
                out.insert(target);
            }
        }
    }
    out
}

/// The module paths a `use` tail names: `a::b::C` is one, `a::{b::C, d}` is `a::b` and `a::d`
/// (the leading segments only; the deepest known module is found by the caller).
fn paths(rest: &str) -> Vec<Vec<String>> {
    let mut segs = Vec::new();
    let mut s = rest;
    loop {
        let len = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        if len == 0 {
            break;
        }
        segs.push(s[..len].to_string());
        s = &s[len..];
        match s.strip_prefix("::") {
            Some(r) => s = r,
            None => return vec![segs],
        }
    }
    let Some(group) = s.strip_prefix('{') else {
        return vec![segs];
    };
    // Split the brace group at depth-0 commas; each item continues the prefix.
    let (mut depth, mut start, mut out) = (0usize, 0usize, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                out.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.into_iter()
        .flat_map(|item| {
            paths(item.trim()).into_iter().map(|tail| {
                let mut p = segs.clone();
                p.extend(tail.into_iter().filter(|t| t != "self"));
                p
            })
        })
        .collect()
}

/// Every cycle among sibling modules, as lines naming the modules and the edges.
fn cycles(sources: &BTreeMap<Module, String>) -> Vec<String> {
    let known: BTreeSet<Module> = sources.keys().cloned().collect();
    let reexports = reexports(sources, &known);
    // Sibling graph: lifted edge -> the original edges behind it.
    let mut graph: BTreeMap<Module, BTreeMap<Module, Vec<String>>> = BTreeMap::new();
    for (a, code) in sources {
        for b in uses(a, code, &known, &reexports) {
            let k = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            if k == a.len() || k == b.len() {
                continue; // an ancestor and its descendant: one module
            }
            let why = format!("{} -> {}", a.join("::"), b.join("::"));
            graph
                .entry(a[..=k].to_vec())
                .or_default()
                .entry(b[..=k].to_vec())
                .or_default()
                .push(why);
        }
    }
    strongly_connected(&graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            let names: Vec<String> = c.iter().map(|m| m.join("::")).collect();
            let edges: Vec<String> = c
                .iter()
                .flat_map(|a| graph[a].iter().filter(|(b, _)| c.contains(b)))
                .flat_map(|(_, why)| why.iter().cloned())
                .collect();
            format!("  {}: {}", names.join(", "), edges.join("; "))
        })
        .collect()
}

/// Tarjan's strongly connected components.
fn strongly_connected<V>(graph: &BTreeMap<Module, BTreeMap<Module, V>>) -> Vec<Vec<Module>> {
    struct State<'g> {
        index: BTreeMap<&'g Module, (usize, usize)>,
        stack: Vec<&'g Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit<'g, V>(
        v: &'g Module,
        graph: &'g BTreeMap<Module, BTreeMap<Module, V>>,
        s: &mut State<'g>,
    ) {
        let i = s.index.len();
        s.index.insert(v, (i, i));
        s.stack.push(v);
        for w in graph.get(v).into_iter().flat_map(|e| e.keys()) {
            let low = match s.index.get(w) {
                None => {
                    visit(w, graph, s);
                    s.index[w].1
                }
                Some(&(wi, _)) if s.stack.contains(&w) => wi,
                Some(_) => continue,
            };
            let entry = s.index.get_mut(v).expect("visited");
            entry.1 = entry.1.min(low);
        }
        if s.index[v].0 == s.index[v].1 {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(v, graph, &mut s);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> BTreeMap<Module, String> {
        files
            .iter()
            .map(|(m, code)| {
                let module = m.split("::").filter(|s| !s.is_empty()).map(String::from);
                (module.collect(), code_of(code))
            })
            .collect()
    }

    #[test]
    fn a_cycle_between_nested_siblings_is_found() {
        let t = tree(&[
            ("", "mod gpu; mod config;"),
            ("gpu", "mod plan; mod runtime;"),
            (
                "gpu::plan",
                "use crate::gpu::runtime::host::{Staging, storage};",
            ),
            ("gpu::runtime", "mod host;"),
            (
                "gpu::runtime::host",
                "use crate::gpu::plan::{self, FmaPlan};",
            ),
            ("config", "use crate::gpu::plan::FmaPlan;"),
        ]);
        let found = cycles(&t);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("gpu::plan, gpu::runtime")
                || found[0].contains("gpu::runtime, gpu::plan")
        );
        assert!(
            found[0].contains("gpu::runtime::host -> gpu::plan"),
            "{found:?}"
        );
    }

    #[test]
    fn layers_that_look_down_parents_and_tests_pass() {
        let t = tree(&[
            ("", "mod gpu; mod config;"),
            ("gpu", "mod plan; mod runtime; pub use plan::FmaPlan;"),
            (
                "gpu::plan",
                "mod backward; use crate::gpu::runtime::io::AttentionIo;",
            ),
            (
                "gpu::plan::backward",
                "use super::FmaPlan; use super::super::runtime::io;",
            ),
            ("gpu::runtime", "mod io;"),
            (
                "gpu::runtime::io",
                "use crate::config::Shape; // crate::gpu::plan in a comment\n\
                 #[cfg(test)]\nmod tests { use crate::gpu::plan::FmaPlan; }",
            ),
            ("config", ""),
        ]);
        assert_eq!(cycles(&t), Vec::<String>::new());
    }

    #[test]
    fn a_cycle_through_re_exports_is_found() {
        // lib.rs re-exports plan's FmaPlan and runtime's names; runtime reaches plan through
        // the crate root, plan reaches runtime through its parent.
        let t = tree(&[
            ("", "mod gpu; pub use gpu::{FmaPlan, GpuContext};"),
            (
                "gpu",
                "mod plan; mod runtime; pub use plan::FmaPlan; pub use runtime::GpuContext;",
            ),
            ("gpu::plan", "use super::GpuContext;"),
            ("gpu::runtime", "use crate::FmaPlan;"),
        ]);
        let found = cycles(&t);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("gpu::runtime -> gpu::plan"), "{found:?}");
        assert!(found[0].contains("gpu::plan -> gpu::runtime"), "{found:?}");
    }

    #[test]
    fn super_super_and_nested_groups_resolve() {
        let known: BTreeSet<Module> = [
            vec![],
            vec!["a".into()],
            vec!["a".into(), "b".into()],
            vec!["c".into()],
        ]
        .into_iter()
        .collect();
        let from: Module = vec!["a".into(), "b".into()];
        let got = uses(
            &from,
            "use super::super::c::X; use crate::{a::{self}, c};",
            &known,
            &Reexports::new(),
        );
        assert_eq!(
            got,
            [vec!["a".to_string()], vec!["c".to_string()]]
                .into_iter()
                .collect()
        );
    }
}

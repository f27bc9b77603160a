//! `kubelisten check`: is this file a component implementing the listener world, and if not,
//! exactly what is wrong.

use std::fmt;

use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::wasmparser::Parser;

use super::bindings::ListenerPre;
use super::engine::Runtime;
use super::state::HostState;

/// The exports the listener world requires.
pub const REQUIRED_EXPORTS: [&str; 5] = ["create", "update", "delete", "error", "rollback"];

/// Everything found wrong with a module, one problem per entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// A module that passed the check, compiled and pre-instantiated.
pub(crate) struct Checked {
    pub(crate) digest: String,
    pub(crate) pre: ListenerPre<HostState>,
    /// Exports `snapshot` and `restore` (the `stateful-listener` world).
    pub(crate) stateful: bool,
}

/// What `check` reports for a good component.
#[derive(Debug, Clone)]
pub struct Report {
    /// `sha256:<hex>` of the file.
    pub digest: String,
    /// Names of the component's imports.
    pub imports: Vec<String>,
    /// Names of the component's exports.
    pub exports: Vec<String>,
}

/// Checks `bytes` and returns what a good component imports and exports.
///
/// # Errors
/// Every problem found: not wasm, a core module, a component that does not compile, an import
/// the host does not provide, a missing export or one with the wrong signature (the listener
/// world's, and `snapshot` / `restore` when either is exported).
pub fn check(runtime: &Runtime, bytes: &[u8]) -> Result<Report, Problems> {
    let checked = prepare(runtime, bytes)?;
    let ty = checked.pre.instance_pre().component().component_type();
    let engine = runtime.engine();
    Ok(Report {
        digest: checked.digest,
        imports: ty
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect(),
        exports: ty
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect(),
    })
}

/// The exports of the `stateful-listener` world (state hand-over at a hot swap) and their WIT
/// signatures.
pub const HAND_OVER_EXPORTS: [(&str, &str); 2] = [
    ("snapshot", "func() -> list<u8>"),
    ("restore", "func(state: list<u8>)"),
];

/// Whether the component implements the `stateful-listener` hand-over: it exports `snapshot`
/// and `restore` with their WIT signatures. When it exports either, a missing or mistyped one
/// is a problem: the host would call them at every hot swap, and the state would be lost
/// each time.
fn hand_over_exports(
    ty: &wasmtime::component::types::Component,
    engine: &wasmtime::Engine,
    problems: &mut Vec<String>,
) -> bool {
    let bytes = |t: &Type| matches!(t, Type::List(l) if matches!(l.ty(), Type::U8));
    let exports = HAND_OVER_EXPORTS.map(|(name, _)| ty.get_export(engine, name).map(|e| e.ty));
    if exports.iter().all(Option::is_none) {
        return false;
    }
    let mut stateful = true;
    for ((name, signature), export) in HAND_OVER_EXPORTS.into_iter().zip(exports) {
        let typed = match &export {
            Some(ComponentItem::ComponentFunc(f)) if !f.async_() => {
                let params: Vec<_> = f.params().map(|(_, t)| t).collect();
                let results: Vec<_> = f.results().collect();
                match name {
                    "snapshot" => params.is_empty() && matches!(&results[..], [r] if bytes(r)),
                    _ => matches!(&params[..], [p] if bytes(p)) && results.is_empty(),
                }
            }
            _ => false,
        };
        if !typed {
            stateful = false;
            problems.push(match export {
                None => format!(
                    "missing export `{name}: {signature}`: a stateful listener (world \
                     stateful-listener) exports both `snapshot` and `restore`"
                ),
                Some(_) => format!(
                    "export `{name}` must be `{name}: {signature}` (world stateful-listener: \
                     the state hand-over at a hot swap)"
                ),
            });
        }
    }
    stateful
}

pub(crate) fn prepare(runtime: &Runtime, bytes: &[u8]) -> Result<Checked, Problems> {
    let fail = |p: String| Problems(vec![p]);
    if !bytes.starts_with(b"\0asm") {
        return Err(fail(format!(
            "not a wasm binary (expected the magic bytes \\0asm, found {:02x?})",
            &bytes[..bytes.len().min(4)]
        )));
    }
    if Parser::is_core_wasm(bytes) {
        return Err(fail(
            "a core wasm module, not a component: build for wasm32-wasip2 or wrap it with `wasm-tools component new`".into(),
        ));
    }
    if !Parser::is_component(bytes) {
        return Err(fail(
            "a wasm binary of an unknown layer or version, not a component".into(),
        ));
    }
    let (component, digest) = runtime
        .compile(bytes)
        .map_err(|e| fail(format!("invalid component: {e:#}")))?;

    let engine = runtime.engine();
    let ty = component.component_type();
    let mut problems = Vec::new();
    for name in REQUIRED_EXPORTS {
        match ty.get_export(engine, name).map(|e| e.ty) {
            None => problems.push(format!("missing export `{name}`")),
            Some(ComponentItem::ComponentFunc(_)) => {}
            Some(_) => problems.push(format!("export `{name}` is not a function")),
        }
    }
    let stateful = hand_over_exports(&ty, engine, &mut problems);
    let pre = match runtime.linker().instantiate_pre(&component) {
        Ok(pre) => Some(pre),
        Err(e) => {
            problems.push(format!("unknown import: {e:#}"));
            None
        }
    };
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    let Some(pre) = pre else {
        return Err(Problems(vec!["cannot pre-instantiate".into()]));
    };
    ListenerPre::new(pre)
        .map(|pre| Checked {
            digest,
            pre,
            stateful,
        })
        .map_err(|e| fail(format!("wrong signature: {e:#}")))
}

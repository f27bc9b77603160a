//! `kubelisten check`: is this file a component implementing the listener world, and if not,
//! exactly what is wrong.

use std::fmt;

use wasmtime::component::types::ComponentItem;
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
/// the host does not provide, a missing export or one with the wrong signature.
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
    let is_func = |name| {
        matches!(
            ty.get_export(engine, name).map(|e| e.ty),
            Some(ComponentItem::ComponentFunc(_))
        )
    };
    let stateful = is_func("snapshot") && is_func("restore");
    ListenerPre::new(pre)
        .map(|pre| Checked {
            digest,
            pre,
            stateful,
        })
        .map_err(|e| fail(format!("wrong signature: {e:#}")))
}

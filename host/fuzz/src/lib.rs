//! The bodies of the fuzz targets, shared by `fuzz_targets/*.rs` (libFuzzer) and
//! `tests/regressions.rs` (which replays every file under `regressions/<target>/`).
//! Each function must never panic, whatever the input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kubelisten::hotswap::source::{self, Entry};

/// The `kubelisten run --config` file: `kubelisten::config::parse` on arbitrary UTF-8 text.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        // Errors (with their line/key problem report) are fine; panics are not.
        if let Err(err) = kubelisten::config::parse(text, Path::new("fuzz.yaml")) {
            std::hint::black_box(err.to_string());
            std::hint::black_box(err.problem());
        }
    }
}

fn crd_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("kubelisten-fuzz-crd-{}.yaml", std::process::id()))
    })
}

/// The `--crd` file: `kubelisten::watch::target::read_crd` (its text parser `parse_crd` is
/// private, so the input goes through a per-process temporary file), then `watched_version`
/// and `api_resource` on an accepted CRD.
pub fn crd(data: &[u8]) {
    // read_crd reads the file as UTF-8; non-UTF-8 input only reaches the ReadFailed path.
    if std::str::from_utf8(data).is_err() {
        return;
    }
    let path = crd_path();
    std::fs::write(path, data).expect("write the temporary CRD file");
    match kubelisten::watch::target::read_crd(path) {
        Ok(crd) => {
            std::hint::black_box(kubelisten::watch::target::watched_version(&crd));
            std::hint::black_box(kubelisten::watch::target::api_resource(&crd));
        }
        Err(err) => {
            std::hint::black_box(err.to_string());
        }
    }
}

/// Watch-event lines: `replay::parse_events` on arbitrary text, `ObjectMeta::from_json` on the
/// same text, and kstatus (`ObjectStatus::of`) on any input that is valid JSON (and on its
/// `object` member, as for a watch event).
pub fn watch_events(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    std::hint::black_box(kubelisten::replay::parse_events(text).len());
    std::hint::black_box(kubelisten::event::ObjectMeta::from_json(text).is_ok());
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        std::hint::black_box(kubelisten::event::ObjectStatus::of(&value));
        if let Some(object) = value.get("object") {
            std::hint::black_box(kubelisten::event::ObjectStatus::of(object));
            std::hint::black_box(kubelisten::event::ObjectMeta::from_value(object).is_ok());
        }
    }
}

const SUFFIXES: [&str; 3] = [".wasm", ".wasm.gz", ".wasm.zst"];

/// The modules ConfigMap: `hotswap::source::parse` (listeners.yaml) and
/// `hotswap::source::module_bytes` (a binaryData value decoded by suffix).
///
/// Input layout: byte 0 selects the case. Bit 7 set: the rest is listeners.yaml text.
/// Otherwise `byte0 % 3` picks the module suffix (.wasm, .wasm.gz, .wasm.zst) and the rest is
/// the binaryData value.
pub fn configmap(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector & 0x80 != 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            match source::parse(text) {
                Ok(entries) => std::hint::black_box(entries.len()),
                Err(err) => std::hint::black_box(err.to_string().len()),
            };
        }
        return;
    }
    let module = format!(
        "listener{}",
        SUFFIXES[usize::from(selector) % SUFFIXES.len()]
    );
    let entry = Entry {
        name: "fuzz".into(),
        watch: None,
        module: module.clone(),
        mode: Default::default(),
        limits: Default::default(),
        capabilities: Default::default(),
    };
    let mut binary = BTreeMap::new();
    binary.insert(module, rest.to_vec());
    match source::module_bytes(&entry, &binary) {
        Ok(bytes) => std::hint::black_box(bytes.len()),
        Err(err) => std::hint::black_box(err.to_string().len()),
    };
}

//! The polyglot listeners of issue 9 (`guests/*-listener/`), offline: one guest per language
//! (Rust reference, Python, JavaScript, C, Go) implementing the same behaviour, exercised through
//! the `kubelisten` binary as a user runs it (`check`, then `replay` in both modes).
//!
//! Offline, the `cluster` import refuses every call (`forbidden-by-policy`): a listener must log
//! that and succeed, unless the object demands the status write (`kubelisten.dev/require-status`).
//!
//! The guests are built by `guests/build-polyglot.sh` (or `make guests-polyglot`), which installs
//! each toolchain from the registries; a missing guest fails its test with that command.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

/// (guest name, language name the guest reports in `status.handledBy` and its messages)
const GUESTS: [(&str, &str); 5] = [
    ("rust-listener", "rust"),
    ("python-listener", "python"),
    ("js-listener", "js"),
    ("c-listener", "c"),
    ("go-listener", "go"),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The built component; panics (never skips) with the build command when it is missing.
fn guest(name: &str) -> PathBuf {
    let path = repo().join("target/guests").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest {name} is not built (missing {}): run `guests/build-polyglot.sh {name}` \
         (or `make guests-polyglot` for all five); it installs the toolchain from the registries",
        path.display()
    );
    path
}

/// The sample events of the guides (`guests/polyglot-events.jsonl`).
fn sample_events() -> PathBuf {
    repo().join("guests/polyglot-events.jsonl")
}

/// The binary with the compiled-code cache on (its default directory, or `KUBELISTEN_CACHE_DIR`):
/// entries are keyed by the component's digest and the engine, so only the first run compiles.
/// That matters here: a debug build of the host compiles the Python and JavaScript components
/// (12-18 MB) with an unoptimized Cranelift, which takes minutes rather than 7-9 s.
fn kubelisten() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubelisten"));
    cmd.env_remove("KUBELISTEN_NO_CACHE")
        .env("RUST_LOG", "info")
        .args(["--log-format", "json"]);
    cmd
}

fn check(wasm: &Path) {
    let out = kubelisten().arg("check").arg(wasm).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("ok, implements kubelisten:listener/listener@0.1.0"),
        "check {} failed:\n{stdout}\n{}",
        wasm.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replays `events` through the one listener `wasm:mode`; returns the calls and stderr (logs).
fn replay(wasm: &Path, mode: &str, events: &Path, extra: &[&str]) -> (Vec<Value>, String) {
    let out: Output = kubelisten()
        .arg("replay")
        .arg("--listener")
        .arg(format!("{}:{mode}", wasm.display()))
        .args(["-o", "json", "--call-timeout-ms", "5000"])
        .args(extra)
        .arg(events)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay failed: {stderr}");
    let calls = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (calls, stderr)
}

fn call_at(calls: &[Value], line: u64) -> &Value {
    calls
        .iter()
        .find(|c| c["line"] == line)
        .unwrap_or_else(|| panic!("no call for line {line} in {calls:#?}"))
}

fn assert_outcome(calls: &[Value], line: u64, export: &str, outcome: &str) -> String {
    let call = call_at(calls, line);
    assert_eq!(call["export"], export, "line {line}: {call}");
    assert_eq!(call["outcome"], outcome, "line {line}: {call}");
    assert_eq!(
        call.get("trap").is_some(),
        outcome == "trap",
        "line {line}: {call}"
    );
    call["message"].as_str().unwrap_or_default().to_string()
}

/// The behaviour shared by every language, on the sample events file.
fn assert_sample_behaviour(lang: &str, mode: &str, calls: &[Value], logs: &str) {
    let ctx = format!("{lang} ({mode})");
    assert_eq!(calls.len(), 9, "{ctx}: {calls:#?}");
    // 1-2: create and update succeed; the refused status write is only logged.
    assert_outcome(calls, 1, "create", "ok");
    assert_outcome(calls, 2, "update", "ok");
    // 3: require-status turns the refused write into an error return (not a trap).
    let msg = assert_outcome(calls, 3, "create", "error");
    let refused = format!("{lang}: patch-status failed: forbidden-by-policy: ");
    assert!(msg.starts_with(&refused), "{ctx}: {msg}");
    // 4: fault=error is the error side of the result, with the language's message.
    let msg = assert_outcome(calls, 4, "create", "error");
    assert_eq!(msg, format!("{lang}: error requested"), "{ctx}");
    // 5: fault=trap traps; 6: the next event is served.
    assert_outcome(calls, 5, "create", "trap");
    if matches!(lang, "rust" | "go") {
        // A panic, recognised by its message on stderr (Go's `panic: ` line included).
        let call = call_at(calls, 5);
        assert_eq!(call["trap"], "panic", "{ctx}: {call}");
        let msg = call["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(&format!("{lang}: trap requested")),
            "{ctx}: {msg}"
        );
    }
    assert_outcome(calls, 6, "create", "ok");
    // 7: a cluster-scoped object; 8: the watch error; 9: delete.
    assert_outcome(calls, 7, "create", "ok");
    assert_outcome(calls, 8, "error", "ok");
    assert_outcome(calls, 9, "delete", "ok");

    // The guest's own log lines, through the `log` import.
    for expected in [
        format!("{lang}: create Greeter demo/plain rv=1001"),
        format!("{lang}: update Greeter demo/plain rv=1002"),
        format!("{lang}: create ClusterGreeter everywhere rv=1007"),
        format!("{lang}: delete Greeter demo/plain rv=1008"),
        format!("{lang}: watch error 410 Expired"),
        refused.clone(),
    ] {
        assert!(
            logs.contains(&expected),
            "{ctx}: no log line {expected:?} in\n{logs}"
        );
    }
}

fn object(
    name: &str,
    rv: u64,
    generation: u64,
    annotations: Value,
    status: Option<Value>,
) -> Value {
    let mut object = json!({
        "apiVersion": "demo.kubelisten.dev/v1",
        "kind": "Greeter",
        "metadata": {
            "name": name, "namespace": "demo", "uid": format!("uid-{name}"),
            "resourceVersion": rv.to_string(), "generation": generation,
            "annotations": annotations,
        },
        "spec": {"message": "x".repeat(64)},
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    object
}

fn write_events(dir: &Path, file: &str, events: &[Value]) -> PathBuf {
    let path = dir.join(file);
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// Our own status write comes back as an update: a guest must not patch again when the status
/// already records its language for the current generation (it would loop forever in a cluster).
/// With require-status set, "no call" shows as ok and "a call" as the offline refusal.
fn assert_status_guard(lang: &str, wasm: &Path, dir: &Path) {
    let required = json!({"kubelisten.dev/require-status": "true"});
    let events = [
        json!({"type": "ADDED", "object": object("guarded", 10, 3, required.clone(), None)}),
        // Status written by this language for generation 3: nothing to do.
        json!({"type": "MODIFIED", "object": object("guarded", 11, 3, required.clone(),
            Some(json!({"handledBy": lang, "observedResourceVersion": "10", "observedGeneration": 3})))}),
        // The spec changed (generation 4): record again.
        json!({"type": "MODIFIED", "object": object("guarded", 12, 4, required.clone(),
            Some(json!({"handledBy": lang, "observedResourceVersion": "11", "observedGeneration": 3})))}),
        // Handled by another language: record.
        json!({"type": "MODIFIED", "object": object("guarded", 13, 4, required.clone(),
            Some(json!({"handledBy": "cobol", "observedResourceVersion": "12", "observedGeneration": 4})))}),
    ];
    let path = write_events(dir, "guard.jsonl", &events);
    let (calls, _) = replay(wasm, "reference", &path, &[]);
    assert_outcome(&calls, 1, "create", "error");
    assert_outcome(&calls, 2, "update", "ok");
    assert_outcome(&calls, 3, "update", "error");
    assert_outcome(&calls, 4, "update", "error");
}

/// Many events through one reference instance: no trap, and (with `memory_mib`) no growth past a
/// small memory limit, which a leak of the event or of the error strings would reach.
fn assert_long_run(wasm: &Path, dir: &Path, count: u64, memory_mib: Option<&str>) {
    let events: Vec<Value> = (0..count)
        .map(|i| {
            let mut annotations = json!({"note": "n".repeat(256)});
            if i % 2 == 1 {
                annotations["kubelisten.dev/require-status"] = json!("true");
            }
            json!({"type": if i == 0 { "ADDED" } else { "MODIFIED" },
                   "object": object("busy", 1000 + i, i + 1, annotations, None)})
        })
        .collect();
    let path = write_events(dir, "long.jsonl", &events);
    let extra: Vec<&str> = match memory_mib {
        Some(mib) => vec!["--memory-mib", mib],
        None => vec![],
    };
    let (calls, logs) = replay(wasm, "reference", &path, &extra);
    assert_eq!(calls.len() as u64, count);
    let traps: Vec<&Value> = calls.iter().filter(|c| c["outcome"] == "trap").collect();
    assert!(
        traps.is_empty(),
        "{} traps, first {}\n{}",
        traps.len(),
        traps[0],
        tail(&logs)
    );
    let errors = calls.iter().filter(|c| c["outcome"] == "error").count() as u64;
    assert_eq!(
        errors,
        count / 2,
        "every require-status event is an error, every other one ok"
    );
}

fn tail(text: &str) -> &str {
    &text[text.len().saturating_sub(4000)..]
}

fn run_language(name: &str, lang: &str) {
    let wasm = guest(name);
    let dir = tempfile::tempdir().unwrap();
    check(&wasm);
    for mode in ["classname", "reference"] {
        let (calls, logs) = replay(&wasm, mode, &sample_events(), &[]);
        assert_sample_behaviour(lang, mode, &calls, &logs);
    }
    assert_status_guard(lang, &wasm, dir.path());
}

#[test]
fn rust_listener() {
    run_language(GUESTS[0].0, GUESTS[0].1);
}

#[test]
fn python_listener() {
    run_language(GUESTS[1].0, GUESTS[1].1);
}

#[test]
fn js_listener() {
    run_language(GUESTS[2].0, GUESTS[2].1);
}

#[test]
fn c_listener() {
    run_language(GUESTS[3].0, GUESTS[3].1);
    // Memory ownership per wit-bindgen's C conventions: the listener frees every exported event
    // and hands malloc'd error strings to cabi_post. 3000 events of ~1 KiB in 1 MiB: a leak of
    // either runs out of memory (checked: without the free of the event, memory traps).
    let wasm = guest("c-listener");
    let dir = tempfile::tempdir().unwrap();
    assert_long_run(&wasm, dir.path(), 3000, Some("1"));
}

#[test]
fn go_listener() {
    run_language(GUESTS[4].0, GUESTS[4].1);
    // A Go GC started inside cabi_realloc (the host writing an event into guest memory) calls
    // WASI imports, which the component model forbids there ("cannot leave component instance",
    // about every 800 events before the listener moved GC between events).
    let wasm = guest("go-listener");
    let dir = tempfile::tempdir().unwrap();
    assert_long_run(&wasm, dir.path(), 2500, None);
}

/// Every guest the test knows has a folder with a build script and a guide.
#[test]
fn every_guest_has_a_build_script_and_a_guide() {
    for (name, _) in GUESTS {
        let dir = repo().join("guests").join(name);
        if name != "rust-listener" {
            assert!(dir.join("build.sh").exists(), "{name}: no build.sh");
        }
        assert!(dir.join("README.md").exists(), "{name}: no README.md");
    }
}

/// The compiler process's memory limit: the JavaScript guest (about 448 MiB to compile) is
/// rejected under a 128 MiB limit, with the limit named, and the binary exits as for any bad
/// module; the guest compiles under the default limit (the other tests).
#[test]
fn a_module_whose_compiling_needs_more_than_the_compiler_memory_limit_is_rejected() {
    let out = Command::new(env!("CARGO_BIN_EXE_kubelisten"))
        .args(["--no-cache", "--compile-memory-mib", "128", "check"])
        .arg(guest("js-listener"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("the compiler process failed")
            && text.contains("the compiler's memory limit is 128 MiB"),
        "{text}"
    );
}

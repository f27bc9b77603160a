//! `kubelisten replay` and `kubelisten check` as a user runs them: the binary, a recorded events
//! file with a malformed line, JSON output and exit codes. Needs the guests (`make guests`).

mod support;

use std::process::Command;

use serde_json::Value;
use support::guest;

fn kubelisten() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubelisten"));
    cmd.env("KUBELISTEN_NO_CACHE", "true")
        .env("RUST_LOG", "warn");
    cmd
}

fn demo_events() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo/events.jsonl")
}

fn replay(extra: &[&str]) -> std::process::Output {
    kubelisten()
        .arg("replay")
        .arg("--listener")
        .arg(format!("{}:classname", guest("rust-logger").display()))
        .arg("--listener")
        .arg(format!("{}:reference", guest("rust-metrics").display()))
        .arg("--listener")
        .arg(guest("faulty"))
        // Generous: the memory fault must fill its limit before the time limit, even while the
        // other tests compile their modules.
        .args(["--call-timeout-ms", "1000"])
        .args(extra)
        .arg(demo_events())
        .output()
        .unwrap()
}

#[test]
fn replay_json_reports_every_call_and_the_malformed_line() {
    let out = replay(&["-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let malformed_line = std::fs::read_to_string(demo_events())
        .unwrap()
        .lines()
        .position(|l| serde_json::from_str::<Value>(l).is_err())
        .unwrap()
        + 1;
    assert!(
        stderr.contains(&format!("events.jsonl:{malformed_line}: malformed event")),
        "{stderr}"
    );
    assert!(stderr.contains("malformed=1"), "{stderr}");

    let calls: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for call in &calls {
        for key in [
            "line",
            "type",
            "object",
            "listener",
            "mode",
            "export",
            "outcome",
            "message",
            "duration_us",
        ] {
            assert!(call.get(key).is_some(), "missing {key} in {call}");
        }
        assert_eq!(
            call.get("trap").is_some(),
            call["outcome"] == "trap",
            "{call}"
        );
    }
    let traps: Vec<&str> = calls.iter().filter_map(|c| c["trap"].as_str()).collect();
    for kind in ["panic", "deadline", "memory", "stack-overflow", "oob"] {
        assert!(traps.contains(&kind), "{kind} missing in {traps:?}");
    }
    // The call after a trapped one is served normally.
    let after_panic = calls
        .iter()
        .skip_while(|c| c["trap"] != "panic")
        .find(|c| c["listener"] == "faulty" && c["export"] != "rollback" && c["trap"].is_null())
        .unwrap();
    assert_eq!(after_panic["outcome"], "ok");
    // A failure mid-chain rolls back the listeners before it, in reverse order.
    let error_line = calls.iter().find(|c| c["outcome"] == "error").unwrap()["line"].clone();
    let chain: Vec<(String, String)> = calls
        .iter()
        .filter(|c| c["line"] == error_line)
        .map(|c| {
            (
                c["listener"].as_str().unwrap().into(),
                c["export"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        chain,
        [
            ("rust-logger", "create"),
            ("rust-metrics", "create"),
            ("faulty", "create"),
            ("rust-metrics", "rollback"),
            ("rust-logger", "rollback")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
}

#[test]
fn fail_on_error_makes_failures_exit_non_zero() {
    let out = replay(&["--fail-on-error"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("summary: events="), "{stdout}");

    // A clean run with --fail-on-error exits 0.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.jsonl");
    std::fs::write(
        &file,
        r#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"d","uid":"1","resourceVersion":"5"}}}"#,
    )
    .unwrap();
    let out = kubelisten()
        .args(["replay", "--fail-on-error", "--listener"])
        .arg(guest("rust-logger"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn replay_never_backs_a_listener_off() {
    // More consecutive traps than the crash-loop threshold (5): each event still gets its call.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traps.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| {
            format!(
                r#"{{"type":"ADDED","object":{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"t{i}","namespace":"d","uid":"{i}","resourceVersion":"{i}","annotations":{{"kubelisten.dev/fault":"panic"}}}}}}}}"#
            )
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = kubelisten()
        .args(["replay", "-o", "json", "--listener"])
        .arg(guest("faulty"))
        .arg(&file)
        .output()
        .unwrap();
    let outcomes: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["outcome"].to_string())
        .collect();
    assert_eq!(
        outcomes,
        vec!["\"trap\""; 8],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_exit_codes() {
    let ok = kubelisten()
        .arg("check")
        .arg(guest("rust-metrics"))
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok, implements"));
    let bad = kubelisten()
        .arg("check")
        .arg(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("not a wasm binary"));
}

/// The binary compiles in a `kubelisten compile-worker` child by default (keeping the compiler's
/// memory out of the long-running process), in its own process with `--compile-in-process`.
#[test]
fn the_binary_compiles_in_a_child_process_unless_told_otherwise() {
    for (flag, expected) in [
        (None, "compiled by the compiler process"),
        (Some("--compile-in-process"), "compiled in this process"),
    ] {
        let out = kubelisten()
            .env("RUST_LOG", "kubelisten=debug")
            .args(flag)
            .arg("check")
            .arg(guest("noop"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{flag:?}: {stderr}");
        assert!(stderr.contains(expected), "{flag:?}: {stderr}");
        assert_eq!(
            stderr.matches("compiled ").count(),
            1,
            "{flag:?}: one way only: {stderr}"
        );
    }
}

/// `kubelisten compile-worker` as the host runs it: compiled code on stdout (exit 0); a module
/// that does not compile exits 65 (`EX_DATAERR`, the host rejects the module) with the reason;
/// a worker that cannot work (its parent gone, an unknown argument) exits 70, which the host
/// takes for "compile in this process".
#[test]
fn the_compile_worker_tells_a_bad_module_from_a_worker_that_cannot_work() {
    use std::io::Write;
    use std::process::Stdio;
    let run = |args: &[&str], input: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kubelisten"))
            .arg("compile-worker")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The worker may exit before reading (parent check): a broken pipe is expected then.
        let _ = child.stdin.take().unwrap().write_all(input);
        child.wait_with_output().unwrap()
    };
    let module = std::fs::read(guest("noop")).unwrap();
    let me = std::process::id().to_string();
    let good = run(&["--memory-bytes", "1073741824", "--parent", &me], &module);
    assert_eq!(good.status.code(), Some(0));
    assert!(
        good.stdout.starts_with(b"\x7fELF"),
        "compiled code is an ELF image"
    );

    let broken = run(&[], b"\0asm\x0d\0\x01\0garbage");
    assert_eq!(broken.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.len() > 8,
        "{stderr}"
    );

    let not_my_parent = u32::MAX.to_string();
    for args in [
        &["--parent", not_my_parent.as_str()][..],
        &["--bogus"][..],
        &["--memory-bytes", "lots"][..],
    ] {
        let out = run(args, &module);
        assert_eq!(out.status.code(), Some(70), "{args:?}");
        assert!(out.stdout.is_empty());
    }
}

/// The compile worker's confinement: first in line for the OOM killer (`oom_score_adj` 1000),
/// and killed when the thread that started it ends (`PR_SET_PDEATHSIG`; the host's compiling
/// thread waits for the worker, so that is when the host itself is gone).
#[test]
fn the_compile_worker_is_first_for_the_oom_killer_and_dies_with_its_parent() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let me = std::process::id().to_string();
    let mut child = std::thread::spawn(move || {
        // Its stdin stays open (held by the handle), so it waits for the module.
        let child = Command::new(env!("CARGO_BIN_EXE_kubelisten"))
            .args(["compile-worker", "--parent", &me])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let adj = format!("/proc/{}/oom_score_adj", child.id());
        let until = Instant::now() + Duration::from_secs(30);
        // Written right after the death signal is set up.
        while std::fs::read_to_string(&adj).unwrap_or_default().trim() != "1000" {
            assert!(Instant::now() < until, "oom_score_adj never became 1000");
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    })
    .join()
    .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the worker outlived the thread that started it");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status}");
}

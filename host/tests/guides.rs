//! The guides `docs/guides/<lang>.md` (issue 9, "Author experience"), run as written: every
//! ```` ```sh ```` block of a guide runs in order through `bash -c`, in a fresh temporary
//! directory, with the directory of the `kubelisten` binary under test first on `PATH` — so the
//! guide's `kubelisten new`, `build.sh`, `kubelisten check` and `kubelisten replay` lines run
//! verbatim and cannot rot.
//!
//! A block whose first line is `# not run by the test suite: <why>` (installing tools, deploying
//! to a cluster) is only syntax-checked (`bash -n`). The files the deploy step uses
//! (`listeners.yaml`, `crd.yaml`) are parsed with kubelisten's own parsers instead.
//!
//! While the binary has no `new` subcommand yet, a `kubelisten new ...` line is parsed with the
//! same clap arguments ([`kubelisten::scaffold::NewArgs`]) and run in-process
//! ([`kubelisten::scaffold::run`]); the rest of its block still runs through bash.
//!
//! The builds use the toolchains each guide names (cached under `~/.cache/kubelisten/tools`
//! after the first build); Rust builds share `target/guides-cargo` so only the first is cold.
//! The guides run one at a time (two shared cores).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use clap::Parser;
use kubelisten::scaffold::NewArgs;

/// The marker of a block that is only syntax-checked.
const NOT_RUN: &str = "# not run by the test suite";

/// The listener every guide creates.
const NAME: &str = "my-listener";

static SERIAL: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One ```` ```sh ```` block: its first line number in the guide and its text.
struct Block {
    line: usize,
    text: String,
}

impl Block {
    fn runs(&self) -> bool {
        !self.text.trim_start().starts_with(NOT_RUN)
    }
}

fn sh_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start();
        match &mut current {
            None if fence.starts_with("```sh") => {
                current = Some(Block {
                    line: i + 2,
                    text: String::new(),
                })
            }
            Some(_) if fence.starts_with("```") => blocks.push(current.take().unwrap()),
            Some(block) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            None => {}
        }
    }
    assert!(current.is_none(), "unterminated ```sh block");
    blocks
}

/// Whether the binary under test has the `new` subcommand.
fn binary_has_new() -> bool {
    Command::new(env!("CARGO_BIN_EXE_kubelisten"))
        .args(["new", "--help"])
        .output()
        .is_ok_and(|out| out.status.success())
}

#[derive(Parser)]
#[command(name = "kubelisten")]
enum NewCli {
    New(NewArgs),
}

/// Runs a `kubelisten new ...` line in-process, relative to `cwd`.
fn scaffold_in_process(line: &str, cwd: &Path) -> String {
    let words: Vec<&str> = line
        .split_whitespace()
        .take_while(|w| !w.starts_with('#'))
        .collect();
    let NewCli::New(mut args) = NewCli::try_parse_from(&words)
        .unwrap_or_else(|e| panic!("the guide's `{line}` does not parse: {e}"));
    args.dir = cwd.join(&args.dir);
    kubelisten::scaffold::run(args).unwrap();
    format!("(in-process) {line}\n")
}

/// Runs `script` with bash in `cwd`; returns stdout + stderr, panics with them on failure.
fn bash(script: &str, cwd: &Path, guide: &str, line: usize) -> String {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kubelisten"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(cwd)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", repo().join("target/guides-cargo"))
        .env("RUST_LOG", "info")
        .env_remove("KUBELISTEN_NO_CACHE")
        .env_remove("KUBELISTEN_LISTENERS")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{guide}:{line}: the block failed ({}):\n{script}\n--- output ---\n{text}",
        out.status
    );
    text
}

fn syntax_check(script: &str, guide: &str, line: usize) {
    let out = Command::new("bash")
        .arg("-n")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{guide}:{line}: the (not run) block is not valid bash:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_guide(lang: &str, module_key: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let guide = format!("docs/guides/{lang}.md");
    let markdown = std::fs::read_to_string(repo().join(&guide))
        .unwrap_or_else(|e| panic!("reading {guide}: {e}"));
    let blocks = sh_blocks(&markdown);

    // The steps the issue asks every guide to show, each in a block the test runs.
    let runnable: String = blocks
        .iter()
        .filter(|b| b.runs())
        .map(|b| b.text.as_str())
        .collect();
    for step in [
        format!("kubelisten new --lang {lang} {NAME}"),
        format!("{NAME}/build.sh"),
        format!("kubelisten check {NAME}/{NAME}.wasm"),
        format!("kubelisten replay --listener {NAME}/{NAME}.wasm {NAME}/events.jsonl"),
    ] {
        assert!(
            runnable.lines().any(|l| l.trim_start().starts_with(&step)),
            "{guide}: no executed ```sh line starts with `{step}`"
        );
    }
    assert!(
        blocks
            .iter()
            .any(|b| !b.runs() && b.text.contains("kubectl") && b.text.contains("listeners.yaml")),
        "{guide}: no deploy step (kubectl with the modules ConfigMap's listeners.yaml)"
    );

    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let in_process_new = !binary_has_new();
    let mut output = String::new();
    for block in &blocks {
        if !block.runs() {
            syntax_check(&block.text, &guide, block.line);
            continue;
        }
        let mut script = String::new();
        for line in block.text.lines() {
            if in_process_new && line.trim_start().starts_with("kubelisten new ") {
                // Run what came before first, in order.
                if !script.trim().is_empty() {
                    output.push_str(&bash(&script, cwd, &guide, block.line));
                }
                script.clear();
                output.push_str(&scaffold_in_process(line.trim(), cwd));
            } else {
                script.push_str(line);
                script.push('\n');
            }
        }
        if !script.trim().is_empty() {
            output.push_str(&bash(&script, cwd, &guide, block.line));
        }
    }

    // Shown with `--nocapture`.
    println!("==== {guide} ====\n{output}");

    // What the steps must have produced.
    let folder = cwd.join(NAME);
    let wasm = folder.join(format!("{NAME}.wasm"));
    assert!(
        wasm.is_file(),
        "{guide}: no {} after the build",
        wasm.display()
    );
    assert!(
        output.contains("ok, implements kubelisten:listener/listener@0.1.0"),
        "{guide}: check did not pass:\n{output}"
    );
    assert!(
        output.contains("summary: events=4 calls=4 [ok=4]"),
        "{guide}: replay did not handle the 4 sample events:\n{output}"
    );
    for log in [
        format!("{lang}: create Widget default/first rv=1001"),
        format!("{lang}: update Widget default/first rv=1002"),
        format!("{lang}: delete Widget default/first rv=1004"),
        format!("{lang}: patch-status failed: forbidden-by-policy"),
    ] {
        assert!(
            output.contains(&log),
            "{guide}: the listener did not log `{log}`:\n{output}"
        );
    }

    // The deploy step is not run; the files it applies are checked here.
    let listeners = std::fs::read_to_string(folder.join("listeners.yaml")).unwrap();
    let entries = kubelisten::hotswap::source::parse(&listeners).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, NAME);
    assert_eq!(entries[0].module, module_key);
    assert!(
        markdown.contains(module_key),
        "{guide}: the deploy step does not mention the module {module_key}"
    );
    kubelisten::watch::target::read_crd(&folder.join("crd.yaml")).unwrap();
    check_deploy_memory(lang, &markdown, entries[0].limits.memory_bytes);
    // ... and the listener runs within that memory limit (the guide's replay uses the default).
    let memory_mib = (entries[0].limits.memory_bytes >> 20).to_string();
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_kubelisten"))
        .args(["replay", "--memory-mib", &memory_mib, "--listener"])
        .arg(&wasm)
        .arg(folder.join("events.jsonl"))
        .current_dir(cwd)
        .output()
        .unwrap();
    let replayed = format!(
        "{}{}",
        String::from_utf8_lossy(&replay.stdout),
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(
        replayed.contains("summary: events=4 calls=4 [ok=4]"),
        "{guide}: the listener does not run in its listeners.yaml's {memory_mib} MiB:\n{replayed}"
    );
    // A binaryData module must fit in a ConfigMap (1 MiB, listeners.yaml included).
    if !module_key.starts_with('/') {
        let size = std::fs::metadata(folder.join(module_key))
            .unwrap_or_else(|e| panic!("{guide}: the steps made no {module_key}: {e}"))
            .len();
        assert!(
            size < 900 << 10,
            "{guide}: {module_key} is {size} bytes, too large for a ConfigMap"
        );
    }
}

/// The deploy step runs the listener on deploy/'s Deployment (4 workers, a 256 MiB compiler,
/// a 512Mi container) unless the guide raises the compiler's limit
/// (`KUBELISTEN_COMPILE_MEMORY_MIB=N`) and the container's (`--limits=memory=NMi`): the
/// compile must fit (Python and JavaScript modules need a 448 MiB data limit, BENCHMARKS.md
/// "Compiler process memory"), and deploy/README.md's sizing rule must hold: ~40 MiB host +
/// (workers + 1) x the listener's memory + one compile within the container's limit.
fn check_deploy_memory(guide: &str, markdown: &str, memory_bytes: usize) {
    let after = |prefix: &str| {
        markdown.split_once(prefix).map(|(_, rest)| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u64>()
                .unwrap()
        })
    };
    let compile_mib = after("KUBELISTEN_COMPILE_MEMORY_MIB=").unwrap_or(256);
    let limit_mib = after("--limits=memory=").unwrap_or(512);
    let needs_mib = if matches!(guide, "python" | "js") {
        448
    } else {
        64
    };
    assert!(
        compile_mib >= needs_mib,
        "{guide}: the deploy step leaves the compiler {compile_mib} MiB; the module needs {needs_mib}"
    );
    let memory_mib = u64::try_from(memory_bytes >> 20).unwrap();
    let needed_mib = 40 + 5 * memory_mib + compile_mib;
    assert!(
        needed_mib <= limit_mib,
        "{guide}: {needed_mib} MiB needed (40 host + 5 x {memory_mib} instances + {compile_mib} compile) > {limit_mib} MiB"
    );
}

#[test]
fn guide_rust() {
    run_guide("rust", "my-listener.wasm");
}

#[test]
fn guide_python() {
    run_guide("python", "/modules/my-listener.wasm");
}

#[test]
fn guide_js() {
    run_guide("js", "/modules/my-listener.wasm");
}

#[test]
fn guide_c() {
    run_guide("c", "my-listener.wasm");
}

#[test]
fn guide_go() {
    run_guide("go", "my-listener.wasm.gz");
}

/// A C or Go build without the kubelisten repository fails with a clear message.
#[test]
fn build_without_the_repository_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    for lang in [
        kubelisten::scaffold::Lang::C,
        kubelisten::scaffold::Lang::Go,
    ] {
        let folder =
            kubelisten::scaffold::new_listener(lang, &format!("x-{lang}"), tmp.path()).unwrap();
        let out = Command::new(folder.join("build.sh"))
            .env("KUBELISTEN_REPO", tmp.path().join("no-such-repo"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{lang}: built without the repository"
        );
        assert!(
            stderr.contains("no kubelisten repository at") && stderr.contains("KUBELISTEN_REPO"),
            "{lang}: unclear message: {stderr}"
        );
    }
}

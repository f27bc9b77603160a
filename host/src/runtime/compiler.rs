//! Compiling components in a short-lived child process (`kubelisten compile-worker`).
//!
//! The host's own process never runs the compiler when [`RuntimeConfig::compiler`] is set (the
//! `kubelisten` binary sets it to itself): the child reads the component on stdin, writes the
//! engine's precompiled artifact on stdout and exits, and the host loads that artifact as it
//! loads a compiled-code cache entry. Two reasons:
//!
//! - **Memory.** Cranelift's working memory and the pages of its code stay in the child. An idle
//!   host whose modules were compiled on a cold code cache (a pod's first start) kept about
//!   10 MiB more RSS than one that loaded them from the cache (35 against 25 MiB for three Rust
//!   listeners), even after returning the allocator's free memory.
//! - **Containment.** A module that makes the compiler crash or blow up its memory kills the
//!   child, not the host, and one that keeps it busy past [`RuntimeConfig::compile_timeout`]
//!   has the child killed; either way the module is rejected like any module that does not
//!   compile.
//!
//! When the child cannot be started (no such program, no `fork`/`exec` allowed) or its artifact
//! does not load (another kubelisten build replaced the executable on disk), the module is
//! compiled in this process instead, with a warning.
//!
//! [`RuntimeConfig::compiler`]: super::RuntimeConfig::compiler
//! [`RuntimeConfig::compile_timeout`]: super::RuntimeConfig::compile_timeout

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use wasmtime::Engine;

/// The hidden subcommand of the `kubelisten` binary that runs [`serve`].
pub const WORKER_SUBCOMMAND: &str = "compile-worker";

/// The most stderr of a failed child kept for its error message (its end).
const STDERR_KEPT: usize = 16 << 10;

/// Why the child did not produce an artifact.
#[derive(Debug)]
pub(crate) enum ChildFailure {
    /// The child could not be started or talked to: compile in this process instead.
    Unavailable(std::io::Error),
    /// The compiler refused the module, or died on it: the module does not compile.
    Rejected(String),
}

/// The child's side: reads a component from `input`, writes `engine`'s precompiled artifact of
/// it to `output`.
///
/// # Errors
/// When the input cannot be read, the component does not compile or the output cannot be
/// written.
pub fn serve(engine: &Engine, mut input: impl Read, mut output: impl Write) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot read the component from stdin: {e}"))?;
    let compiled = engine
        .precompile_component(&bytes)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    output
        .write_all(&compiled)
        .and_then(|()| output.flush())
        .map_err(|e| anyhow::anyhow!("cannot write the compiled component to stdout: {e}"))
}

/// The child's process: [`serve`] on stdin and stdout with the engine settings every
/// [`Runtime`](super::Runtime) uses (the pooling allocator changes no compiled code).
///
/// # Errors
/// As [`serve`], or when the engine cannot be built.
pub fn run_worker() -> anyhow::Result<()> {
    let engine = Engine::new(&super::engine::base_config())
        .map_err(|e| anyhow::anyhow!("cannot create the wasm engine: {e:#}"))?;
    serve(&engine, std::io::stdin().lock(), std::io::stdout().lock())
}

/// The host's side: runs `program compile-worker` on `bytes` and returns its artifact (not yet
/// checked: `Component::deserialize` checks that it fits the engine). A child still running
/// after `timeout` is killed and the module rejected.
pub(crate) fn compile_in_child(
    program: &Path,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ChildFailure> {
    let mut child = Command::new(program)
        .arg(WORKER_SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Only the compiler's own warnings: the child's log lines become the error message.
        .env("RUST_LOG", "warn")
        .spawn()
        .map_err(ChildFailure::Unavailable)?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ChildFailure::Unavailable(std::io::Error::other(
            "the compiler process's pipes are missing",
        )));
    };
    // The input is written, and the output and errors read, each on a thread of its own, so
    // that a child writing before it has read everything cannot block. A child that exits early
    // closes its stdin: the write error is of no interest then, its exit status tells.
    let (done, output_read) = mpsc::channel();
    let (status, output, errors, timed_out) = std::thread::scope(|scope| {
        scope.spawn(move || {
            let _ = stdin.write_all(bytes);
        });
        let output = scope.spawn(move || {
            let mut output = Vec::new();
            let read = stdout.read_to_end(&mut output).map(|_| output);
            let _ = done.send(());
            read
        });
        let errors = scope.spawn(move || {
            let mut errors = Vec::new();
            let _ = stderr.read_to_end(&mut errors);
            errors
        });
        // The child closes its stdout when it exits (or dies).
        let timed_out = matches!(
            output_read.recv_timeout(timeout),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        if timed_out {
            // Not yet waited for, so the process is still ours to kill (no pid reuse).
            let _ = child.kill();
        }
        let status = child.wait();
        let output = output
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the compiler output reader panicked")));
        (status, output, errors.join().unwrap_or_default(), timed_out)
    });
    let status = status.map_err(ChildFailure::Unavailable)?;
    if timed_out {
        return Err(ChildFailure::Rejected(format!(
            "the compiler process took longer than {}s and was stopped",
            timeout.as_secs_f64()
        )));
    }
    let output = output.map_err(ChildFailure::Unavailable)?;
    if status.success() {
        return Ok(output);
    }
    // `kubelisten` ends a failed command with `error: <message>`; warnings may come before it.
    let errors = &errors[errors.len().saturating_sub(STDERR_KEPT)..];
    let stderr = String::from_utf8_lossy(errors);
    let message = match stderr.rfind("\nerror: ") {
        Some(at) => &stderr[at + "\nerror: ".len()..],
        None => stderr.strip_prefix("error: ").unwrap_or(&stderr),
    }
    .trim();
    Err(ChildFailure::Rejected(if message.is_empty() {
        format!("the compiler process failed ({status})")
    } else if status.code().is_some() {
        message.to_string()
    } else {
        // Killed by a signal (say by the kernel's OOM killer): say so beside what it printed.
        format!("the compiler process failed ({status}): {message}")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_writes_a_component_artifact_or_fails_on_bad_input() {
        let engine = Engine::new(&super::super::engine::base_config()).unwrap();
        let component = wat::parse_str("(component (core module (func (export \"f\"))))").unwrap();
        let mut out = Vec::new();
        serve(&engine, component.as_slice(), &mut out).unwrap();
        assert_eq!(
            Engine::detect_precompiled(&out),
            Some(wasmtime::Precompiled::Component)
        );
        let mut out = Vec::new();
        let err = serve(&engine, &b"\0asm garbage"[..], &mut out).unwrap_err();
        assert!(out.is_empty());
        assert!(!format!("{err:#}").is_empty());
    }
}

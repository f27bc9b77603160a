//! Compiling components in a short-lived child process (`kubelisten compile-worker`).
//!
//! When [`RuntimeConfig::compiler`] is set (the `kubelisten` binary sets it to its own
//! executable), the host does not run the compiler itself: a child reads the component on
//! stdin, writes the engine's precompiled artifact on stdout and exits, and the host loads that
//! artifact as it loads a compiled-code cache entry. Two reasons:
//!
//! - **Memory.** Cranelift's working memory and the pages of its code stay in the child. An idle
//!   host whose modules were compiled on a cold code cache (a pod's first start) kept about
//!   9 MiB more RSS than one that loaded them from the cache (33 against 24 MiB for three Rust
//!   listeners), even after returning the allocator's free memory.
//! - **Containment.** The child runs with a data-size limit ([`RuntimeConfig::compile_memory`]:
//!   an allocation beyond it fails inside the child) and the highest OOM score (the kernel's
//!   first choice when memory runs out), and is killed after
//!   [`RuntimeConfig::compile_timeout`]. A module that makes the compiler fail, panic, exhaust
//!   that limit or spin is rejected like any module that does not compile; the host goes on.
//!   (Where the container's cgroup is OOM-killed as a group, as the kubelet sets up on cgroup
//!   v2 since Kubernetes 1.28, only the data-size limit keeps the host safe: keep it below the
//!   pod's memory limit minus the host's own use.)
//!
//! The child is the host's own executable (`/proc/self/exe`, the same build even if the file
//! was replaced), in a process group of its own (a terminal's Ctrl-C is the host's to handle),
//! and dies with the host (`PR_SET_PDEATHSIG`). It inherits the host's environment, which must
//! stay so: `WASMTIME_BACKTRACE_DETAILS` is part of the engine settings the artifact is
//! checked against.
//!
//! When the child cannot be started (no such program, no `fork`/`exec` allowed), fails for a
//! reason that is not the module (an exit status other than [`REJECTED`] or a panic's), or
//! writes something that is not compiled code of the host's engine (not a wasmtime component
//! artifact, or one of another wasmtime version or engine settings: a compiler program that is
//! not this build), the module is compiled in this process instead, with a warning.
//!
//! The child's engine has no pooling allocator (it changes no compiled code), so it compiles
//! modules that the host's instance pool cannot hold: more than one memory or table in a core
//! module, more than 50 core instances, 10 memories or 20 tables in the component, and so on
//! (wasmtime checks that when the code is loaded, not when it is compiled). Such an artifact is
//! this engine's code, refused by the pool: the module is rejected with the pool's reason, its
//! cache entry removed, and it is not compiled again in this process.
//!
//! [`RuntimeConfig::compiler`]: super::RuntimeConfig::compiler
//! [`RuntimeConfig::compile_timeout`]: super::RuntimeConfig::compile_timeout
//! [`RuntimeConfig::compile_memory`]: super::RuntimeConfig::compile_memory

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wasmtime::Engine;

/// The subcommand of the `kubelisten` binary that runs the worker ([`run_worker_if_asked`]).
pub const WORKER_SUBCOMMAND: &str = "compile-worker";

/// The worker's exit status when the module does not compile (`EX_DATAERR`).
pub const REJECTED: u8 = 65;

/// The worker's exit status when it cannot work (`EX_SOFTWARE`): the engine cannot be built,
/// its parent is gone.
const UNABLE: u8 = 70;

/// The worker's exit status when stdin or stdout fails (`EX_IOERR`).
const IO_FAILED: u8 = 74;

/// The exit status of a Rust panic: in the worker, the compiler panicked on the module.
const PANICKED: i32 = 101;

/// The most stderr of a failed child kept for its error message (its end).
const STDERR_KEPT: usize = 16 << 10;

/// The least data the compiler process is allowed ([`RuntimeConfig::compile_memory`] below it
/// is raised to it): its engine and threads alone take a few MiB.
///
/// [`RuntimeConfig::compile_memory`]: super::RuntimeConfig::compile_memory
pub const MIN_MEMORY: u64 = 64 << 20;

/// Reads `input` to its end, keeping the last [`STDERR_KEPT`] bytes.
fn tail(input: &mut impl Read) -> Vec<u8> {
    let mut kept = std::collections::VecDeque::with_capacity(STDERR_KEPT);
    let mut chunk = [0u8; 4096];
    while let Ok(n) = input.read(&mut chunk) {
        if n == 0 {
            break;
        }
        kept.extend(&chunk[..n]);
        let excess = kept.len().saturating_sub(STDERR_KEPT);
        kept.drain(..excess);
    }
    kept.into()
}

/// The compiler program of the running executable: `/proc/self/exe` where there is one (a new
/// file at the executable's path, say an upgrade, is not this build), else its path.
pub fn own_executable() -> Option<PathBuf> {
    let proc_self = PathBuf::from("/proc/self/exe");
    if proc_self.exists() {
        return Some(proc_self);
    }
    std::env::current_exe().ok()
}

/// Why the child did not produce an artifact.
#[derive(Debug)]
pub(crate) enum ChildFailure {
    /// The child could not be started, talked to, or do its work: compile in this process.
    Unavailable(std::io::Error),
    /// The compiler refused the module, or died on it: the module does not compile.
    Rejected(String),
}

impl From<std::io::Error> for ChildFailure {
    fn from(err: std::io::Error) -> Self {
        Self::Unavailable(err)
    }
}

/// The child's side: reads a component from `input`, writes `engine`'s precompiled artifact of
/// it to `output`.
///
/// # Errors
/// [`WorkerError::Rejected`] when the component does not compile, [`WorkerError::Io`] when the
/// input cannot be read or the output written.
pub fn serve(
    engine: &Engine,
    mut input: impl Read,
    mut output: impl Write,
) -> Result<(), WorkerError> {
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .map_err(|e| WorkerError::Io(format!("cannot read the component from stdin: {e}")))?;
    let compiled = engine
        .precompile_component(&bytes)
        .map_err(|e| WorkerError::Rejected(format!("{e:#}")))?;
    output
        .write_all(&compiled)
        .and_then(|()| output.flush())
        .map_err(|e| {
            WorkerError::Io(format!(
                "cannot write the compiled component to stdout: {e}"
            ))
        })
}

/// What went wrong in the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The module does not compile.
    #[error("{0}")]
    Rejected(String),
    /// Reading the module or writing the artifact failed.
    #[error("{0}")]
    Io(String),
}

/// The worker, when the command line asks for it (`kubelisten compile-worker [--memory-bytes N]
/// [--parent PID]`, before any other parsing: neither the host's flags nor their environment
/// variables concern it): sets its limits, then [`serve`]s stdin to stdout with the engine
/// settings every [`Runtime`](super::Runtime) uses (the pooling allocator changes no compiled
/// code). Returns its exit status, or `None` for any other command line.
pub fn run_worker_if_asked() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != WORKER_SUBCOMMAND {
        return None;
    }
    let usage = |what: &str| {
        eprintln!("error: {what} (usage: kubelisten {WORKER_SUBCOMMAND} [--memory-bytes N] [--parent PID])");
        Some(ExitCode::from(UNABLE))
    };
    let (mut memory, mut parent) = (None, None);
    let number = |value: Option<OsString>| value?.to_str()?.parse::<u64>().ok();
    while let Some(arg) = args.next() {
        let (slot, name) = match arg.to_str() {
            Some("--memory-bytes") => (&mut memory, "--memory-bytes"),
            Some("--parent") => (&mut parent, "--parent"),
            _ => return usage(&format!("unknown argument {arg:?}")),
        };
        match number(args.next()) {
            Some(value) => *slot = Some(value),
            None => return usage(&format!("{name} needs a number")),
        }
    }
    if let Err(why) = confine(memory, parent) {
        eprintln!("error: {why}");
        return Some(ExitCode::from(UNABLE));
    }
    if let Err(why) = start_compiler_threads(memory) {
        eprintln!("error: {why}");
        return Some(ExitCode::from(UNABLE));
    }
    let engine = match Engine::new(&super::engine::base_config()) {
        Ok(engine) => engine,
        Err(err) => {
            eprintln!("error: cannot create the wasm engine: {err:#}");
            return Some(ExitCode::from(UNABLE));
        }
    };
    Some(
        match serve(&engine, std::io::stdin().lock(), std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(match err {
                    WorkerError::Rejected(_) => REJECTED,
                    WorkerError::Io(_) => IO_FAILED,
                })
            }
        },
    )
}

/// Data the worker allows per compiler thread when it sizes the pool under a memory limit.
const MEMORY_PER_THREAD: u64 = 64 << 20;

/// Starts the compiler's thread pool (rayon's global pool, which wasmtime compiles on) before
/// the module is read: one thread per CPU, at most one per [`MEMORY_PER_THREAD`] of the limit,
/// one if more cannot start. Started lazily by wasmtime instead, a pool that cannot start (a
/// pids limit, the data limit on a many-CPU node) would panic on the module, rejecting it.
fn start_compiler_threads(memory: Option<u64>) -> Result<(), String> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let by_memory = memory.map_or(usize::MAX, |bytes| {
        usize::try_from(bytes / MEMORY_PER_THREAD).unwrap_or(usize::MAX)
    });
    let threads = cpus.min(by_memory).max(1);
    let started = rayon_core::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    match started {
        Ok(()) => Ok(()),
        Err(_) if threads > 1 => rayon_core::ThreadPoolBuilder::new()
            .num_threads(1)
            .build_global()
            .map_err(|e| format!("cannot start the compiler's thread: {e}")),
        Err(e) => Err(format!("cannot start the compiler's thread: {e}")),
    }
}

/// The worker's limits: dies with `parent`, first in line for the OOM killer, no core dumps, at
/// most `memory` bytes of data (or the hard limit it already has, if lower).
#[cfg(target_os = "linux")]
fn confine(memory: Option<u64>, parent: Option<u64>) -> Result<(), String> {
    let os_error = std::io::Error::last_os_error;
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes the signal number as its one argument.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
        return Err(format!(
            "cannot tie the compiler to the host: {}",
            os_error()
        ));
    }
    // The parent may have died before the death signal was set up.
    // SAFETY: getppid takes no arguments.
    let now = u64::try_from(unsafe { libc::getppid() }).unwrap_or(0);
    if parent.is_some_and(|parent| parent != now) {
        return Err("the host that started this compiler is gone".into());
    }
    // Best effort: raising one's own score needs no privilege.
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    // A module that exhausts the limit aborts the worker: no core dump of it.
    set_limit(libc::RLIMIT_CORE, 0)
        .map_err(|e| format!("cannot turn off the compiler's core dumps: {e}"))?;
    if let Some(bytes) = memory {
        set_limit(libc::RLIMIT_DATA, bytes)
            .map_err(|e| format!("cannot limit the compiler's memory to {bytes} bytes: {e}"))?;
    }
    Ok(())
}

/// Sets `resource`'s soft and hard limits to `value`, or to the hard limit if that is lower
/// (lowering needs no privilege, raising would).
#[cfg(target_os = "linux")]
fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let value = value.min(limit.rlim_max);
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn confine(_memory: Option<u64>, _parent: Option<u64>) -> Result<(), String> {
    Ok(())
}

/// How a compile in the child is bounded.
pub(crate) struct ChildLimits {
    /// Wall-clock time, after which the child is killed.
    pub(crate) timeout: Duration,
    /// Bytes of data the child may allocate (`RLIMIT_DATA`).
    pub(crate) memory: u64,
}

/// The host's side: runs `program compile-worker` on `bytes` and returns its artifact (not yet
/// checked: `Component::deserialize` checks that it fits the engine). A child still running
/// after the timeout is killed (with its process group) and the module rejected.
///
/// With `file`, the artifact is streamed into it (never held in this process's memory) and the
/// bytes returned are empty.
pub(crate) fn compile_in_child(
    program: &Path,
    bytes: &[u8],
    limits: &ChildLimits,
    file: Option<std::fs::File>,
) -> Result<Vec<u8>, ChildFailure> {
    let now = Instant::now();
    let deadline = now
        .checked_add(limits.timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
    let memory = limits.memory.max(MIN_MEMORY);
    let mut child = spawn(program, memory).map_err(ChildFailure::Unavailable)?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill_group(&mut child);
        let _ = child.wait();
        return Err(ChildFailure::Unavailable(std::io::Error::other(
            "the compiler process's pipes are missing",
        )));
    };
    // The input is written, and the output and errors read, each on a thread of its own, so
    // that a child writing before it has read everything cannot block. A child that exits early
    // closes its stdin: the write error is of no interest then, its exit status tells.
    let (done, output_read) = mpsc::channel::<()>();
    let outcome = std::thread::scope(|scope| {
        let threads = (
            std::thread::Builder::new().spawn_scoped(scope, move || {
                let _ = stdin.write_all(bytes);
            }),
            std::thread::Builder::new().spawn_scoped(scope, move || {
                let mut output = Vec::new();
                let read = match file {
                    Some(mut file) => std::io::copy(&mut stdout, &mut file).map(|_| output),
                    None => stdout.read_to_end(&mut output).map(|_| output),
                };
                drop(done);
                read
            }),
            std::thread::Builder::new().spawn_scoped(scope, move || tail(&mut stderr)),
        );
        let (Ok(_), Ok(output), Ok(errors)) = threads else {
            // Threads that did start end once the killed group's pipes close.
            kill_group(&mut child);
            let _ = child.wait();
            return Err(ChildFailure::Unavailable(std::io::Error::other(
                "cannot start a thread to talk to the compiler process",
            )));
        };
        // The output ends when the child exits (or closes its stdout).
        let timeout = deadline.saturating_duration_since(Instant::now());
        let _ = output_read.recv_timeout(timeout);
        let (status, timed_out) = wait_until(&mut child, deadline);
        let status = status.map_err(ChildFailure::Unavailable)?;
        let output = output
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the compiler output reader panicked")));
        Ok((status, timed_out, output, errors.join().unwrap_or_default()))
    });
    let (status, timed_out, output, errors) = outcome?;
    if timed_out {
        return Err(ChildFailure::Rejected(format!(
            "the compiler process took longer than {}s and was stopped",
            limits.timeout.as_secs_f64()
        )));
    }
    let stderr = String::from_utf8_lossy(&errors);
    if status.success() {
        let output = output.map_err(ChildFailure::Unavailable)?;
        if !stderr.trim().is_empty() {
            tracing::warn!(program = %program.display(), output = %stderr.trim(), "the compiler process wrote to stderr");
        }
        return Ok(output);
    }
    Err(classify(status, &stderr, memory))
}

/// What a child that failed with `status`, having written `stderr`, under a data limit of
/// `memory` bytes, means: exit 65, a panic or a signal (an allocation beyond the limit aborts,
/// the OOM killer kills) is the module's doing; any other exit status is not.
fn classify(status: ExitStatus, stderr: &str, memory: u64) -> ChildFailure {
    // A panic's hint to set RUST_BACKTRACE is for the child's environment, not the user's.
    let stderr = stderr
        .lines()
        .filter(|line| !line.starts_with("note: run with `RUST_BACKTRACE=1`"))
        .collect::<Vec<_>>()
        .join("\n");
    // `kubelisten` ends a failed command with `error: <message>`; warnings may come before it.
    let message = match stderr.rfind("\nerror: ") {
        Some(at) => &stderr[at + "\nerror: ".len()..],
        None => stderr.strip_prefix("error: ").unwrap_or(&stderr),
    }
    .trim();
    match status.code() {
        Some(code) if code == i32::from(REJECTED) && !message.is_empty() => {
            ChildFailure::Rejected(message.to_string())
        }
        Some(code) if code == i32::from(REJECTED) || code == PANICKED => {
            ChildFailure::Rejected(failed(status, message, memory))
        }
        Some(_) => {
            ChildFailure::Unavailable(std::io::Error::other(failed(status, message, memory)))
        }
        None => ChildFailure::Rejected(failed(status, message, memory)),
    }
}

/// The message of a child that failed with `status`, having printed `message`.
fn failed(status: ExitStatus, message: &str, memory: u64) -> String {
    let limit =
        if status.signal() == Some(libc::SIGABRT) && message.contains("memory allocation of") {
            format!("; the compiler's memory limit is {} MiB", memory >> 20)
        } else {
            String::new()
        };
    if message.is_empty() {
        format!("the compiler process failed ({status}{limit})")
    } else {
        format!("the compiler process failed ({status}{limit}): {message}")
    }
}

/// Starts the worker in a process group of its own; retried a few times on `ETXTBSY` (a file
/// just written, whose write handle a concurrent fork briefly holds).
fn spawn(program: &Path, memory: u64) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        let spawned = Command::new(program)
            .arg(WORKER_SUBCOMMAND)
            .arg("--memory-bytes")
            .arg(memory.to_string())
            .arg("--parent")
            .arg(std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The panic message is the error message; a backtrace, which may need memory the
            // limit no longer allows, would only hide it.
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0")
            .process_group(0)
            .spawn();
        match spawned {
            Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Waits for the child until `deadline`, then kills its process group. Returns its status and
/// whether it was killed for the deadline.
fn wait_until(child: &mut Child, deadline: Instant) -> (std::io::Result<ExitStatus>, bool) {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (Ok(status), false),
            Ok(None) if Instant::now() >= deadline => {
                kill_group(child);
                return (child.wait(), true);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(err) => return (Err(err), false),
        }
    }
}

/// Kills the child's process group (the child leads it: `process_group(0)`). The child is not
/// yet waited for, so its group id cannot have been reused.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill takes no pointers; the group is the child's own.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
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

//! Classification of a failed call into a [`TrapKind`].

use std::fmt;

use wasmtime::component::ResourceTableError;
use wasmtime_wasi::I32Exit;

use super::limits::LimitExceeded;
use super::state::{HOSTCALL_FUEL, MAX_RESOURCES};

/// Why a guest call trapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrapKind {
    /// A Rust (or other language) panic: `unreachable`, or an exit through `wasi:cli/exit`,
    /// after a panic message on stderr (Rust's `panicked at`, Go's `panic: `).
    Panic,
    /// An `unreachable` instruction without a panic message (abort, explicit unreachable).
    Unreachable,
    /// Out-of-bounds memory access.
    OutOfBounds,
    /// The wasm stack overflowed.
    StackOverflow,
    /// The epoch deadline (the call's time limit) interrupted the guest, e.g. an infinite loop.
    Deadline,
    /// Linear memory (or a table) tried to grow past the listener's limit, the guest held
    /// more WASI resources (pollables, streams: host memory) than a store may, or it handed the
    /// host more data in one call than the host copies (4 MiB).
    Memory,
    /// Any other trap or host-side failure during the call, and an exit through
    /// `wasi:cli/exit` without a panic message (`the guest exited with status N`).
    Other,
}

impl TrapKind {
    /// Stable lowercase name used in logs, JSON output and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TrapKind::Panic => "panic",
            TrapKind::Unreachable => "unreachable",
            TrapKind::OutOfBounds => "oob",
            TrapKind::StackOverflow => "stack-overflow",
            TrapKind::Deadline => "deadline",
            TrapKind::Memory => "memory",
            TrapKind::Other => "other",
        }
    }

    /// Classifies the error of a failed call; `stderr` is what the guest wrote during the call.
    pub(crate) fn classify(err: &wasmtime::Error, limit_hit: bool, stderr: &str) -> (Self, String) {
        if let Some(halted) = err.downcast_ref::<Halted>() {
            return (TrapKind::Other, halted.to_string());
        }
        if limit_hit || err.downcast_ref::<LimitExceeded>().is_some() {
            let message = err
                .downcast_ref::<LimitExceeded>()
                .map_or_else(|| format!("{err}"), ToString::to_string);
            return (TrapKind::Memory, message);
        }
        if let Some(ResourceTableError::Full) = err.downcast_ref::<ResourceTableError>() {
            return (
                TrapKind::Memory,
                format!(
                    "{err}: the guest holds {MAX_RESOURCES} WASI resources (pollables, streams, \
                     ...) and never dropped them, the most one instance may hold"
                ),
            );
        }
        if let Some(refusal) = hostcall_fuel_exhausted(err) {
            return (
                TrapKind::Memory,
                format!(
                    "{refusal}: the guest passed the host more than {} MiB in one call (an \
                     import's string and list arguments, or an export's result), the most it may",
                    HOSTCALL_FUEL >> 20
                ),
            );
        }
        if let Some(exit) = err.downcast_ref::<I32Exit>() {
            // `wasi:cli/exit.exit`: how Go (and C's `exit`) end the program on a fatal panic.
            return match panic_message(stderr) {
                Some(message) => (TrapKind::Panic, message),
                None => (
                    TrapKind::Other,
                    format!("the guest exited with status {}", exit.0),
                ),
            };
        }
        let Some(trap) = err.downcast_ref::<wasmtime::Trap>() else {
            return (TrapKind::Other, format!("{err:#}"));
        };
        let kind = match trap {
            wasmtime::Trap::UnreachableCodeReached if panic_message(stderr).is_some() => {
                TrapKind::Panic
            }
            wasmtime::Trap::UnreachableCodeReached => TrapKind::Unreachable,
            wasmtime::Trap::MemoryOutOfBounds => TrapKind::OutOfBounds,
            wasmtime::Trap::StackOverflow => TrapKind::StackOverflow,
            wasmtime::Trap::Interrupt => TrapKind::Deadline,
            _ => TrapKind::Other,
        };
        let message = match kind {
            TrapKind::Panic => panic_message(stderr).unwrap_or_else(|| trap.to_string()),
            _ => trap.to_string(),
        };
        (kind, message)
    }
}

/// wasmtime's refusal to copy more guest data into the host than the store's hostcall fuel
/// ([`HOSTCALL_FUEL`]), if `err` is one; its error type is private, so its message tells.
fn hostcall_fuel_exhausted(err: &wasmtime::Error) -> Option<String> {
    err.chain()
        .map(ToString::to_string)
        .find(|m| m.contains("fuel allocated for hostcalls has been exhausted"))
}

/// The error a guest call stops with after [`Runtime::halt_guests`](super::Runtime::halt_guests).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("stopped: kubelisten stopped all guest calls (leadership lost or shutdown grace over)")]
pub struct Halted;

/// The panic message on `stderr`, if it shows one: Rust's `panicked at` line and the one after
/// it (Rust prints `panicked at file:line:col:\nmessage`), or Go's `panic: message` line.
fn panic_message(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines().skip_while(|l| !l.contains("panicked at"));
    if let Some(first) = lines.next() {
        return Some(match lines.next() {
            Some(detail) => format!("{} {}", first.trim(), detail.trim()),
            None => first.trim().to_string(),
        });
    }
    stderr
        .lines()
        .find(|l| l.starts_with("panic: "))
        .map(|l| l.trim().to_string())
}

impl fmt::Display for TrapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(err: wasmtime::Error, stderr: &str) -> (TrapKind, String) {
        TrapKind::classify(&err, false, stderr)
    }

    #[test]
    fn an_exit_is_a_panic_when_stderr_shows_one_and_says_its_status_otherwise() {
        let exit = || wasmtime::Error::new(I32Exit(2));
        let go = "panic: bad config\n\ngoroutine 1 [running]:\nmain.init.0()\n";
        assert_eq!(
            classify(exit(), go),
            (TrapKind::Panic, "panic: bad config".into())
        );
        let rust = "thread 'main' panicked at src/lib.rs:3:5:\nbad config\n";
        assert_eq!(
            classify(exit(), rust),
            (
                TrapKind::Panic,
                "thread 'main' panicked at src/lib.rs:3:5: bad config".into()
            )
        );
        assert_eq!(
            classify(exit(), "bye\n"),
            (TrapKind::Other, "the guest exited with status 2".into())
        );
        // Go's panic, which ends in `unreachable` during a call.
        let unreachable = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached);
        assert_eq!(
            classify(unreachable, go),
            (TrapKind::Panic, "panic: bad config".into())
        );
        // A line that merely mentions a panic is not one.
        let unreachable = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached);
        assert_eq!(
            classify(unreachable, "no panic: here\n").0,
            TrapKind::Unreachable
        );
    }

    #[test]
    fn spent_hostcall_fuel_is_a_memory_trap_naming_the_bound() {
        let fuel = wasmtime::format_err!(
            "too much data is being copied between the host and the guest: fuel allocated for \
             hostcalls has been exhausted"
        );
        let (kind, message) = classify(fuel.context("error while executing at wasm backtrace"), "");
        assert_eq!(kind, TrapKind::Memory);
        assert!(
            message.starts_with("too much data is being copied")
                && message.contains("more than 4 MiB in one call"),
            "{message}"
        );
    }

    #[test]
    fn a_full_resource_table_is_a_memory_trap() {
        let (kind, message) = classify(wasmtime::Error::new(ResourceTableError::Full), "");
        assert_eq!(kind, TrapKind::Memory);
        assert!(
            message.starts_with("resource table has no free keys: "),
            "{message}"
        );
        let (kind, _) = classify(wasmtime::Error::new(ResourceTableError::NotPresent), "");
        assert_eq!(kind, TrapKind::Other);
    }
}

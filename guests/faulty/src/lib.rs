//! A listener that misbehaves on demand, for the keep-alive tests.
//!
//! The object's annotation `kubelisten.dev/fault` picks the fault: `panic`, `unreachable`, `oob`,
//! `stack-overflow`, `loop`, `memory`, `sleep` (sleeps a year in `wasi:io/poll`, then returns ok),
//! `nap` (sleeps 20 ms, then returns ok) or `error`; absent (or any other value) means behave.
//! `flaky` fails (error return) the first time it sees an object's resourceVersion and succeeds
//! on the retry; it needs reference mode, which keeps what it has seen.
//! The error message of `error` lists the chain-state keys it saw, so tests can observe the chain.
//! The `error` export (a watch error) panics when the error's message contains `fault=panic`,
//! fails when it contains `fault=error`, and succeeds otherwise.

use std::cell::RefCell;
use std::collections::HashSet;
use std::hint::black_box;

wit_bindgen::generate!({ path: "../../wit", world: "listener" });

use kubelisten::listener::chain_state;
use kubelisten::listener::log::{log, Level};

/// Recurses without end on the wasm stack (no tail call: the addition happens after the call).
#[allow(unconditional_recursion)]
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    black_box(recurse(black_box(depth + 1))).wrapping_add(depth)
}

thread_local! {
    /// `uid@resourceVersion` of the events `flaky` already failed once.
    static FAILED_ONCE: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
}

fn misbehave(ev: &Event) -> Result<(), String> {
    let fault = ev
        .meta
        .annotations
        .iter()
        .find(|(k, _)| k == "kubelisten.dev/fault")
        .map(|(_, v)| v.as_str());
    match fault {
        Some("panic") => panic!("fault injected: panic in {}", ev.meta.name),
        Some("unreachable") => core::arch::wasm32::unreachable(),
        Some("oob") => {
            // Far beyond any memory the host allows: an out-of-bounds access trap.
            let value =
                unsafe { core::ptr::read_volatile(black_box(0xFFFF_FFF0usize) as *const u8) };
            Err(format!("oob read returned {value}"))
        }
        Some("stack-overflow") => Err(format!("recursion returned {}", recurse(0))),
        Some("loop") => {
            let mut i: u64 = 0;
            loop {
                i = black_box(i.wrapping_add(1));
            }
        }
        Some("memory") => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(black_box(vec![1u8; 1 << 20]));
            }
        }
        Some("sleep") => {
            std::thread::sleep(std::time::Duration::from_secs(365 * 24 * 3600));
            Ok(())
        }
        Some("nap") => {
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(())
        }
        Some("flaky") => {
            let key = format!("{}@{}", ev.meta.uid, ev.meta.resource_version);
            if FAILED_ONCE.with(|seen| seen.borrow_mut().insert(key)) {
                Err("fault injected: flaky, failing the first attempt".into())
            } else {
                Ok(())
            }
        }
        Some("error") => Err(format!(
            "fault injected: error (chain-state keys: {})",
            chain_state::keys().join(",")
        )),
        _ => {
            log(Level::Info, &format!("behaving for {}", ev.meta.name));
            Ok(())
        }
    }
}

struct Faulty;

impl Guest for Faulty {
    fn create(ev: Event) -> Result<(), String> {
        misbehave(&ev)
    }

    fn update(ev: Event) -> Result<(), String> {
        misbehave(&ev)
    }

    fn delete(ev: Event) -> Result<(), String> {
        misbehave(&ev)
    }

    fn error(err: WatchError) -> Result<(), String> {
        if err.message.contains("fault=panic") {
            panic!("fault injected: panic in the error export ({})", err.reason);
        }
        if err.message.contains("fault=error") {
            return Err(format!(
                "fault injected: error export failed ({})",
                err.reason
            ));
        }
        if err.message.contains("fault=nap") {
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
        Ok(())
    }

    fn rollback(ev: Event) {
        log(Level::Info, &format!("rollback {}", ev.meta.name));
    }
}

export!(Faulty);

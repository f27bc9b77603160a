//! Per-event dispatch cost when events are far apart, as in a real cluster: the host is idle
//! between events, so caches are cold and the dispatching thread was parked. The criterion
//! benchmark (`dispatch`) measures back-to-back events instead.
//!
//! For each guest and mode, 300 update events of a ~1.4 KiB object are dispatched one by one
//! with `KUBELISTEN_IDLE_GAP_MS` (default 20) of sleep before each, the way `bench/e2e.sh`
//! paces them at 50 operations/s; then the same number back to back. Prints p50/p90/p99 in µs
//! of the listener call (what the event waits for: instantiation, unless a prewarmed instance
//! was ready, and the call) and the p50 of the whole dispatch (which includes building the
//! next spare instance in classname mode).
//! Run with `cargo bench -p kubelisten --bench idle_dispatch` (guests built first).

mod support;

use std::time::{Duration, Instant};

use kubelisten::dispatch::Chain;
use kubelisten::event::ResourceEvent;
use kubelisten::runtime::{Limits, Mode, Runtime, RuntimeConfig};
use support::{chain, guest, update_event};

const EVENTS: usize = 300;

fn object() -> String {
    serde_json::json!({
        "apiVersion": "bench.kubelisten.dev/v1", "kind": "BenchItem",
        "metadata": {"name": "idle", "namespace": "default", "uid": "0b6a5d4e-1c3f-4a43-9e1d-2f6c1a7b8c9d",
                     "resourceVersion": "1", "generation": 1, "labels": {"app": "bench"}},
        "spec": {"payload": "x".repeat(1200), "replicas": 3}
    })
    .to_string()
}

/// The `q` quantile of `samples` (nearest rank), in µs.
fn quantile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i].as_secs_f64() * 1e6
}

fn percentiles((mut calls, mut dispatches, faults): (Vec<Duration>, Vec<Duration>, f64)) -> String {
    format!(
        "p50 {:8.1}  p90 {:8.1}  p99 {:8.1}   dispatch p50 {:8.1}   page faults/event {faults:.1}",
        quantile(&mut calls, 0.50),
        quantile(&mut calls, 0.90),
        quantile(&mut calls, 0.99),
        quantile(&mut dispatches, 0.50),
    )
}

/// Minor page faults of this thread so far (`/proc/thread-self/stat`, field 10).
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| {
            let after_comm = s.rsplit_once(')')?.1;
            after_comm.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Waits `gap`: sleeping (the thread parks and the CPU may go idle), or with
/// `KUBELISTEN_IDLE_SPIN=1` spinning (the CPU stays busy on this thread).
fn wait(gap: Duration) {
    if std::env::var_os("KUBELISTEN_IDLE_SPIN").is_some_and(|v| v == "1") {
        let until = Instant::now() + gap;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    } else {
        std::thread::sleep(gap);
    }
}

/// Listener call times and whole-dispatch times of [`EVENTS`] events, and the minor page faults
/// per event.
fn run(chain: &Chain, event: &ResourceEvent, gap: Duration) -> (Vec<Duration>, Vec<Duration>, f64) {
    let faults = minor_faults();
    let (calls, dispatches): (Vec<Duration>, Vec<Duration>) = (0..EVENTS)
        .map(|_| {
            if !gap.is_zero() {
                wait(gap);
            }
            let started = Instant::now();
            let report = chain.dispatch(event);
            let took = started.elapsed();
            assert!(report.succeeded(), "dispatch failed");
            (report.calls[0].duration, took)
        })
        .unzip();
    let per_event = minor_faults().saturating_sub(faults) as f64 / EVENTS as f64;
    (calls, dispatches, per_event)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters guests by name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let gap = Duration::from_millis(
        std::env::var("KUBELISTEN_IDLE_GAP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    // KUBELISTEN_IDLE_POOLING=0 compares the on-demand instance allocator.
    let pooling = std::env::var("KUBELISTEN_IDLE_POOLING").map_or(true, |v| v != "0");
    // KUBELISTEN_IDLE_PREWARM=0 turns classname prewarming off.
    let prewarm = std::env::var("KUBELISTEN_IDLE_PREWARM").map_or(true, |v| v != "0");
    let runtime = Runtime::new(RuntimeConfig {
        pooling,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let raw = object();
    let event = update_event(&raw);
    println!(
        "idle_dispatch: {EVENTS} events per row, allocator {:?}, gap {} ms, prewarm {prewarm}",
        runtime.allocator(),
        gap.as_millis()
    );
    println!(
        "{:<16} {:<10} {:<13} listener call (µs)",
        "guest", "mode", "pacing"
    );
    // The native comparison: parse the object and format the line the bench listener logs.
    let native = |ev: &ResourceEvent| {
        let value: serde_json::Value = serde_json::from_str(&ev.object).expect("object");
        let line = format!(
            "BENCH {} {}/{} {} {}",
            ev.kind.as_str(),
            ev.meta.namespace.as_deref().unwrap_or(""),
            ev.meta.name,
            ev.meta.resource_version,
            value["spec"]["replicas"]
        );
        std::hint::black_box(line);
    };
    for (pacing, g) in [("idle gaps", gap), ("back to back", Duration::ZERO)] {
        let faults = minor_faults();
        let samples: Vec<Duration> = (0..EVENTS)
            .map(|_| {
                if !g.is_zero() {
                    wait(g);
                }
                let started = Instant::now();
                native(std::hint::black_box(&event));
                started.elapsed()
            })
            .collect();
        let per_event = minor_faults().saturating_sub(faults) as f64 / EVENTS as f64;
        println!(
            "{:<16} {:<10} {:<13} {}",
            "native",
            "-",
            pacing,
            percentiles((samples.clone(), samples, per_event))
        );
    }
    for name in ["noop", "bench-listener"] {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let path = guest(name);
        for mode in [Mode::Classname, Mode::Reference] {
            let limits = Limits {
                prewarm,
                ..Limits::default()
            };
            let chain = chain(&runtime, name, path.clone(), mode, limits);
            // Warm up once, then measure idle-paced and back-to-back.
            let _ = run(&chain, &event, Duration::ZERO);
            for (pacing, g) in [("idle gaps", gap), ("back to back", Duration::ZERO)] {
                let samples = run(&chain, &event, g);
                println!(
                    "{:<16} {:<10} {:<13} {}",
                    name,
                    mode.as_str(),
                    pacing,
                    percentiles(samples)
                );
            }
        }
    }
}

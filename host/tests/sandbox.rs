//! The sandbox core without a cluster: modes, fault containment, crash-loop backoff, chains,
//! `check` and `replay`. Needs the guests (`make guests`).

mod common;
mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kubelisten::dispatch::Chain;
use kubelisten::event::EventKind;
use kubelisten::runtime::{check, Export, Limits, Listener, ListenerSpec, Mode, Outcome, TrapKind};
use support::{event, guest, runtime};

fn spec(name: &str, mode: Mode, limits: Limits) -> ListenerSpec {
    ListenerSpec {
        name: name.into(),
        path: guest(name),
        mode,
        limits,
        capabilities: Default::default(),
    }
}

fn load(rt: &kubelisten::Runtime, name: &str, mode: Mode) -> Arc<Listener> {
    load_with(rt, name, mode, true)
}

fn load_with(rt: &kubelisten::Runtime, name: &str, mode: Mode, prewarm: bool) -> Arc<Listener> {
    let limits = Limits {
        call_timeout: Duration::from_millis(200),
        crash_loop_threshold: 1000,
        prewarm,
        ..Limits::default()
    };
    Arc::new(Listener::load(rt, &spec(name, mode, limits)).unwrap())
}

fn totals(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|m| m.starts_with("totals"))
        .cloned()
        .collect()
}

#[test]
fn reference_mode_keeps_state_and_classname_does_not() {
    let (rt, capture, _cache) = runtime();
    for (mode, prewarm, expected) in [
        (
            Mode::Reference,
            true,
            [
                "creates=1 updates=0",
                "creates=2 updates=0",
                "creates=2 updates=1",
            ],
        ),
        (
            Mode::Classname,
            true,
            [
                "creates=1 updates=0",
                "creates=1 updates=0",
                "creates=0 updates=1",
            ],
        ),
        (
            Mode::Classname,
            false,
            [
                "creates=1 updates=0",
                "creates=1 updates=0",
                "creates=0 updates=1",
            ],
        ),
    ] {
        capture.0.lock().unwrap().clear();
        let listener = load_with(&rt, "rust-metrics", mode, prewarm);
        let chain = Chain::new(vec![listener.clone()]);
        for ev in [
            event(EventKind::Create, "a", None),
            event(EventKind::Create, "b", None),
            event(EventKind::Update, "a", None),
        ] {
            assert!(chain.dispatch(&ev).succeeded());
        }
        let got = totals(&capture.messages_of("rust-metrics"));
        assert_eq!(got.len(), 3, "{mode:?}: {got:?}");
        // Classname with prewarm: one instance per event plus the spare built after the last.
        let instances = match (mode, prewarm) {
            (Mode::Reference, _) => 1,
            (Mode::Classname, true) => 4,
            (Mode::Classname, false) => 3,
        };
        assert_eq!(
            listener.stats().instances.load(Ordering::Relaxed),
            instances,
            "{mode:?} prewarm={prewarm}"
        );
        for (line, want) in got.iter().zip(expected) {
            assert!(
                line.contains(want),
                "{mode:?}: {line:?} should contain {want:?}"
            );
        }
    }
}

#[test]
fn every_fault_is_contained_and_the_next_event_is_served() {
    let (rt, capture, _cache) = runtime();
    let faults = [
        ("panic", Some(TrapKind::Panic)),
        ("unreachable", Some(TrapKind::Unreachable)),
        ("oob", Some(TrapKind::OutOfBounds)),
        ("stack-overflow", Some(TrapKind::StackOverflow)),
        ("loop", Some(TrapKind::Deadline)),
        ("memory", Some(TrapKind::Memory)),
        ("error", None),
    ];
    // A time limit well above what hoarding 64 MiB takes on a loaded machine, so `memory` hits
    // the memory limit first (with 200 ms it once hit the deadline under a parallel CI run).
    let limits = Limits {
        call_timeout: Duration::from_secs(1),
        crash_loop_threshold: 1000,
        ..Limits::default()
    };
    for mode in [Mode::Classname, Mode::Reference] {
        let faulty = Arc::new(Listener::load(&rt, &spec("faulty", mode, limits.clone())).unwrap());
        let chain = Chain::new(vec![faulty.clone()]);
        for (fault, trap) in faults {
            let report = chain.dispatch(&event(EventKind::Create, fault, Some(fault)));
            let outcome = &report.calls[0].outcome;
            match trap {
                Some(kind) => assert_eq!(
                    outcome.trap_kind(),
                    Some(kind),
                    "{mode:?} {fault}: {outcome:?}"
                ),
                None => assert!(
                    matches!(outcome, Outcome::Error(m) if m.contains("fault injected")),
                    "{outcome:?}"
                ),
            }
            let next = chain.dispatch(&event(EventKind::Update, "fine", None));
            assert!(next.succeeded(), "{mode:?} after {fault}: {:?}", next.calls);
        }
        let stats = faulty.stats();
        assert_eq!(stats.traps.load(Ordering::Relaxed), 6);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
        let rebuilds = if mode == Mode::Reference { 6 } else { 0 };
        assert_eq!(stats.rebuilds.load(Ordering::Relaxed), rebuilds, "{mode:?}");
    }
    // The panic message reached the log, tagged with the listener.
    assert!(capture
        .lines()
        .iter()
        .any(|l| l.listener == "faulty" && l.message.contains("panicked at")));
}

#[test]
fn crash_loop_backoff_engages_and_releases() {
    let (rt, _capture, _cache) = runtime();
    let limits = Limits {
        crash_loop_threshold: 2,
        // Long enough to still be on when the next call comes on a loaded machine.
        crash_loop_backoff: Duration::from_secs(1),
        ..Limits::default()
    };
    let faulty = Arc::new(Listener::load(&rt, &spec("faulty", Mode::Reference, limits)).unwrap());
    let other = load(&rt, "rust-logger", Mode::Classname);
    let ev = event(EventKind::Create, "x", Some("unreachable"));
    let trap = |l: &Listener| l.call_event(Export::Create, &kubelisten_wit(&ev), &ctx());
    assert!(trap(&faulty).trap_kind().is_some());
    assert!(
        faulty.backoff_remaining().is_none(),
        "one trap is below the threshold"
    );
    assert!(trap(&faulty).trap_kind().is_some());
    assert!(
        faulty.backoff_remaining().is_some(),
        "two consecutive traps engage the backoff"
    );
    let skipped = trap(&faulty);
    assert!(
        matches!(skipped, Outcome::Skipped(ref m) if m.contains("crash-loop")),
        "{skipped:?}"
    );
    // Other listeners keep running meanwhile.
    assert!(Chain::new(vec![other])
        .dispatch(&event(EventKind::Create, "y", None))
        .succeeded());
    // Once the backoff has passed, a good event is served and the backoff is released.
    wait_until(|| faulty.backoff_remaining().is_none());
    assert!(Chain::new(vec![faulty.clone()])
        .dispatch(&event(EventKind::Create, "z", None))
        .succeeded());
    assert!(trap(&faulty).trap_kind().is_some());
    assert!(
        faulty.backoff_remaining().is_none(),
        "success reset the consecutive count"
    );
    assert_eq!(faulty.stats().skipped.load(Ordering::Relaxed), 1);
}

fn wait_until(cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("condition not reached in 5 s");
}

fn ctx() -> kubelisten::runtime::CallContext {
    kubelisten::runtime::CallContext {
        object: Arc::from("ns/x"),
        event_kind: "create",
        chain: Default::default(),
        namespace: None,
        event_object: None,
    }
}

fn kubelisten_wit(ev: &kubelisten::ResourceEvent) -> kubelisten::runtime::bindings::Event {
    kubelisten::dispatch::wit_event(ev)
}

#[test]
fn chain_rolls_back_in_reverse_order_and_shares_chain_state() {
    let (rt, _capture, _cache) = runtime();
    let chain = Chain::new(vec![
        load(&rt, "rust-logger", Mode::Classname),
        load(&rt, "rust-metrics", Mode::Reference),
        load(&rt, "faulty", Mode::Classname),
    ]);
    let report = chain.dispatch(&event(EventKind::Create, "r", Some("error")));
    let calls: Vec<(String, &str, &str)> = report
        .calls
        .iter()
        .map(|c| (c.listener.to_string(), c.export.as_str(), c.outcome.label()))
        .collect();
    assert_eq!(
        calls,
        vec![
            ("rust-logger".into(), "create", "ok"),
            ("rust-metrics".into(), "create", "ok"),
            ("faulty".into(), "create", "error"),
            ("rust-metrics".into(), "rollback", "ok"),
            ("rust-logger".into(), "rollback", "ok"),
        ]
    );
    assert_eq!(report.failed_at, Some(2));
    // faulty's error lists the chain-state keys it saw: rust-logger set one earlier in the chain.
    assert!(
        report.calls[2]
            .outcome
            .message()
            .contains("chain-state keys: rust-logger"),
        "{:?}",
        report.calls[2]
    );
    // A fresh event starts with empty chain state.
    let alone = Chain::new(vec![load(&rt, "faulty", Mode::Classname)]);
    let report = alone.dispatch(&event(EventKind::Create, "s", Some("error")));
    assert!(
        report.calls[0]
            .outcome
            .message()
            .ends_with("chain-state keys: )"),
        "{:?}",
        report.calls[0]
    );
}

#[test]
fn a_listener_whose_limits_cannot_work_is_not_loaded() {
    let (rt, _capture, _cache) = runtime();
    let limits = Limits {
        instances: 0,
        ..Limits::default()
    };
    // The same check covers the config file, the flags and a modules ConfigMap's entries.
    let Err(err) = Listener::load(&rt, &spec("noop", Mode::Classname, limits)) else {
        panic!("loaded with limits that cannot work");
    };
    assert_eq!(
        err.to_string(),
        "listener noop: limits.instances must be at least 1"
    );
}

/// A module that compiles but cannot be instantiated with its limits is refused at load (the
/// `--config` start and a hot swap both load through it), naming the listener and the limit,
/// instead of failing every event.
#[test]
fn a_listener_that_cannot_be_instantiated_with_its_limits_is_not_loaded() {
    let (rt, _capture, _cache) = runtime();
    for mode in [Mode::Classname, Mode::Reference] {
        // One wasm page: a Rust guest's initial memory alone is larger.
        let one_page = Limits {
            memory_bytes: 64 << 10,
            ..Limits::default()
        };
        let Err(err) = Listener::load(&rt, &spec("noop", mode, one_page)) else {
            panic!("{mode:?}: loaded with a memory limit below the initial memory");
        };
        let message = err.to_string();
        assert!(
            message.starts_with("listener noop: cannot be instantiated: memory trap: ")
                && message.ends_with("(limits.memory-bytes)"),
            "{mode:?}: {message}"
        );
        // A Rust wasip2 component has several core instances (the module, the WASI adapter
        // and its shims).
        let one_instance = Limits {
            instances: 1,
            ..Limits::default()
        };
        let Err(err) = Listener::load(&rt, &spec("noop", mode, one_instance)) else {
            panic!("{mode:?}: loaded with room for one core instance");
        };
        let message = err.to_string();
        assert!(
            message.starts_with("listener noop: cannot be instantiated: ")
                && message.contains("instance count too high")
                && message.ends_with("(limits.instances)"),
            "{mode:?}: {message}"
        );
    }
}

/// The instance built at load to try the module is the reference instance of the first event;
/// a classname listener's is dropped at once (and not counted as an instance built).
#[test]
fn the_instance_tried_at_load_serves_a_reference_listener_and_classname_drops_it() {
    let (rt, _cache) = support::runtime_with_pool(4);
    let reference = noop_named(&rt, "reference", Mode::Reference);
    assert_eq!(rt.pool_usage(), Some((1, 4)));
    assert_eq!(reference.stats().instances.load(Ordering::Relaxed), 1);
    let classname = noop_named(&rt, "classname", Mode::Classname);
    assert_eq!(rt.pool_usage(), Some((1, 4)));
    assert_eq!(classname.stats().instances.load(Ordering::Relaxed), 0);
    let report = Chain::new(vec![reference.clone()]).dispatch(&event(EventKind::Create, "o", None));
    assert!(report.succeeded(), "{:?}", report.calls);
    assert_eq!(reference.stats().instances.load(Ordering::Relaxed), 1);
}

#[test]
fn the_memory_cache_of_compiled_modules_is_bounded() {
    let rt = kubelisten::Runtime::new(kubelisten::RuntimeConfig {
        cache_dir: None,
        ..kubelisten::RuntimeConfig::default()
    })
    .unwrap();
    // Components of another world: compiled (and cached) before the world check refuses them,
    // as every version a modules ConfigMap ever held would be.
    let module = |i: usize| {
        wat::parse_str(format!(
            r#"(component (core module $m (func (export "f{i}"))) (core instance (instantiate $m)))"#
        ))
        .unwrap()
    };
    let load = |i: usize| {
        let spec = spec("noop", Mode::Classname, Limits::default());
        assert!(Listener::from_bytes(&rt, &spec, &module(i)).is_err());
    };
    for i in 0..100 {
        load(i);
    }
    assert_eq!(rt.memory_cache_len(), 64);
    // The newest are still in memory; the oldest were dropped (and are compiled again).
    let hits = rt.cache_hits();
    load(99);
    assert_eq!(rt.cache_hits(), hits + 1);
    load(0);
    assert_eq!(rt.cache_hits(), hits + 1);
}

#[test]
fn check_accepts_listeners_and_names_what_is_wrong() {
    let (rt, _capture, cache) = runtime();
    for name in [
        "rust-logger",
        "rust-metrics",
        "faulty",
        "noop",
        "json-parse",
    ] {
        let report = check::check(&rt, &std::fs::read(guest(name)).unwrap()).unwrap();
        assert!(report.digest.starts_with("sha256:"));
        assert!(report.exports.iter().any(|e| e == "create"));
    }
    // The compiled code landed in the cache, one entry per module.
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 5);

    let problems = check::check(&rt, b"hello world").unwrap_err();
    assert!(problems.0[0].contains("not a wasm binary"), "{problems}");

    let core = wat::parse_str("(module (func (export \"create\")))").unwrap();
    let problems = check::check(&rt, &core).unwrap_err();
    assert!(
        problems.0[0].contains("core wasm module, not a component"),
        "{problems}"
    );

    let other_world = wat::parse_str(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func (export "hello") (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    let problems = check::check(&rt, &other_world).unwrap_err();
    for export in ["create", "update", "delete", "error", "rollback"] {
        assert!(
            problems.0.contains(&format!("missing export `{export}`")),
            "{problems}"
        );
    }

    let wrong_signature = wat::parse_str(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func (export "create") (canon lift (core func $i "f")))
             (func (export "update") (canon lift (core func $i "f")))
             (func (export "delete") (canon lift (core func $i "f")))
             (func (export "error") (canon lift (core func $i "f")))
             (func (export "rollback") (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    let problems = check::check(&rt, &wrong_signature).unwrap_err();
    assert!(problems.0[0].starts_with("wrong signature"), "{problems}");

    let unknown_import = wat::parse_str(
        r#"(component
             (import "acme:evil/net" (instance (export "connect" (func))))
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func (export "hello") (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    let problems = check::check(&rt, &unknown_import).unwrap_err();
    assert!(
        problems
            .0
            .iter()
            .any(|p| p.starts_with("unknown import") && p.contains("acme:evil/net")),
        "{problems}"
    );
}

#[test]
fn events_carry_the_computed_status_to_the_guest() {
    let (rt, capture, _cache) = runtime();
    let chain = Chain::new(vec![load(&rt, "rust-logger", Mode::Classname)]);
    for (ready, want) in [
        (1, "status=InProgress (Available: 1/3)"),
        (3, "status=Current (Deployment is available. Replicas: 3)"),
    ] {
        let object = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1", "resourceVersion": "7", "generation": 2},
            "spec": {"replicas": 3},
            "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "readyReplicas": ready, "availableReplicas": ready,
                       "conditions": [{"type": "Available", "status": if ready == 3 { "True" } else { "False" }}, {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}
        });
        let mut ev = support::event(EventKind::Update, "web", None);
        ev.meta = std::sync::Arc::new(kubelisten::ObjectMeta::from_value(&object).unwrap());
        ev.status = kubelisten::event::ObjectStatus::of(&object);
        ev.object = Arc::from(object.to_string());
        assert!(chain.dispatch(&ev).succeeded());
        let lines = capture.messages_of("rust-logger");
        assert!(
            lines.last().unwrap().contains(want),
            "{lines:?} should end with {want}"
        );
    }
}

/// The `noop` guest loaded under its own `name`.
fn noop_named(rt: &kubelisten::Runtime, name: &str, mode: Mode) -> Arc<Listener> {
    let spec = ListenerSpec {
        name: name.into(),
        ..spec("noop", mode, Limits::default())
    };
    Arc::new(Listener::load(rt, &spec).unwrap())
}

#[test]
fn prewarmed_spares_keep_to_a_quarter_of_the_pool() {
    let (rt, _cache) = support::runtime_with_pool(8);
    assert_eq!(rt.allocator(), kubelisten::runtime::AllocatorKind::Pooling);
    assert_eq!(rt.spare_budget(), 2);
    let listeners: Vec<_> = (0..5)
        .map(|i| noop_named(&rt, &format!("noop-{i}"), Mode::Classname))
        .collect();
    let chain = Chain::new(listeners.clone());
    for i in 0..10 {
        let report = chain.dispatch(&event(EventKind::Create, &format!("o{i}"), None));
        assert!(report.succeeded(), "event {i}: {:?}", report.calls);
        // Only two listeners hold a spare; the other three instantiate inline every time.
        assert_eq!(rt.spare_instances(), 2, "after event {i}");
        assert_eq!(rt.pool_usage().map(|(used, _)| used), Some(2));
    }
    let built: u64 = listeners
        .iter()
        .map(|l| l.stats().instances.load(Ordering::Relaxed))
        .sum();
    // 5 instances per event, plus the two spares alive now.
    assert_eq!(built, 5 * 10 + 2);
    drop(chain);
    drop(listeners);
    assert_eq!(
        rt.spare_instances(),
        0,
        "dropping a listener releases its spare"
    );
    assert_eq!(rt.pool_usage(), Some((0, 8)));
}

#[test]
fn a_full_pool_fails_the_event_with_a_clear_error_and_recovers() {
    // A pool of 2 has no room for spares, and two reference instances fill it. (`c` and
    // `fresh` are loaded while it is full: the instantiation tried at load cannot be made, and
    // that is not held against the module.)
    let (rt, _cache) = support::runtime_with_pool(2);
    assert_eq!(rt.spare_budget(), 0);
    let a = noop_named(&rt, "a", Mode::Reference);
    let b = noop_named(&rt, "b", Mode::Reference);
    let c = noop_named(&rt, "c", Mode::Reference);
    let fresh = noop_named(&rt, "fresh", Mode::Classname);
    let create = event(EventKind::Create, "o", None);
    for l in [&a, &b] {
        let report = Chain::new(vec![l.clone()]).dispatch(&create);
        assert!(report.succeeded(), "{:?}", report.calls);
    }
    assert_eq!(rt.pool_usage(), Some((2, 2)));
    for l in [&c, &fresh] {
        let report = Chain::new(vec![l.clone()]).dispatch(&create);
        assert_eq!(report.failed_at, Some(0));
        let outcome = &report.calls[0].outcome;
        assert_eq!(outcome.label(), "skipped", "{outcome:?}");
        assert!(
            outcome.message().contains("instance pool is full")
                && outcome.message().contains("--pool-instances"),
            "{outcome:?}"
        );
    }
    // The host is unharmed: the instances that live keep serving, and a freed slot is used.
    assert!(Chain::new(vec![a.clone()]).dispatch(&create).succeeded());
    drop(b);
    assert!(Chain::new(vec![c.clone()]).dispatch(&create).succeeded());
    drop(a);
    let report = Chain::new(vec![fresh.clone()]).dispatch(&create);
    assert!(report.succeeded(), "{:?}", report.calls);
}

#[test]
fn a_sleeping_guest_is_stopped_at_its_time_limit() {
    let (rt, _capture, _cache) = runtime();
    for mode in [Mode::Classname, Mode::Reference] {
        // call_timeout 200 ms; the guest sleeps a year in wasi:io/poll, where no epoch check
        // runs. The watchdog only tells "never returns" apart from "returns" (it is 300 times
        // the limit); it does not measure speed.
        let faulty = load(&rt, "faulty", mode);
        let chain = Chain::new(vec![faulty.clone()]);
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = chain.clone();
        std::thread::spawn(move || {
            let report = sleeper.dispatch(&event(EventKind::Create, "sleeper", Some("sleep")));
            let _ = tx.send(report);
        });
        let report = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{mode:?}: a sleeping guest held its call past any limit"));
        let outcome = &report.calls[0].outcome;
        assert_eq!(
            outcome.trap_kind(),
            Some(TrapKind::Deadline),
            "{mode:?}: {outcome:?}"
        );
        // A short sleep inside the limit is fine, and the listener keeps serving.
        let report = chain.dispatch(&event(EventKind::Create, "napper", Some("nap")));
        assert!(report.succeeded(), "{mode:?}: {:?}", report.calls);
    }
}

/// A cluster whose every request takes 20 ms and fails with a timeout.
struct SlowCluster;

impl kubelisten::runtime::ClusterAccess for SlowCluster {
    fn call(
        &self,
        _caller: &kubelisten::runtime::Caller,
        _request: kubelisten::runtime::ClusterRequest,
    ) -> Result<String, kubelisten::runtime::bindings::kubelisten::listener::cluster::ApiError>
    {
        std::thread::sleep(Duration::from_millis(20));
        Err(
            kubelisten::runtime::bindings::kubelisten::listener::cluster::ApiError::Timeout(
                "slow".into(),
            ),
        )
    }
}

#[test]
fn cluster_time_is_given_back_only_up_to_the_wall_clock_cap() {
    let cache = tempfile::tempdir().unwrap();
    let rt = kubelisten::Runtime::new(kubelisten::RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        cluster: Arc::new(SlowCluster),
        ..kubelisten::RuntimeConfig::default()
    })
    .unwrap();
    let limits = Limits {
        call_timeout: Duration::from_millis(200),
        call_wall_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let probe = Arc::new(Listener::load(&rt, &spec("probe", Mode::Classname, limits)).unwrap());
    // 1000 requests of 20 ms: 20 s of host time but almost no guest time.
    let mut ev = event(EventKind::Create, "looper", None);
    let raw = ev.object.replace(
        r#""generation":1"#,
        r#""generation":1,"annotations":{"kubelisten.dev/probe":"[{\"op\":\"get\",\"repeat\":1000}]"}"#,
    );
    ev.meta = std::sync::Arc::new(kubelisten::ObjectMeta::from_json(&raw).unwrap());
    ev.object = Arc::from(raw);
    let report = Chain::new(vec![probe]).dispatch(&ev);
    let outcome = &report.calls[0].outcome;
    assert_eq!(outcome.trap_kind(), Some(TrapKind::Deadline), "{outcome:?}");
}

/// A dispatcher of watch "w" over `chain` with the default settings, no observer, no Event
/// reporting and its own metrics; tests override fields with struct update syntax.
fn test_dispatcher(
    chain: Arc<kubelisten::dispatch::ChainSlot>,
) -> kubelisten::dispatch::dispatcher::Dispatcher {
    kubelisten::dispatch::dispatcher::Dispatcher {
        watch: Arc::from("w"),
        chain,
        config: kubelisten::dispatch::dispatcher::DispatcherConfig::default(),
        observer: None,
        state: Arc::default(),
        failures: None,
        metrics: Arc::default(),
    }
}

/// A dispatcher over `slot` with `retry`, sharing `state`, and the receiver of every attempt it
/// makes.
fn observed_dispatcher(
    slot: Arc<kubelisten::dispatch::ChainSlot>,
    retry: kubelisten::dispatch::dispatcher::RetryPolicy,
    state: Arc<kubelisten::watch::state::WatchState>,
) -> (
    kubelisten::dispatch::dispatcher::Dispatcher,
    tokio::sync::mpsc::UnboundedReceiver<kubelisten::dispatch::dispatcher::Dispatched>,
) {
    use kubelisten::dispatch::dispatcher::{Dispatcher, DispatcherConfig};
    let (observer, attempts) = tokio::sync::mpsc::unbounded_channel();
    let dispatcher = Dispatcher {
        config: DispatcherConfig {
            retry,
            ..DispatcherConfig::default()
        },
        observer: Some(observer),
        state,
        ..test_dispatcher(slot)
    };
    (dispatcher, attempts)
}

/// Runs `events` through a dispatcher over `chain`, sharing `state`, and returns every attempt
/// it made. With `stop_first`, the dispatcher is told to stop (a graceful shutdown) before it
/// takes anything, while the channel stays open: once every event has succeeded (each waited
/// for up to 60 s), the run must still be going, and must end once the channel closes.
/// Otherwise the channel closes after the events.
fn run_dispatcher(
    chain: Chain,
    retry: kubelisten::dispatch::dispatcher::RetryPolicy,
    state: Arc<kubelisten::watch::state::WatchState>,
    events: Vec<kubelisten::ResourceEvent>,
    stop_first: bool,
) -> Vec<kubelisten::dispatch::dispatcher::Dispatched> {
    use kubelisten::watch::watcher::WatchOutput;
    let tokio = tokio::runtime::Runtime::new().unwrap();
    tokio.block_on(async move {
        let slot = Arc::new(kubelisten::dispatch::ChainSlot::new(chain));
        let (dispatcher, mut attempts) = observed_dispatcher(slot, retry, state);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let sent = events.len();
        for event in events {
            tx.send(WatchOutput::Event(Arc::new(event))).await.unwrap();
        }
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut seen: Vec<kubelisten::dispatch::dispatcher::Dispatched> = Vec::new();
        if stop_first {
            cancel.cancel();
        }
        let run = tokio::spawn(dispatcher.run(rx, cancel));
        if stop_first {
            // Stopped, the dispatcher handles what it has received, and goes on until its
            // watch's tasks (the senders) are done: they may still hold events to send.
            while seen.iter().filter(|a| a.report.succeeded()).count() < sent {
                let attempt = tokio::time::timeout(Duration::from_secs(60), attempts.recv())
                    .await
                    .expect("the received events are handled after the stop")
                    .expect("observer open");
                seen.push(attempt);
            }
            assert!(!run.is_finished(), "the drain waits for the senders");
        }
        drop(tx);
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the run ends once the senders are gone")
            .unwrap();
        while let Ok(attempt) = attempts.try_recv() {
            seen.push(attempt);
        }
        seen
    })
}

#[test]
fn error_export_calls_are_counted_and_their_failures_logged() {
    use kubelisten::dispatch::dispatcher::Dispatcher;
    use kubelisten::event::WatchErrorInfo;
    use kubelisten::watch::watcher::WatchOutput;
    let (rt, _capture, _cache) = runtime();
    let chain = Chain::new(vec![
        load(&rt, "faulty", Mode::Classname),
        load(&rt, "rust-logger", Mode::Reference),
    ]);
    let metrics = Arc::new(kubelisten::metrics::Metrics::default());
    let logs = common::SharedBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // A current-thread runtime: the dispatcher logs from its own tasks, on this thread.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _log = tracing::subscriber::set_default(subscriber);
    let slot = Arc::new(kubelisten::dispatch::ChainSlot::new(chain));
    tokio.block_on(async {
        // One run per error: errors that arrive while one is handled are merged (see
        // `only_the_latest_watch_error_waits_while_one_is_handled`).
        for message in ["fault=error", "fault=panic", "too old resource version"] {
            let dispatcher = Dispatcher {
                metrics: metrics.clone(),
                ..test_dispatcher(slot.clone())
            };
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let error = WatchErrorInfo {
                code: 410,
                reason: "Expired".into(),
                message: message.into(),
            };
            tx.send(WatchOutput::Error(error)).await.unwrap();
            drop(tx);
            dispatcher
                .run(rx, tokio_util::sync::CancellationToken::new())
                .await;
        }
    });
    let text = metrics.encode();
    for (listener, outcome, count) in [
        ("faulty", "error", 1),
        ("faulty", "trap", 1),
        ("faulty", "ok", 1),
        ("rust-logger", "ok", 3),
    ] {
        let series = format!(
            "kubelisten_listener_calls_total{{listener=\"{listener}\",export=\"error\",outcome=\"{outcome}\"}} {count}"
        );
        assert!(text.contains(&series), "{series} missing in:\n{text}");
    }
    assert!(
        text.contains("kubelisten_listener_traps_total{listener=\"faulty\",trap=\"panic\"} 1"),
        "{text}"
    );
    let logged = logs.text();
    let failures: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("listener error export failed"))
        .collect();
    assert_eq!(failures.len(), 2, "{logged}");
    assert!(
        failures.iter().any(|l| l.contains("outcome=\"error\"")
            && l.contains("fault injected: error export failed")),
        "{logged}"
    );
    assert!(
        failures.iter().any(|l| l.contains("outcome=\"trap\"")),
        "{logged}"
    );
    assert!(
        failures.iter().all(|l| l.contains("listener=faulty")),
        "{logged}"
    );
}

/// A tracing layer with a bug: it panics on a warning (or error) about the object `ns/host-panic`.
struct PanicOnObject;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PanicOnObject {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Object(bool);
        impl tracing::field::Visit for Object {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0 |= field.name() == "object" && format!("{value:?}") == "ns/host-panic";
            }
        }
        if *event.metadata().level() > tracing::Level::WARN {
            return;
        }
        let mut object = Object(false);
        event.record(&mut object);
        assert!(!object.0, "log layer bug");
    }
}

#[test]
fn a_dispatch_task_that_panics_does_not_hold_up_its_objects_next_events() {
    use kubelisten::dispatch::dispatcher::Dispatcher;
    use kubelisten::watch::watcher::WatchOutput;
    use tracing_subscriber::layer::SubscriberExt;
    let (rt, _capture, _cache) = runtime();
    let chain = Chain::new(vec![load(&rt, "faulty", Mode::Classname)]);
    // A current-thread runtime: the dispatcher's tasks log on this thread, so the first event's
    // task panics (when it logs its failed attempt) after the chain ran on the blocking pool.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _log = tracing::subscriber::set_default(tracing_subscriber::registry().with(PanicOnObject));
    let attempts = tokio.block_on(async {
        let (observer, mut attempts) = tokio::sync::mpsc::unbounded_channel();
        let dispatcher = Dispatcher {
            observer: Some(observer),
            ..test_dispatcher(Arc::new(kubelisten::dispatch::ChainSlot::new(chain)))
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        for (kind, fault) in [
            (EventKind::Create, Some("error")),
            (EventKind::Update, None),
        ] {
            let event = event(kind, "host-panic", fault);
            tx.send(WatchOutput::Event(Arc::new(event))).await.unwrap();
        }
        drop(tx);
        // Without its key handed back, the update waits behind the dead task for good: a hang,
        // bounded here so that it fails instead.
        let run = dispatcher.run(rx, tokio_util::sync::CancellationToken::new());
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the object's next event was never dispatched");
        let mut seen = Vec::new();
        while let Ok(attempt) = attempts.try_recv() {
            seen.push(attempt);
        }
        seen
    });
    // The create's task died before it reported its attempt; the update ran.
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].event.kind, EventKind::Update);
    assert!(
        attempts[0].report.succeeded(),
        "{:?}",
        attempts[0].report.calls
    );
}

#[test]
fn only_the_latest_watch_error_waits_while_one_is_handled() {
    use kubelisten::dispatch::dispatcher::{Dispatcher, DispatcherConfig};
    use kubelisten::event::WatchErrorInfo;
    use kubelisten::watch::watcher::WatchOutput;
    let (rt, _capture, _cache) = runtime();
    let limits = Limits {
        call_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let faulty = Listener::load(&rt, &spec("faulty", Mode::Classname, limits)).unwrap();
    let chain = Chain::new(vec![Arc::new(faulty)]);
    let metrics = Arc::new(kubelisten::metrics::Metrics::default());
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let attempts = tokio.block_on(async {
        let (observer, mut attempts) = tokio::sync::mpsc::unbounded_channel();
        let dispatcher = Dispatcher {
            metrics: metrics.clone(),
            observer: Some(observer),
            // One worker: the event below is not held up by the error calls.
            config: DispatcherConfig {
                workers: 1,
                ..DispatcherConfig::default()
            },
            ..test_dispatcher(Arc::new(kubelisten::dispatch::ChainSlot::new(chain)))
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        // The first error's `error` call takes 150 ms (`fault=nap`); the three after it arrive
        // meanwhile, and only the last of them is passed on after it.
        for message in ["fault=nap 1", "fault=nap 2", "fault=nap 3", "the last"] {
            let error = WatchErrorInfo {
                code: 500,
                reason: "InternalError".into(),
                message: message.into(),
            };
            tx.send(WatchOutput::Error(error)).await.unwrap();
        }
        let created = event(EventKind::Create, "a", None);
        tx.send(WatchOutput::Event(Arc::new(created)))
            .await
            .unwrap();
        drop(tx);
        dispatcher
            .run(rx, tokio_util::sync::CancellationToken::new())
            .await;
        let mut seen = Vec::new();
        while let Ok(attempt) = attempts.try_recv() {
            seen.push(attempt);
        }
        seen
    });
    assert_eq!(attempts.len(), 1, "the event was handled");
    let text = metrics.encode();
    for series in [
        "kubelisten_events_total{watch=\"w\",kind=\"error\"} 4",
        "kubelisten_listener_calls_total{listener=\"faulty\",export=\"error\",outcome=\"ok\"} 2",
    ] {
        assert!(text.contains(series), "{series} missing in:\n{text}");
    }
}

/// The `faulty` guest (classname), backed off for `backoff` after every trap.
fn backing_off_after_one_trap(rt: &kubelisten::Runtime, backoff: Duration) -> Arc<Listener> {
    faulty_named(rt, "faulty", backoff)
}

#[test]
fn a_crash_looping_listener_does_not_use_up_other_objects_retries() {
    let (rt, _capture, _cache) = runtime();
    // One trap backs the listener off for 5 s; retries come after 10 ms, so without care both
    // attempts of another object's event would be skipped and the event dropped.
    let faulty = backing_off_after_one_trap(&rt, Duration::from_secs(5));
    let chain = Chain::new(vec![faulty.clone()]);
    let poisoned = chain.dispatch(&event(EventKind::Create, "poison", Some("panic")));
    assert_eq!(poisoned.calls[0].outcome.trap_kind(), Some(TrapKind::Panic));
    assert!(faulty.backoff_remaining().is_some());
    let retry = kubelisten::dispatch::dispatcher::RetryPolicy {
        attempts: 2,
        base: Duration::from_millis(10),
        max: Duration::from_millis(10),
    };
    let attempts = run_dispatcher(
        chain,
        retry,
        Arc::default(),
        vec![event(EventKind::Delete, "innocent", None)],
        false,
    );
    assert!(
        attempts.last().is_some_and(|a| a.report.succeeded()),
        "the delete of an object the listener handles fine must be delivered: {:?}",
        attempts.iter().map(|a| &a.report.calls).collect::<Vec<_>>()
    );
    // It waited the backoff out: skipped first, then called once, without using up a retry.
    assert_eq!(attempts[0].report.calls[0].outcome.label(), "skipped");
    assert!(
        attempts.iter().all(|a| a.attempt == 1),
        "skips are not attempts"
    );
}

/// The `faulty` guest under another name, backed off for `backoff` after every trap.
fn faulty_named(rt: &kubelisten::Runtime, name: &str, backoff: Duration) -> Arc<Listener> {
    let limits = Limits {
        call_timeout: Duration::from_millis(200),
        crash_loop_threshold: 1,
        crash_loop_backoff: backoff,
        crash_loop_backoff_max: backoff,
        ..Limits::default()
    };
    let spec = ListenerSpec {
        name: name.into(),
        ..spec("faulty", Mode::Classname, limits)
    };
    Arc::new(Listener::load(rt, &spec).unwrap())
}

/// Traps `listener` once (backing it off) and waits until the backoff is over.
fn backed_off_and_due(listener: &Arc<Listener>) {
    let report =
        Chain::new(vec![listener.clone()]).dispatch(&event(EventKind::Create, "p", Some("panic")));
    assert_eq!(report.calls[0].outcome.trap_kind(), Some(TrapKind::Panic));
    while listener.backoff_remaining().is_some() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn after_a_backoff_one_event_probes_the_listener_and_the_others_wait() {
    let (rt, _capture, _cache) = runtime();
    let logger = load(&rt, "rust-logger", Mode::Reference);
    let faulty = faulty_named(&rt, "faulty", Duration::from_millis(20));
    backed_off_and_due(&faulty);
    let chain = Chain::new(vec![logger.clone(), faulty.clone()]);
    // Another worker's event takes the probe (as the chain does, before calling anyone) ...
    let probe = faulty.admit().expect("admitted");
    assert!(probe.is_probe());
    let logger_calls = logger.stats().calls.load(Ordering::Relaxed);
    // ... so this one waits without running the chain.
    let report = chain.dispatch(&event(EventKind::Create, "q", None));
    assert_eq!(report.calls.len(), 1, "{:?}", report.calls);
    assert_eq!(report.calls[0].outcome.label(), "skipped");
    assert!(report.backed_off.is_some());
    assert_eq!(logger.stats().calls.load(Ordering::Relaxed), logger_calls);
    // The probe was not made after all: the next event probes, and as it does not trap, the
    // backoff is over.
    faulty.release_probe(probe);
    let report = chain.dispatch(&event(EventKind::Create, "q", None));
    assert!(report.succeeded(), "{:?}", report.calls);
    assert_eq!(faulty.backoff_remaining(), None);
    assert!(!faulty.admit().expect("admitted").is_probe());
}

#[test]
fn events_held_back_by_a_probe_are_woken_by_its_outcome() {
    let (rt, _capture, _cache) = runtime();
    let faulty = faulty_named(&rt, "faulty", Duration::from_millis(20));
    backed_off_and_due(&faulty);
    let chain = Chain::new(vec![faulty.clone()]);
    // Another worker's event holds the probe.
    let probe = faulty.admit().expect("admitted");
    assert!(probe.is_probe());
    let report = chain.dispatch(&event(EventKind::Create, "q", None));
    let held = report.backed_off.expect("held back by the probe");
    assert!(held.probing, "{:?}", report.calls);
    assert!(
        report.calls[0].outcome.message().contains("being probed"),
        "{:?}",
        report.calls
    );
    // It waits for the probe's outcome, not a poll interval: at most the probe's lease.
    assert!(held.wait > Duration::from_secs(10), "{:?}", held.wait);
    assert!(!held.settled.has_changed().unwrap());
    // The probe runs and traps again: the waiters are woken (into the next backoff; the unit
    // tests of `CrashLoop` check that, with explicit instants: here it lasts only 40 ms) ...
    let ctx = ctx();
    let wit = kubelisten_wit(&event(EventKind::Create, "p", Some("panic")));
    let outcome = faulty.call_event_admitted(Export::Create, &wit, &ctx, probe);
    assert_eq!(outcome.trap_kind(), Some(TrapKind::Panic));
    assert!(held.settled.has_changed().unwrap());
    // ... and when a probe succeeds, the others are woken to run.
    while faulty.backoff_remaining().is_some() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let probe = faulty.admit().expect("admitted");
    let report = chain.dispatch(&event(EventKind::Create, "q", None));
    let held = report.backed_off.expect("held back by the second probe");
    let outcome = faulty.call_event_admitted(
        Export::Create,
        &kubelisten_wit(&event(EventKind::Create, "p", None)),
        &ctx,
        probe,
    );
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(held.settled.has_changed().unwrap());
    assert!(chain
        .dispatch(&event(EventKind::Create, "q", None))
        .succeeded());
}

/// A guest log sink with a bug: it panics on a line that contains `trigger`, after telling
/// `reached` and pausing a moment (so that other calls can queue up behind the one it fails).
/// It keeps the other lines.
struct PanickingSink {
    trigger: &'static str,
    reached: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    lines: std::sync::Mutex<Vec<String>>,
}

impl kubelisten::runtime::GuestLogSink for PanickingSink {
    fn log(&self, _: &str, _: &str, _: &str, _: kubelisten::runtime::LogLevel, message: &str) {
        if message.contains(self.trigger) {
            let _ = self.reached.lock().unwrap().send(());
            std::thread::sleep(Duration::from_millis(100));
            panic!("log sink bug on {message:?}");
        }
        self.lines.lock().unwrap().push(message.into());
    }
}

/// A runtime whose guest log sink panics on lines containing `trigger` ([`PanickingSink`]);
/// the receiver hears of each such panic as it starts.
fn panicking_runtime(
    trigger: &'static str,
) -> (
    kubelisten::Runtime,
    Arc<PanickingSink>,
    std::sync::mpsc::Receiver<()>,
    tempfile::TempDir,
) {
    let (reached, heard) = std::sync::mpsc::channel();
    let sink = Arc::new(PanickingSink {
        trigger,
        reached: std::sync::Mutex::new(reached),
        lines: Default::default(),
    });
    let cache = tempfile::tempdir().unwrap();
    let rt = kubelisten::Runtime::new(kubelisten::RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        sink: sink.clone(),
        ..kubelisten::RuntimeConfig::default()
    })
    .unwrap();
    (rt, sink, heard, cache)
}

/// A trap made by the host's log sink panicking in the middle of a call.
fn is_host_panic(outcome: &Outcome) -> bool {
    outcome.trap_kind() == Some(TrapKind::Other)
        && outcome
            .message()
            .contains("host code panicked during the call: log sink bug")
}

#[test]
fn a_panic_in_host_code_is_the_calls_trap_and_frees_the_probe() {
    let (rt, _sink, _heard, _cache) = panicking_runtime("host-panic");
    // `faulty` logs "behaving for <name>" for an event without a fault: for this name the host's
    // log sink panics in the middle of the guest's call. As the probe after a backoff, its
    // outcome is recorded (a trap: the next backoff, 1 s), not lost with the unwind, which
    // would hold every other event back for the probe's lease.
    let faulty = faulty_named(&rt, "faulty", Duration::from_secs(1));
    backed_off_and_due(&faulty);
    let chain = Chain::new(vec![faulty.clone()]);
    let report = chain.dispatch(&event(EventKind::Create, "host-panic", None));
    assert!(
        is_host_panic(&report.calls[0].outcome),
        "{:?}",
        report.calls
    );
    assert_eq!(faulty.stats().traps.load(Ordering::Relaxed), 2);
    let wait = faulty.backoff_remaining().expect("backed off again");
    assert!(wait <= Duration::from_secs(1), "{wait:?}");
    while faulty.backoff_remaining().is_some() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let report = chain.dispatch(&event(EventKind::Create, "q", None));
    assert!(report.succeeded(), "{:?}", report.calls);
}

#[test]
fn a_host_panic_in_a_reference_call_hands_nobody_the_instance_it_went_through() {
    let (rt, _sink, heard, _cache) = panicking_runtime("host-panic");
    let limits = Limits {
        call_timeout: Duration::from_millis(200),
        crash_loop_threshold: 1000,
        ..Limits::default()
    };
    let reference =
        Arc::new(Listener::load(&rt, &spec("faulty", Mode::Reference, limits)).unwrap());
    let chain = Chain::new(vec![reference.clone()]);
    assert!(chain
        .dispatch(&event(EventKind::Create, "q", None))
        .succeeded());
    let failing = std::thread::spawn({
        let chain = chain.clone();
        move || chain.dispatch(&event(EventKind::Create, "host-panic", None))
    });
    // While that call is about to panic, the next event's call waits for the instance ...
    heard.recv().unwrap();
    let report = chain.dispatch(&event(EventKind::Update, "q", None));
    assert!(report.succeeded(), "{:?}", report.calls);
    let failed = failing.join().unwrap();
    assert!(
        is_host_panic(&failed.calls[0].outcome),
        "{:?}",
        failed.calls
    );
    // ... and gets a fresh one: the instance the unwind went through is dropped, once. (The
    // panic is caught while the failing call still holds the instance's lock, so no call can
    // take it in between, as one could when the lock was released by the unwind, poisoned.
    // That window was too short for this test to hit; it checks the outcome.)
    assert_eq!(reference.stats().instances.load(Ordering::Relaxed), 2);
    assert_eq!(reference.stats().rebuilds.load(Ordering::Relaxed), 1);
}

#[test]
fn a_host_panic_in_a_state_hand_over_starts_the_new_version_fresh() {
    // The versioned guest logs in `snapshot` and in `restore`: the log sink panics in one, then
    // in the other. Either way the hand-over fails and the new version starts from zero.
    for step in ["snapshot count=", "restore count="] {
        let (rt, sink, _heard, _cache) = panicking_runtime(step);
        let reference = |name: &str| {
            let spec = spec(name, Mode::Reference, Limits::default());
            Arc::new(Listener::load(&rt, &spec).unwrap())
        };
        let old = reference("versioned-v1");
        for name in ["a", "b"] {
            let report =
                Chain::new(vec![old.clone()]).dispatch(&event(EventKind::Create, name, None));
            assert!(report.succeeded(), "{:?}", report.calls);
        }
        let new = reference("versioned-v2");
        assert!(new.stateful() && old.stateful());
        assert!(!new.begin_handover().restore_from(&old), "{step}");
        let report = Chain::new(vec![new]).dispatch(&event(EventKind::Create, "c", None));
        assert!(report.succeeded(), "{:?}", report.calls);
        let lines = sink.lines.lock().unwrap().clone();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("versioned v2 ns/c ") && l.ends_with(" count=1")),
            "{step}: {lines:?}"
        );
    }
}

/// A chain admits every listener before calling the first (`Chain::dispatch`); a listener due
/// for a probe that the chain then does not call (an earlier listener failed, or a later one is
/// backed off) gets its ticket back. A ticket kept would hold its probe slot for the probe's
/// lease (tens of seconds), every event for the listener skipped as "being probed" meanwhile.
#[test]
fn a_chain_hands_back_the_probes_of_listeners_it_did_not_call() {
    let (rt, _capture, _cache) = runtime();
    // Due for a probe, after a listener that fails this event: never called, probe handed back.
    let first = faulty_named(&rt, "first", Duration::from_secs(60));
    let due = faulty_named(&rt, "due", Duration::from_millis(20));
    backed_off_and_due(&due);
    let report = Chain::new(vec![first.clone(), due.clone()]).dispatch(&event(
        EventKind::Create,
        "e",
        Some("error"),
    ));
    assert_eq!(report.failed_at, Some(0));
    assert_eq!(report.calls.len(), 1, "{:?}", report.calls);
    assert!(due.admit().expect("the probe was handed back").is_probe());
    // Due for a probe, before a backed-off listener: nobody is called, probe handed back.
    let due = faulty_named(&rt, "due-2", Duration::from_millis(20));
    backed_off_and_due(&due);
    let backed_off = faulty_named(&rt, "backed-off", Duration::from_secs(60));
    let report = Chain::new(vec![backed_off.clone()]).dispatch(&event(
        EventKind::Create,
        "p",
        Some("panic"),
    ));
    assert_eq!(report.calls[0].outcome.trap_kind(), Some(TrapKind::Panic));
    let report = Chain::new(vec![due.clone(), backed_off.clone()]).dispatch(&event(
        EventKind::Create,
        "q",
        None,
    ));
    assert_eq!(report.failed_at, Some(1));
    assert!(report.backed_off.is_some());
    assert!(due.admit().expect("the probe was handed back").is_probe());
}

#[test]
fn a_hot_swap_ends_the_wait_for_a_backoff() {
    use kubelisten::dispatch::dispatcher::Dispatcher;
    use kubelisten::watch::watcher::WatchOutput;
    let (rt, _capture, _cache) = runtime();
    // Backed off for an hour: only the swap can end the wait within the test's patience.
    let broken = backing_off_after_one_trap(&rt, Duration::from_secs(3600));
    let chain = Chain::new(vec![broken.clone()]);
    let poisoned = chain.dispatch(&event(EventKind::Create, "poison", Some("panic")));
    assert_eq!(poisoned.calls[0].outcome.trap_kind(), Some(TrapKind::Panic));
    let slot = Arc::new(kubelisten::dispatch::ChainSlot::new(chain));
    let tokio = tokio::runtime::Runtime::new().unwrap();
    tokio.block_on(async {
        let (observer, mut attempts) = tokio::sync::mpsc::unbounded_channel();
        let dispatcher = Dispatcher {
            observer: Some(observer),
            ..test_dispatcher(slot.clone())
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(WatchOutput::Event(Arc::new(event(
            EventKind::Update,
            "innocent",
            None,
        ))))
        .await
        .unwrap();
        drop(tx);
        let run = tokio::spawn(dispatcher.run(rx, tokio_util::sync::CancellationToken::new()));
        let first: kubelisten::dispatch::dispatcher::Dispatched = attempts.recv().await.unwrap();
        assert_eq!(first.report.calls[0].outcome.label(), "skipped");
        // A fixed version of the listener arrives by hot swap.
        slot.set(Chain::new(vec![load(&rt, "faulty", Mode::Classname)]));
        let second = tokio::time::timeout(Duration::from_secs(60), attempts.recv())
            .await
            .expect("the swap ends the wait (the backoff has an hour to go)")
            .unwrap();
        assert!(second.report.succeeded(), "{:?}", second.report.calls);
        run.await.unwrap();
    });
}

#[test]
fn a_backed_off_listener_builds_no_spare_instances() {
    let (rt, _capture, _cache) = runtime();
    let faulty = backing_off_after_one_trap(&rt, Duration::from_secs(60));
    let chain = Chain::new(vec![faulty.clone()]);
    let report = chain.dispatch(&event(EventKind::Create, "p", Some("panic")));
    assert_eq!(report.calls[0].outcome.trap_kind(), Some(TrapKind::Panic));
    assert!(
        faulty.backoff_remaining().is_some(),
        "the trap started the backoff"
    );
    let report = chain.dispatch(&event(EventKind::Create, "q", None));
    assert_eq!(report.calls[0].outcome.label(), "skipped");
    assert!(report.backed_off.is_some());
    let stats = faulty.stats();
    // Only the instance of the trapping call: no spare after it, none while backed off.
    assert_eq!(stats.instances.load(Ordering::Relaxed), 1);
    assert_eq!(stats.calls.load(Ordering::Relaxed), 1);
    assert_eq!(stats.skipped.load(Ordering::Relaxed), 1);
    assert_eq!(rt.spare_instances(), 0);
}

#[test]
fn a_chain_with_a_backed_off_listener_calls_nobody() {
    let (rt, _capture, _cache) = runtime();
    let logger = load(&rt, "rust-logger", Mode::Reference);
    let faulty = backing_off_after_one_trap(&rt, Duration::from_secs(60));
    let chain = Chain::new(vec![logger.clone(), faulty.clone()]);
    let report = chain.dispatch(&event(EventKind::Create, "p", Some("panic")));
    assert_eq!(report.calls[1].outcome.trap_kind(), Some(TrapKind::Panic));
    assert!(faulty.backoff_remaining().is_some());
    let logger_calls = logger.stats().calls.load(Ordering::Relaxed);
    // While faulty is backed off, an event for the chain runs neither rust-logger (whose work
    // would only be rolled back) nor its rollback: the attempt is one skipped call.
    let report = chain.dispatch(&event(EventKind::Create, "q", None));
    let calls: Vec<(String, &str, &str)> = report
        .calls
        .iter()
        .map(|c| (c.listener.to_string(), c.export.as_str(), c.outcome.label()))
        .collect();
    assert_eq!(calls, vec![("faulty".into(), "create", "skipped")]);
    assert_eq!(report.failed_at, Some(1));
    assert!(report
        .backed_off
        .is_some_and(|held| held.wait > Duration::from_secs(50) && !held.probing));
    assert_eq!(logger.stats().calls.load(Ordering::Relaxed), logger_calls);
    assert_eq!(faulty.stats().skipped.load(Ordering::Relaxed), 1);
    // A catch-up for rust-logger alone does not wait for faulty.
    let mut catch_up = event(EventKind::Create, "q", None);
    catch_up.only = Some(vec![Arc::from("rust-logger")].into());
    let report = chain.dispatch(&catch_up);
    assert!(report.succeeded(), "{:?}", report.calls);
    assert_eq!(
        logger.stats().calls.load(Ordering::Relaxed),
        logger_calls + 1
    );
}

#[test]
fn events_taken_by_the_dispatcher_count_as_watch_activity() {
    let state = Arc::new(kubelisten::watch::state::WatchState::default());
    let seen = run_dispatcher(
        Chain::default(),
        Default::default(),
        state.clone(),
        vec![event(EventKind::Create, "a", None)],
        false,
    );
    assert_eq!(seen.len(), 1);
    // A watch blocked on back-pressure hears nothing from the API server; the dispatcher taking
    // its events is what tells /healthz it progresses.
    assert!(state
        .problem(Duration::from_secs(60))
        .is_none_or(|p| !p.contains("activity")));
    assert!(state.last_activity().is_some());
}

#[test]
fn a_graceful_stop_still_delivers_the_events_already_received() {
    let (rt, capture, _cache) = runtime();
    let logger = load(&rt, "rust-logger", Mode::Classname);
    let events = [
        (EventKind::Update, "a"),
        (EventKind::Delete, "a"),
        (EventKind::Delete, "b"),
    ]
    .into_iter()
    .map(|(kind, name)| event(kind, name, None))
    .collect();
    // The stop comes before the dispatcher has taken anything; the sender stays open, as a
    // watch that is being shut down holds it while it sends what it has.
    let attempts = run_dispatcher(
        Chain::new(vec![logger]),
        Default::default(),
        Arc::default(),
        events,
        true,
    );
    let mut delivered = Vec::new();
    for a in attempts {
        assert!(a.report.succeeded(), "{:?}", a.report.calls);
        delivered.push(format!("{} {}", a.event.kind.as_str(), a.event.meta.name));
    }
    delivered.sort();
    assert_eq!(delivered, ["delete a", "delete b", "update a"]);
    assert!(!capture.lines().is_empty());
}

#[test]
fn a_listener_joining_a_chain_gets_only_what_its_watch_has_caught_up_on() {
    let (rt, _capture, _cache) = runtime();
    let a = noop_named(&rt, "a", Mode::Classname);
    let l = noop_named(&rt, "l", Mode::Reference);
    // Listeners set before the watch subscribes (a modules ConfigMap read at start) are covered
    // by the watch's first list, whose events carry the generation it subscribed at.
    let slot = kubelisten::dispatch::ChainSlot::new(Chain::default());
    slot.set(Chain::new(vec![a.clone()]));
    let (first_list, mut announcements) = slot.catch_up();
    assert_eq!(first_list, 1);
    slot.set(Chain::new(vec![a.clone(), l.clone()]));
    let (generation, names) = announcements.try_recv().unwrap();
    assert_eq!((generation, &names[..]), (2, &[Arc::<str>::from("l")][..]));

    let called = |event: &kubelisten::ResourceEvent| -> Vec<String> {
        let report = slot.get().dispatch(event);
        assert!(report.succeeded(), "{:?}", report.calls);
        report
            .calls
            .iter()
            .map(|c| c.listener.to_string())
            .collect()
    };
    // Read by the watch before its catch-up: not for the new listener, whatever the chain is
    // by the time it is dispatched (its catch-up create covers the object instead).
    let mut before = event(EventKind::Update, "x", None);
    before.chain_generation = first_list;
    assert_eq!(called(&before), ["a"]);
    // The catch-up itself: for the new listener alone.
    let mut catch_up = event(EventKind::Create, "x", None);
    catch_up.only = Some(names.clone());
    catch_up.chain_generation = generation;
    assert_eq!(called(&catch_up), ["l"]);
    // Read after the catch-up: for everyone.
    let mut after = event(EventKind::Update, "x", None);
    after.chain_generation = generation;
    assert_eq!(called(&after), ["a", "l"]);

    // A new version of a listener already there (same names) joins nothing.
    slot.set(Chain::new(vec![
        noop_named(&rt, "a", Mode::Classname),
        noop_named(&rt, "l", Mode::Reference),
    ]));
    assert!(announcements.try_recv().is_err());
    assert_eq!(called(&before), ["a"]);
    assert_eq!(called(&after), ["a", "l"]);
    // A watch subscribing now lists for the chain as it is: its first list reaches both.
    assert_eq!(slot.catch_up().0, generation);

    // `l` removed and a new `l` added: the old catch-up, still queued, is not for the newcomer
    // (its own catch-up covers the object), and neither are events read before that.
    slot.set(Chain::new(vec![a.clone()]));
    slot.set(Chain::new(vec![
        a.clone(),
        noop_named(&rt, "l", Mode::Reference),
    ]));
    let (rejoined, _) = announcements.try_recv().unwrap();
    assert!(rejoined > generation);
    assert_eq!(called(&catch_up), Vec::<String>::new());
    assert_eq!(called(&after), ["a"]);
    let mut catch_up_again = catch_up.clone();
    catch_up_again.chain_generation = rejoined;
    assert_eq!(called(&catch_up_again), ["l"]);
}

#[test]
fn halting_the_runtime_stops_running_guest_calls_at_once() {
    let (rt, _capture, _cache) = runtime();
    // Limits far beyond the test's watchdog: only the halt can end these calls in time.
    let limits = Limits {
        call_timeout: Duration::from_secs(600),
        call_wall_timeout: Duration::from_secs(600),
        crash_loop_threshold: 1000,
        ..Limits::default()
    };
    let mut running = Vec::new();
    for (mode, fault) in [
        (Mode::Classname, "loop"),
        (Mode::Reference, "loop"),
        (Mode::Classname, "sleep"),
        (Mode::Reference, "sleep"),
    ] {
        let faulty = Arc::new(Listener::load(&rt, &spec("faulty", mode, limits.clone())).unwrap());
        let chain = Chain::new(vec![faulty]);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(chain.dispatch(&event(EventKind::Create, "stuck", Some(fault))));
        });
        running.push((mode, fault, rx));
    }
    // Whether a call is under way yet or not: either way it ends with the halt.
    std::thread::sleep(Duration::from_millis(200));
    rt.halt_guests();
    for (mode, fault, rx) in running {
        let report = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{mode:?} {fault}: the call went on after the halt"));
        let outcome = &report.calls[0].outcome;
        assert_eq!(
            outcome.trap_kind(),
            Some(TrapKind::Other),
            "{mode:?} {fault}: {outcome:?}"
        );
        assert!(
            outcome
                .message()
                .starts_with("stopped: kubelisten stopped all guest calls"),
            "{mode:?} {fault}: {outcome:?}"
        );
    }
}

/// Runs `event` through a dispatcher over `slot` whose retries wait 300 s (3 attempts), calls
/// `then` once the first attempt has failed, drops the sender and returns every attempt once
/// the run has ended. Waits are bounded by 60 s: a retry's wait that is not cut short fails it.
fn retried_after_a_long_backoff(
    slot: Arc<kubelisten::dispatch::ChainSlot>,
    event: kubelisten::ResourceEvent,
    then: impl FnOnce(&tokio_util::sync::CancellationToken),
) -> Vec<kubelisten::dispatch::dispatcher::Dispatched> {
    use kubelisten::dispatch::dispatcher::RetryPolicy;
    use kubelisten::watch::watcher::WatchOutput;
    let tokio = tokio::runtime::Runtime::new().unwrap();
    tokio.block_on(async move {
        let retry = RetryPolicy {
            attempts: 3,
            base: Duration::from_secs(300),
            max: Duration::from_secs(300),
        };
        let (dispatcher, mut attempts) = observed_dispatcher(slot, retry, Arc::default());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(WatchOutput::Event(Arc::new(event))).await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(dispatcher.run(rx, stop.clone()));
        let first = tokio::time::timeout(Duration::from_secs(60), attempts.recv())
            .await
            .expect("a first attempt")
            .expect("observer open");
        assert!(!first.report.succeeded(), "{:?}", first.report.calls);
        then(&stop);
        drop(tx);
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the retries' waits were cut short")
            .unwrap();
        let mut seen = vec![first];
        while let Ok(attempt) = attempts.try_recv() {
            seen.push(attempt);
        }
        seen
    })
}

#[test]
fn a_graceful_stop_makes_the_attempts_whose_waits_would_outlast_the_drain_at_once() {
    let (rt, _capture, _cache) = runtime();
    let faulty = load(&rt, "faulty", Mode::Classname);
    let slot = Arc::new(kubelisten::dispatch::ChainSlot::new(Chain::new(vec![
        faulty,
    ])));
    let attempts = retried_after_a_long_backoff(
        slot,
        event(EventKind::Delete, "a", Some("error")),
        tokio_util::sync::CancellationToken::cancel,
    );
    // Every attempt was made (none lost in a sleep the grace period, 30 s, would cut), and
    // failed.
    let made: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.report.calls[0].outcome.label()))
        .collect();
    assert_eq!(made, vec![(1, "error"), (2, "error"), (3, "error")]);
}

#[test]
fn a_hot_swap_ends_a_retrys_wait_and_the_new_module_is_tried_at_once() {
    let (rt, _capture, _cache) = runtime();
    let faulty = load(&rt, "faulty", Mode::Classname);
    let slot = Arc::new(kubelisten::dispatch::ChainSlot::new(Chain::new(vec![
        faulty,
    ])));
    // The fix: a module that handles the event, under the listener's name (as a hot swap of
    // a new version of the module does).
    let limits = Limits {
        call_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let fixed = ListenerSpec {
        name: "faulty".into(),
        ..spec("rust-logger", Mode::Classname, limits)
    };
    let fixed = Arc::new(Listener::load(&rt, &fixed).unwrap());
    let attempts = retried_after_a_long_backoff(
        slot.clone(),
        event(EventKind::Update, "a", Some("error")),
        |_| {
            slot.set(Chain::new(vec![fixed]));
        },
    );
    let made: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.report.calls[0].outcome.label()))
        .collect();
    assert_eq!(made, vec![(1, "error"), (2, "ok")]);
}

/// `kubelisten compile-worker` compiles for the host (`RuntimeConfig::compiler`): the listener
/// runs, the artifact lands in the code cache, and a runtime compiling in its own process (the
/// test binary, another build of the same engine settings) loads that entry instead of compiling.
#[test]
fn the_compile_worker_compiles_for_the_host_and_fills_the_code_cache() {
    let cache = tempfile::tempdir().unwrap();
    let capture = Arc::new(support::Capture::default());
    let config = kubelisten::RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        sink: capture.clone(),
        compiler: Some(env!("CARGO_BIN_EXE_kubelisten").into()),
        ..kubelisten::RuntimeConfig::default()
    };
    let rt = kubelisten::Runtime::new(config.clone()).unwrap();
    let listener = load(&rt, "rust-metrics", Mode::Reference);
    assert_eq!(rt.compiled_in_child(), 1);
    assert_eq!(rt.cache_hits(), 0);
    let chain = Chain::new(vec![listener]);
    assert!(chain
        .dispatch(&event(EventKind::Create, "a", None))
        .succeeded());
    assert_eq!(
        totals(&capture.messages_of("rust-metrics")),
        ["totals creates=1 updates=0 deletes=0"]
    );
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "one compiled-code cache entry");
    // The code runs mapped from that entry (resident only as far as it runs), not from a copy.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        maps.contains(entries[0].to_str().unwrap()),
        "{} is not mapped",
        entries[0].display()
    );

    let here = kubelisten::Runtime::new(kubelisten::RuntimeConfig {
        compiler: None,
        ..config.clone()
    })
    .unwrap();
    load(&here, "rust-metrics", Mode::Reference);
    assert_eq!(here.cache_hits(), 1, "the worker's entry loads in-process");

    // A module the worker's compiler refuses: reported as compiling in this process reports it.
    let broken = wat::parse_str("(component (core module (func (result i32))))").unwrap();
    let there = check::check(&rt, &broken).unwrap_err().to_string();
    assert!(
        there.starts_with("invalid component: ") && there.contains("type mismatch"),
        "{there}"
    );
    assert_eq!(there, check::check(&here, &broken).unwrap_err().to_string());
    assert_eq!(rt.compiled_in_child(), 1);
}

/// `kubelisten compile-worker` behind a script that keeps, in `dir`, the exit status
/// (`PID.status`) and the output (`PID.out`) of each of its runs. It passes the host's
/// arguments (`compile-worker --memory-bytes N --parent PID`) on with its own pid as the
/// parent's: the worker checks that its parent is that process.
fn recording_compiler(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("recording-compiler.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\"{kubelisten}\" \"$1\" \"$2\" \"$3\" \"$4\" $$ > \"{dir}/$$.out\"\n\
             status=$?\necho $status > \"{dir}/$$.status\"\ncat \"{dir}/$$.out\"\nexit $status\n",
            kubelisten = env!("CARGO_BIN_EXE_kubelisten"),
            dir = dir.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// A module the instance pool cannot hold (two memories in one core module, which
/// multi-memory allows) compiles in `kubelisten compile-worker`, whose engine has no pool, but
/// its code does not load into the host's pooling engine: it is rejected with the pool's
/// reason, without a second compile in the host (unbounded there) and without a cache entry
/// that every later load would compile and refuse again.
#[test]
fn a_module_the_pool_refuses_is_rejected_after_the_workers_compile_only() {
    let cache = tempfile::tempdir().unwrap();
    let worker = tempfile::tempdir().unwrap();
    let rt = kubelisten::Runtime::new(kubelisten::RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        compiler: Some(recording_compiler(worker.path())),
        pooling: true,
        pool_instances: 4,
        ..kubelisten::RuntimeConfig::default()
    })
    .unwrap();
    assert_eq!(rt.allocator(), kubelisten::runtime::AllocatorKind::Pooling);
    let two_memories = wat::parse_str(
        "(component (core module $m (memory 1) (memory 1)) (core instance (instantiate $m)))",
    )
    .unwrap();
    for _ in 0..2 {
        let err = check::check(&rt, &two_memories).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid component: ") && err.contains("pooling allocator"),
            "{err}"
        );
    }
    assert_eq!(rt.compiled_in_process(), 0, "compiled again in the host");
    let left: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the code cache: {left:?}");
    // The worker compiled it, for each check (nothing was kept): it succeeded, and its output
    // is compiled code of a component.
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(worker.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "status") {
            let output = std::fs::read(path.with_extension("out")).unwrap();
            runs.push((
                std::fs::read_to_string(&path).unwrap().trim().to_string(),
                wasmtime::Engine::detect_precompiled(&output),
            ));
        }
    }
    let compiled = ("0".to_string(), Some(wasmtime::Precompiled::Component));
    assert_eq!(runs, [compiled.clone(), compiled]);
}

/// The `cluster` import of [`support::wat_listener`]'s `$cluster_ok`: succeeds once `on` is set,
/// refused before (so that start code that exits on it loads: the trial instantiation at load
/// sees it off).
#[derive(Default)]
struct Switch {
    on: std::sync::atomic::AtomicBool,
}

impl kubelisten::runtime::ClusterAccess for Switch {
    fn call(
        &self,
        _: &kubelisten::runtime::Caller,
        _: kubelisten::runtime::ClusterRequest,
    ) -> Result<String, kubelisten::runtime::bindings::kubelisten::listener::cluster::ApiError>
    {
        if self.on.load(Ordering::SeqCst) {
            Ok("{}".into())
        } else {
            Err(
                kubelisten::runtime::bindings::kubelisten::listener::cluster::ApiError::NotFound(
                    "switched off".into(),
                ),
            )
        }
    }
}

/// A runtime whose `cluster` import is `switch`.
fn runtime_with_switch(switch: Arc<Switch>) -> (kubelisten::Runtime, tempfile::TempDir) {
    support::runtime_with(kubelisten::RuntimeConfig {
        cluster: switch,
        ..kubelisten::RuntimeConfig::default()
    })
}

/// A WAT listener (`support::wat_listener(start, create)`) named `name`, backed off for a
/// minute after `threshold` consecutive traps, without a prewarmed spare.
fn wat_named(
    rt: &kubelisten::Runtime,
    name: &str,
    mode: Mode,
    threshold: u32,
    (start, create): (&str, &str),
) -> Arc<Listener> {
    let limits = Limits {
        crash_loop_threshold: threshold,
        crash_loop_backoff: Duration::from_secs(60),
        crash_loop_backoff_max: Duration::from_secs(60),
        prewarm: false,
        ..Limits::default()
    };
    let spec = ListenerSpec {
        name: name.into(),
        path: format!("{name}.wasm").into(),
        mode,
        limits,
        capabilities: Default::default(),
    };
    Arc::new(Listener::from_bytes(rt, &spec, &support::wat_listener(start, create)).unwrap())
}

/// Exits (`wasi:cli/exit.exit(err)`, as a Go `init()` panic ends) once the switch is on.
const EXIT_WHEN_ON: &str = "(if (call $cluster_ok) (then (call $exit (i32.const 1))))";

/// Start code that exits (not on the trial instantiation at load: only later, as start code
/// that depends on its environment may) is a trap during instantiation, not a `skipped` call:
/// it is counted, and crash-loop protection backs the listener off, so the events of its watch
/// wait (a chain report that says `backed_off`, which does not use up an event's retries)
/// instead of being dropped after their retries.
#[test]
fn start_code_that_exits_is_a_trap_during_instantiation_and_backs_the_listener_off() {
    let switch = Arc::new(Switch::default());
    let (rt, _cache) = runtime_with_switch(switch.clone());
    let listener = wat_named(&rt, "exits", Mode::Classname, 1, (EXIT_WHEN_ON, ""));
    let ev = kubelisten_wit(&event(EventKind::Create, "a", None));
    assert_eq!(
        listener.call_event(Export::Create, &ev, &ctx()),
        Outcome::Ok
    );
    switch.on.store(true, Ordering::SeqCst);
    let outcome = listener.call_event(Export::Create, &ev, &ctx());
    assert_eq!(
        outcome,
        Outcome::Trap {
            kind: TrapKind::Other,
            message: "during instantiation: the guest exited with status 1".into(),
            during_instantiation: true,
        }
    );
    assert_eq!(listener.stats().traps.load(Ordering::Relaxed), 1);
    assert!(listener.backoff_remaining().is_some(), "not backed off");
    // The next event is held back without instantiating (its start code would exit again).
    let instances = listener.stats().instances.load(Ordering::Relaxed);
    let report = Chain::new(vec![listener.clone()]).dispatch(&event(EventKind::Delete, "b", None));
    assert!(report.backed_off.is_some(), "{:?}", report.calls);
    assert_eq!(report.calls[0].outcome.label(), "skipped");
    assert_eq!(
        listener.stats().instances.load(Ordering::Relaxed),
        instances
    );
    // Start code that exits at load is refused there, naming the exit.
    let Err(err) = Listener::from_bytes(
        &rt,
        &ListenerSpec {
            name: "exits".into(),
            path: "exits.wasm".into(),
            mode: Mode::Classname,
            limits: Limits::default(),
            capabilities: Default::default(),
        },
        &support::wat_listener(EXIT_WHEN_ON, ""),
    ) else {
        panic!("loaded with start code that exits");
    };
    assert_eq!(
        err.to_string(),
        "listener exits: cannot be instantiated: other trap: the guest exited with status 1"
    );
}

/// An exit during a call is a trap too, with a clear message (not wasmtime's "Exited with i32
/// exit status 1"); a reference instance dropped after it is rebuilt, and start code that exits
/// then is a trap during instantiation.
#[test]
fn an_exit_during_a_call_or_a_reference_rebuild_is_a_trap() {
    let switch = Arc::new(Switch::default());
    let (rt, _cache) = runtime_with_switch(switch.clone());
    let listener = wat_named(
        &rt,
        "exits",
        Mode::Reference,
        1,
        (EXIT_WHEN_ON, EXIT_WHEN_ON),
    );
    switch.on.store(true, Ordering::SeqCst);
    let ev = kubelisten_wit(&event(EventKind::Create, "a", None));
    // The instance built at load serves the call, which exits.
    assert_eq!(
        listener.call_event(Export::Create, &ev, &ctx()),
        Outcome::Trap {
            kind: TrapKind::Other,
            message: "the guest exited with status 1".into(),
            during_instantiation: false,
        }
    );
    assert!(listener.backoff_remaining().is_some(), "not backed off");
    // A call let through anyway (as a rollback is) rebuilds the instance: its start code exits.
    let outcome = listener.call_event_admitted(Export::Create, &ev, &ctx(), listener.pass());
    assert!(
        outcome.trapped_in_instantiation() && outcome.trap_kind() == Some(TrapKind::Other),
        "{outcome:?}"
    );
    assert_eq!(listener.stats().traps.load(Ordering::Relaxed), 2);
}

/// `create` code that takes `count` pollables (`subscribe-duration`, two WASI resources each:
/// the deadline and its pollable) and never drops them.
fn leak_pollables(count: u32) -> String {
    format!(
        "(block $done (loop $leak
           (br_if $done (i32.ge_u (local.get $i) (i32.const {count})))
           (drop (call $subscribe (i64.const 1)))
           (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br $leak)))"
    )
}

/// WASI resources live in host memory, outside the listener's memory limit: a guest that never
/// drops them traps once its store holds a few thousand (kind `memory`), instead of making the
/// host allocate up to a million entries (100+ MB) per instance.
#[test]
fn a_guest_that_never_drops_its_wasi_resources_traps_instead_of_growing_host_memory() {
    let (rt, _capture, _cache) = runtime();
    let ev = kubelisten_wit(&event(EventKind::Create, "a", None));
    let leaky = wat_named(
        &rt,
        "leaky",
        Mode::Classname,
        1000,
        ("", &leak_pollables(20_000)),
    );
    let outcome = leaky.call_event(Export::Create, &ev, &ctx());
    assert_eq!(outcome.trap_kind(), Some(TrapKind::Memory), "{outcome:?}");
    assert!(
        outcome.message().contains("WASI resources"),
        "{}",
        outcome.message()
    );
    // In reference mode they add up across calls: 2,000 entries a call, so the third call
    // reaches the cap and traps, and the instance (its table) is dropped and built again.
    let leaky = wat_named(
        &rt,
        "leaky-ref",
        Mode::Reference,
        1000,
        ("", &leak_pollables(1_000)),
    );
    let kinds: Vec<_> = (0..6)
        .map(|_| leaky.call_event(Export::Create, &ev, &ctx()).trap_kind())
        .collect();
    let memory = Some(TrapKind::Memory);
    assert_eq!(kinds, [None, None, memory, None, None, memory]);
    assert_eq!(leaky.stats().rebuilds.load(Ordering::Relaxed), 2);
}

/// A WAT listener of `bytes` named `name`, with `limits` (no prewarmed spare).
fn wat_listener_named(
    rt: &kubelisten::Runtime,
    name: &str,
    mode: Mode,
    limits: Limits,
    bytes: &[u8],
) -> Arc<Listener> {
    let spec = ListenerSpec {
        name: name.into(),
        path: format!("{name}.wasm").into(),
        mode,
        limits: Limits {
            prewarm: false,
            ..limits
        },
        capabilities: Default::default(),
    };
    Arc::new(Listener::from_bytes(rt, &spec, bytes).unwrap())
}

/// `create` code of [`support::wat_listener`] that returns `err` of `len` bytes: zeros, on
/// pages it grows its memory by.
fn returns_err_of(len: u32) -> String {
    let pages = len.div_ceil(65536);
    format!(
        "(local.set $i (memory.grow (i32.const {pages})))
         (i32.store8 (i32.const 16) (i32.const 1))
         (i32.store (i32.const 20) (i32.mul (local.get $i) (i32.const 65536)))
         (i32.store (i32.const 24) (i32.const {len}))"
    )
}

/// What a guest hands the host in one call is bounded (4 MiB): an `err` string beyond it is
/// refused before it is copied (wasmtime's hostcall fuel is spent on its length), as a `memory`
/// trap, instead of the host copying it whole (up to twice the guest's memory) only to cut it to
/// 4 KiB. A large `err` within the bound is still an error, cut.
#[test]
fn an_err_string_beyond_what_the_host_copies_traps_before_it_is_copied() {
    let (rt, _capture, _cache) = runtime();
    let ev = kubelisten_wit(&event(EventKind::Create, "a", None));
    let huge = wat_named(
        &rt,
        "huge-err",
        Mode::Classname,
        1000,
        ("", &returns_err_of(8 << 20)),
    );
    let outcome = huge.call_event(Export::Create, &ev, &ctx());
    assert_eq!(outcome.trap_kind(), Some(TrapKind::Memory), "{outcome:?}");
    let message = outcome.message();
    assert!(
        message.contains("fuel allocated for hostcalls has been exhausted")
            && message.contains("more than 4 MiB in one call"),
        "{message}"
    );
    let large = wat_named(
        &rt,
        "large-err",
        Mode::Classname,
        1000,
        ("", &returns_err_of(1 << 20)),
    );
    match large.call_event(Export::Create, &ev, &ctx()) {
        Outcome::Error(message) => {
            assert!(message.ends_with("(1044480 more bytes cut)"), "{message}");
            assert!(message.capacity() <= 8192, "{}", message.capacity());
        }
        other => panic!("{other:?}"),
    }
}

/// `wasi:random` gives at most 1 MiB per call (less when the listener's memory is smaller): the
/// host builds the bytes before copying them into the guest, so a larger request is refused
/// (a trap) before anything is allocated, rather than the host making 64 MiB for any guest.
#[test]
fn random_bytes_beyond_the_limit_are_refused() {
    let (rt, _capture, _cache) = runtime();
    let ev = kubelisten_wit(&event(EventKind::Create, "a", None));
    let asks = |len: u32| format!("(call $random_bytes (i64.const {len}) (i32.const 128))");
    let listener = |name: &str, len: u32, memory_bytes: usize| {
        let limits = Limits {
            memory_bytes,
            ..Limits::default()
        };
        let bytes = support::wat_listener("", &asks(len));
        wat_listener_named(&rt, name, Mode::Classname, limits, &bytes)
    };
    let outcome = listener("random-2m", 2 << 20, 64 << 20).call_event(Export::Create, &ev, &ctx());
    assert!(outcome.trap_kind().is_some(), "{outcome:?}");
    assert!(
        outcome.message().contains("exceeds limit 1048576"),
        "{}",
        outcome.message()
    );
    let outcome = listener("random-1m", 1 << 20, 64 << 20).call_event(Export::Create, &ev, &ctx());
    assert_eq!(outcome, Outcome::Ok);
    // A listener of 256 KiB gets no more than that.
    let outcome =
        listener("random-small", 512 << 10, 256 << 10).call_event(Export::Create, &ev, &ctx());
    assert!(
        outcome.message().contains("exceeds limit 262144"),
        "{outcome:?}"
    );
}

/// Core functions `snapshot` (its state: `len` zero bytes on pages it grows its memory by) and
/// `restore` (keeps the length of the state it gets at address 144), for
/// [`support::wat_listener_with`].
fn stateful_core(len: u32) -> String {
    stateful_core_with("", len)
}

/// [`stateful_core`] whose `snapshot` first runs `before` (WAT instructions that may call the
/// helpers of [`support::wat_listener`] and use the locals `$i` and `$at`).
fn stateful_core_with(before: &str, len: u32) -> String {
    let pages = len.div_ceil(65536);
    format!(
        r#"(func (export "snapshot") (result i32) (local $i i32) (local $at i32)
             {before}
             (local.set $i (memory.grow (i32.const {pages})))
             (i32.store (i32.const 136) (i32.mul (local.get $i) (i32.const 65536)))
             (i32.store (i32.const 140) (i32.const {len}))
             (i32.const 136))
           (func (export "restore") (param i32 i32) (i32.store (i32.const 144) (local.get 1)))"#
    )
}

/// The component exports of [`stateful_core`], typed `snapshot_result` and `restore_param`.
fn stateful_exports(snapshot_result: &str, restore_param: &str) -> String {
    format!(
        r#"(func (export "snapshot") (result {snapshot_result})
             (canon lift (core func $main "snapshot") (memory $memory) (realloc $realloc)))
           (func (export "restore") (param "state" {restore_param})
             (canon lift (core func $main "restore") (memory $memory) (realloc $realloc)))"#
    )
}

/// A state larger than what a call may hand the host (4 MiB) is handed over whole: `snapshot`
/// may return as much as the listener's memory. The bound is back for the calls after it.
#[test]
fn a_state_beyond_the_hostcall_bound_is_handed_over_and_the_bound_restored() {
    let (rt, _capture, _cache) = runtime();
    let ev = kubelisten_wit(&event(EventKind::Create, "a", None));
    let state = 16 << 20;
    let exports = stateful_exports("(list u8)", "(list u8)");
    let old = support::wat_listener_with(
        "",
        &returns_err_of(8 << 20),
        &stateful_core(state),
        &exports,
    );
    let old = wat_listener_named(&rt, "old", Mode::Reference, Limits::default(), &old);
    let restored_whole =
        format!("(if (i32.ne (i32.load (i32.const 144)) (i32.const {state})) (then unreachable))");
    let new = support::wat_listener_with("", &restored_whole, &stateful_core(state), &exports);
    let new = wat_listener_named(&rt, "new", Mode::Reference, Limits::default(), &new);
    assert!(old.stateful() && new.stateful());
    assert!(new.begin_handover().restore_from(&old));
    assert_eq!(new.call_event(Export::Create, &ev, &ctx()), Outcome::Ok);
    // The old instance's calls after its snapshot have the usual bound again.
    let outcome = old.call_event(Export::Create, &ev, &ctx());
    assert_eq!(outcome.trap_kind(), Some(TrapKind::Memory), "{outcome:?}");
}

/// WAT instructions that log (`info`) a line of `len` bytes `x`, on pages they grow the memory
/// by (they use the local `$at`).
fn logs_line_of(len: u32) -> String {
    let pages = len.div_ceil(65536);
    format!(
        "(local.set $at (i32.mul (memory.grow (i32.const {pages})) (i32.const 65536)))
         (memory.fill (local.get $at) (i32.const 120) (i32.const {len}))
         (call $log (i32.const 2) (local.get $at) (i32.const {len}))"
    )
}

/// The host calls a guest makes during `snapshot` keep the 4 MiB bound on what one call hands
/// the host: only the export's result (the state) may be as large as the guest's memory. A
/// 5 MiB log line is refused before it is copied, which fails the hand-over, instead of being
/// copied whole (up to twice the guest's memory per call, at each hot swap) and cut to 4 KiB.
#[test]
fn a_snapshot_s_host_calls_keep_the_hostcall_bound() {
    let (rt, capture, _cache) = runtime();
    let exports = stateful_exports("(list u8)", "(list u8)");
    let core = stateful_core_with(&logs_line_of(5 << 20), 16);
    let old = support::wat_listener_with("", "", &core, &exports);
    let old = wat_listener_named(&rt, "old", Mode::Reference, Limits::default(), &old);
    let new = support::wat_listener_with("", "", &stateful_core(16), &exports);
    let new = wat_listener_named(&rt, "new", Mode::Reference, Limits::default(), &new);
    // The log call is refused before its line is copied (wasmtime's hostcall fuel, which the
    // host counts as a `memory` trap): nothing reaches the log, the snapshot fails and the new
    // version starts fresh.
    assert!(
        !new.begin_handover().restore_from(&old),
        "the hand-over went through"
    );
    assert_eq!(capture.messages_of("old"), Vec::<String>::new());
}

/// The bound set back for a `snapshot`'s host calls is raised again once they return: a state
/// beyond 4 MiB is handed over whole after a cluster call (whose 1 MiB response makes the
/// guest's `realloc` grow its memory: host calls nested in a host call) and a 1 MiB log line.
#[test]
fn a_state_beyond_the_hostcall_bound_is_handed_over_after_host_calls() {
    let echo = Arc::new(Echo {
        response: format!("\"{}\"", "r".repeat((1 << 20) - 2)),
        bodies: Default::default(),
    });
    let capture = Arc::new(support::Capture::default());
    let cache = tempfile::tempdir().unwrap();
    let rt = kubelisten::Runtime::new(kubelisten::RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        sink: capture.clone(),
        cluster: echo.clone(),
        ..kubelisten::RuntimeConfig::default()
    })
    .unwrap();
    let state = 16 << 20;
    let exports = stateful_exports("(list u8)", "(list u8)");
    let before = format!(
        "(if (i32.eqz (call $cluster_ok)) (then unreachable)) {}",
        logs_line_of(1 << 20)
    );
    let old = support::wat_listener_with("", "", &stateful_core_with(&before, state), &exports);
    let old = wat_listener_named(&rt, "old", Mode::Reference, Limits::default(), &old);
    let restored_whole =
        format!("(if (i32.ne (i32.load (i32.const 144)) (i32.const {state})) (then unreachable))");
    let new = support::wat_listener_with("", &restored_whole, &stateful_core(state), &exports);
    let new = wat_listener_named(&rt, "new", Mode::Reference, Limits::default(), &new);
    assert!(new.begin_handover().restore_from(&old));
    let ev = kubelisten_wit(&event(EventKind::Create, "a", None));
    assert_eq!(new.call_event(Export::Create, &ev, &ctx()), Outcome::Ok);
    assert_eq!(*echo.bodies.lock().unwrap(), [2]);
    let lines = capture.messages_of("old");
    assert!(
        lines.len() == 1 && lines[0].starts_with("xxxx"),
        "{lines:?}"
    );
}

/// A `cluster` import that answers every call with `response` and keeps the size of each
/// request body it gets.
struct Echo {
    response: String,
    bodies: std::sync::Mutex<Vec<usize>>,
}

impl kubelisten::runtime::ClusterAccess for Echo {
    fn call(
        &self,
        _: &kubelisten::runtime::Caller,
        request: kubelisten::runtime::ClusterRequest,
    ) -> Result<String, kubelisten::runtime::bindings::kubelisten::listener::cluster::ApiError>
    {
        if let kubelisten::runtime::ClusterRequest::Create(body) = request {
            self.bodies.lock().unwrap().push(body.len());
        }
        Ok(self.response.clone())
    }
}

/// The bound on what a guest hands the host lets every legitimate transfer through: a request
/// body as large as the API server takes (3 MiB) reaches the host, and what the host hands the
/// guest is not counted: an event with two 3 MiB objects, an 8 MiB cluster response (the most
/// the host reads).
#[test]
fn the_largest_legitimate_transfers_pass_the_hostcall_bound() {
    let echo = Arc::new(Echo {
        response: format!("\"{}\"", "r".repeat((8 << 20) - 2)),
        bodies: Default::default(),
    });
    let (rt, _cache) = support::runtime_with(kubelisten::RuntimeConfig {
        cluster: echo.clone(),
        ..kubelisten::RuntimeConfig::default()
    });
    let body = format!(r#"{{"kind":"ConfigMap","x":"{}"}}"#, "b".repeat(3 << 20));
    let creates = support::wat_listener_creating(
        "",
        "(if (i32.eqz (call $cluster_ok)) (then unreachable))",
        &body,
    );
    let listener = wat_listener_named(&rt, "big", Mode::Classname, Limits::default(), &creates);
    let mut ev = event(EventKind::Update, "a", None);
    let object: Arc<str> = Arc::from(format!(r#"{{"x":"{}"}}"#, "o".repeat(3 << 20)));
    ev.object = object.clone();
    ev.old_object = Some(object);
    let outcome = listener.call_event(Export::Create, &kubelisten_wit(&ev), &ctx());
    assert_eq!(outcome, Outcome::Ok);
    assert_eq!(*echo.bodies.lock().unwrap(), [body.len()]);
}

/// A module that exports `snapshot` or `restore` must export both with the signatures of the
/// `stateful-listener` world: the host calls them at every hot swap, so a mistyped one would
/// lose the state each time, with only a warning. `check` (and loading) names it.
#[test]
fn check_names_a_mistyped_or_missing_state_hand_over_export() {
    let (rt, _capture, _cache) = runtime();
    let core = stateful_core(16);
    let module = |exports: &str| support::wat_listener_with("", "", &core, exports);
    let problems = |exports: &str| check::check(&rt, &module(exports)).unwrap_err().0;

    let snapshot_string = problems(&stateful_exports("string", "(list u8)"));
    assert_eq!(
        snapshot_string,
        [
            "export `snapshot` must be `snapshot: func() -> list<u8>` (world stateful-listener: \
          the state hand-over at a hot swap)"
        ]
    );
    let restore_string = problems(&stateful_exports("(list u8)", "string"));
    assert_eq!(restore_string.len(), 1, "{restore_string:?}");
    assert!(
        restore_string[0].starts_with("export `restore` must be `restore: func(state: list<u8>)`"),
        "{restore_string:?}"
    );
    let snapshot_only = problems(
        r#"(func (export "snapshot") (result (list u8))
             (canon lift (core func $main "snapshot") (memory $memory)))"#,
    );
    assert_eq!(snapshot_only.len(), 1, "{snapshot_only:?}");
    assert!(
        snapshot_only[0].starts_with("missing export `restore: func(state: list<u8>)`"),
        "{snapshot_only:?}"
    );
    // Loading says the same.
    let spec = ListenerSpec {
        name: "mistyped".into(),
        path: "mistyped.wasm".into(),
        mode: Mode::Reference,
        limits: Limits::default(),
        capabilities: Default::default(),
    };
    let err = Listener::from_bytes(
        &rt,
        &spec,
        &module(&stateful_exports("string", "(list u8)")),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("export `snapshot` must be"), "{err}");

    // Both, well typed: a stateful listener; neither: a listener that starts fresh at a swap.
    let good = module(&stateful_exports("(list u8)", "(list u8)"));
    check::check(&rt, &good).unwrap();
    assert!(Listener::from_bytes(&rt, &spec, &good).unwrap().stateful());
    let plain = support::wat_listener("", "");
    assert!(!Listener::from_bytes(&rt, &spec, &plain).unwrap().stateful());
}

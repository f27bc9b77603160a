//! Shared helpers of the sandbox tests (no cluster): guest paths, a capturing log sink, events.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kubelisten::event::{EventKind, ObjectMeta, ResourceEvent};
use kubelisten::runtime::{GuestLogSink, LogLevel, Runtime, RuntimeConfig};

/// Path of a guest built by `make guests`; panics with the build command when missing.
pub fn guest(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest {name} is not built: run `make guests` (missing {})",
        path.display()
    );
    path
}

/// One captured guest log line.
#[derive(Debug, Clone)]
pub struct Line {
    pub listener: String,
    pub object: String,
    pub event_kind: String,
    pub level: LogLevel,
    pub message: String,
}

/// A sink that keeps every line.
#[derive(Default)]
pub struct Capture(pub Mutex<Vec<Line>>);

impl Capture {
    pub fn lines(&self) -> Vec<Line> {
        self.0.lock().unwrap().clone()
    }

    pub fn messages_of(&self, listener: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.listener == listener)
            .map(|l| l.message)
            .collect()
    }
}

impl GuestLogSink for Capture {
    fn log(&self, listener: &str, object: &str, event_kind: &str, level: LogLevel, message: &str) {
        self.0.lock().unwrap().push(Line {
            listener: listener.into(),
            object: object.into(),
            event_kind: event_kind.into(),
            level,
            message: message.into(),
        });
    }
}

/// A runtime whose guest logs go to a fresh [`Capture`], with its own code cache directory.
pub fn runtime() -> (Runtime, Arc<Capture>, tempfile::TempDir) {
    let capture = Arc::new(Capture::default());
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        sink: capture.clone(),
        ..RuntimeConfig::default()
    })
    .unwrap();
    (runtime, capture, cache)
}

/// Like [`runtime`] with an instance pool of `pool_instances` component instances.
pub fn runtime_with_pool(pool_instances: u32) -> (Runtime, tempfile::TempDir) {
    runtime_with(RuntimeConfig {
        pool_instances,
        ..RuntimeConfig::default()
    })
}

/// A runtime of `config` with its own code cache directory, its guest logs going to a fresh
/// [`Capture`].
pub fn runtime_with(config: RuntimeConfig) -> (Runtime, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        sink: Arc::new(Capture::default()),
        ..config
    })
    .unwrap();
    (runtime, cache)
}

/// A `create` event for `name` with an optional `kubelisten.dev/fault` annotation.
pub fn event(kind: EventKind, name: &str, fault: Option<&str>) -> ResourceEvent {
    let annotations = fault.map_or_else(String::new, |f| {
        format!(r#","annotations":{{"kubelisten.dev/fault":"{f}"}}"#)
    });
    let raw = format!(
        r#"{{"apiVersion":"test.kubelisten.dev/v1","kind":"Thing","metadata":{{"name":"{name}","namespace":"ns","uid":"uid-{name}","resourceVersion":"1","generation":1{annotations}}},"spec":{{"replicas":1}}}}"#
    );
    let meta = ObjectMeta::from_json(&raw).unwrap();
    ResourceEvent::new(kind, Arc::from(raw), meta, Default::default())
}

/// A listener component written in WAT, for faults no guest language shows on demand. Its core
/// module's start function runs `start` and `create` runs `create` (WAT instructions) before
/// returning `ok`; every other export returns `ok` at once. They may call:
///
/// - `$exit` (`wasi:cli/exit.exit`; `(i32.const 1)` is `err`),
/// - `$subscribe` (`wasi:clocks/monotonic-clock.subscribe-duration`, `i64` nanoseconds, returns
///   the pollable's handle, which nothing drops unless the code does),
/// - `$cluster_ok`, returning 1 when `kubelisten:listener/cluster.create` of `{}` succeeds,
///   0 when it returns an `api-error`,
/// - `$random_bytes` (`wasi:random/random.get-random-bytes`: `i64` length, `i32` address where
///   the list's pointer and length are written),
/// - `$log` (`kubelisten:listener/log.log`: level, 0 to 4 for `trace` to `error`, then the
///   message's address and length).
///
/// A local `$i` (`i32`) is free for loops in both.
pub fn wat_listener(start: &str, create: &str) -> Vec<u8> {
    wat_listener_creating(start, create, "{}")
}

/// [`wat_listener`] whose `$cluster_ok` creates `object` (JSON) rather than `{}`. After a call,
/// the result's case is the byte at 32 (1: an `api-error`) and the error's case the byte at 36
/// (2: `forbidden-by-policy`).
pub fn wat_listener_creating(start: &str, create: &str, object: &str) -> Vec<u8> {
    wat_component(start, create, object, "", "")
}

/// [`wat_listener`] with more: `core` is added to its core module (which exports `create` and
/// so on, as `$main`), `exports` to the component (after the listener's exports; `$memory` and
/// `$realloc` are the memory and allocator to lift with).
pub fn wat_listener_with(start: &str, create: &str, core: &str, exports: &str) -> Vec<u8> {
    wat_component(start, create, "{}", core, exports)
}

fn wat_component(start: &str, create: &str, object: &str, core: &str, exports: &str) -> Vec<u8> {
    let wat = r#"
(component $listener
  (import "wasi:cli/exit@0.2.0" (instance $exit
    (export "exit" (func (param "status" (result))))))
  (import "wasi:io/poll@0.2.0" (instance $poll
    (export "pollable" (type (sub resource)))))
  (alias export $poll "pollable" (type $pollable))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (alias outer $listener $pollable (type $p))
    (export "pollable" (type $pollable-export (eq $p)))
    (type $own-pollable (own $pollable-export))
    (export "subscribe-duration" (func (param "when" u64) (result $own-pollable)))))
  (import "wasi:random/random@0.2.0" (instance $random
    (export "get-random-bytes" (func (param "len" u64) (result (list u8))))))
  (import "kubelisten:listener/cluster@0.1.0" (instance $cluster
    (type $api-error-def (variant
      (case "not-found" string) (case "conflict" string) (case "forbidden-by-policy" string)
      (case "forbidden-by-rbac" string) (case "invalid" string) (case "timeout" string)
      (case "other" string)))
    (export "api-error" (type $api-error (eq $api-error-def)))
    (export "create" (func (param "object" string) (result (result string (error $api-error)))))))
  (import "kubelisten:listener/log@0.1.0" (instance $log
    (type $level-def (enum "trace" "debug" "info" "warn" "error"))
    (export "level" (type $level (eq $level-def)))
    (export "log" (func (param "level" $level) (param "message" string)))))

  ;; Memory and a bump allocator (never frees: enough for a test's few events).
  (core module $libc
    (memory (export "memory") PAGES)
    (global $heap (mut i32) (i32.const HEAP))
    (func (export "realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
      (local $at i32)
      (local.set $at
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get $align))))
      (global.set $heap (i32.add (local.get $at) (local.get $size)))
      (block $done
        (loop $grow
          (br_if $done
            (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
          (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
          (br $grow)))
      (local.get $at)))
  (core instance $libc (instantiate $libc))
  (alias core export $libc "memory" (core memory $memory))
  (alias core export $libc "realloc" (core func $realloc))

  (alias export $exit "exit" (func $exit-func))
  (alias export $clock "subscribe-duration" (func $subscribe-func))
  (alias export $cluster "create" (func $cluster-create-func))
  (core func $exit-core (canon lower (func $exit-func)))
  (core func $subscribe-core (canon lower (func $subscribe-func)))
  (core func $cluster-create-core
    (canon lower (func $cluster-create-func) (memory $memory) (realloc $realloc)))
  (alias export $random "get-random-bytes" (func $random-bytes-func))
  (core func $random-bytes-core
    (canon lower (func $random-bytes-func) (memory $memory) (realloc $realloc)))
  (alias export $log "log" (func $log-func))
  (core func $log-core (canon lower (func $log-func) (memory $memory)))
  (core instance $host
    (export "log" (func $log-core))
    (export "exit" (func $exit-core))
    (export "subscribe-duration" (func $subscribe-core))
    (export "cluster-create" (func $cluster-create-core))
    (export "random-bytes" (func $random-bytes-core)))

  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "exit" (func $exit (param i32)))
    (import "host" "subscribe-duration" (func $subscribe (param i64) (result i32)))
    (import "host" "cluster-create" (func $cluster_create (param i32 i32 i32)))
    (import "host" "random-bytes" (func $random_bytes (param i64 i32)))
    (import "host" "log" (func $log (param i32 i32 i32)))
    ;; 16: the `ok` result of every export; 32: the cluster call's result; 64: its object.
    (data (i32.const 64) "OBJECT")
    (func $cluster_ok (result i32)
      (call $cluster_create (i32.const 64) (i32.const OBJLEN) (i32.const 32))
      (i32.eqz (i32.load8_u (i32.const 32))))
    (func $start (local $i i32) START)
    (start $start)
    (func (export "create") (param i32) (result i32) (local $i i32) CREATE (i32.const 16))
    (func (export "update") (param i32) (result i32) (i32.const 16))
    (func (export "delete") (param i32) (result i32) (i32.const 16))
    (func (export "error") (param i32 i32 i32 i32 i32) (result i32) (i32.const 16))
    (func (export "rollback") (param i32))
    EXTRA_CORE)
  (core instance $main (instantiate $main
    (with "libc" (instance $libc))
    (with "host" (instance $host))))

  ;; The listener world's types, exported so that the exports may use them.
  (type $event-kind-def (enum "create" "update" "delete"))
  (export $event-kind "event-kind" (type $event-kind-def))
  (type $status-def (enum "in-progress" "failed" "current" "terminating" "not-found" "unknown"))
  (export $status "status" (type $status-def))
  (type $object-meta-def (record
    (field "api-version" string) (field "kind" string) (field "name" string)
    (field "namespace" (option string)) (field "uid" string) (field "resource-version" string)
    (field "generation" (option s64))
    (field "labels" (list (tuple string string)))
    (field "annotations" (list (tuple string string)))))
  (export $object-meta "object-meta" (type $object-meta-def))
  (type $object-status-def (record (field "status" $status) (field "message" string)))
  (export $object-status "object-status" (type $object-status-def))
  (type $event-def (record
    (field "kind" $event-kind) (field "object" string) (field "old-object" (option string))
    (field "meta" $object-meta) (field "initial" bool) (field "status" $object-status)))
  (export $event "event" (type $event-def))
  (type $watch-error-def (record
    (field "code" u16) (field "reason" string) (field "message" string)))
  (export $watch-error "watch-error" (type $watch-error-def))

  (type $handler (func (param "ev" $event) (result (result (error string)))))
  (func $create (type $handler)
    (canon lift (core func $main "create") (memory $memory) (realloc $realloc)))
  (func $update (type $handler)
    (canon lift (core func $main "update") (memory $memory) (realloc $realloc)))
  (func $delete (type $handler)
    (canon lift (core func $main "delete") (memory $memory) (realloc $realloc)))
  (func $error (param "err" $watch-error) (result (result (error string)))
    (canon lift (core func $main "error") (memory $memory) (realloc $realloc)))
  (func $rollback (param "ev" $event)
    (canon lift (core func $main "rollback") (memory $memory) (realloc $realloc)))
  (export "create" (func $create))
  (export "update" (func $update))
  (export "delete" (func $delete))
  (export "error" (func $error))
  (export "rollback" (func $rollback))
  EXTRA_EXPORTS)
"#;
    // The object after the code: its JSON must not be searched for the placeholders.
    let escaped: String = object
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => format!("\\{b:02x}"),
            _ => char::from(b).to_string(),
        })
        .collect();
    let wat = wat
        .replace("START", start)
        .replace("CREATE", create)
        .replace("EXTRA_CORE", core)
        .replace("EXTRA_EXPORTS", exports)
        // The heap starts after the object (at 4096 at least), in the initial memory.
        .replace(
            "HEAP",
            &(64 + object.len())
                .next_multiple_of(8)
                .max(4096)
                .to_string(),
        )
        .replace(
            "PAGES",
            &(64 + object.len()).div_ceil(65536).max(1).to_string(),
        )
        .replace("OBJLEN", &object.len().to_string())
        .replace("OBJECT", &escaped);
    wat::parse_str(&wat).unwrap_or_else(|e| panic!("{e}"))
}

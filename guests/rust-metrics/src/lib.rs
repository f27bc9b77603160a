//! Reference-mode listener that counts creates, updates and deletes across events (skafos' `Metrics`).
//!
//! Run it in reference mode: the counters live in the persistent instance. In classname mode every
//! event gets a fresh instance, so every total starts from zero again.

use std::sync::atomic::{AtomicU64, Ordering};

wit_bindgen::generate!({ path: "../../wit", world: "listener" });

use kubelisten::listener::log::{log, Level};

static CREATES: AtomicU64 = AtomicU64::new(0);
static UPDATES: AtomicU64 = AtomicU64::new(0);
static DELETES: AtomicU64 = AtomicU64::new(0);

fn count(counter: &AtomicU64) -> Result<(), String> {
    counter.fetch_add(1, Ordering::Relaxed);
    log(
        Level::Info,
        &format!(
            "totals creates={} updates={} deletes={}",
            CREATES.load(Ordering::Relaxed),
            UPDATES.load(Ordering::Relaxed),
            DELETES.load(Ordering::Relaxed)
        ),
    );
    Ok(())
}

struct Metrics;

impl Guest for Metrics {
    fn create(_ev: Event) -> Result<(), String> {
        count(&CREATES)
    }

    fn update(_ev: Event) -> Result<(), String> {
        count(&UPDATES)
    }

    fn delete(_ev: Event) -> Result<(), String> {
        count(&DELETES)
    }

    fn error(err: WatchError) -> Result<(), String> {
        log(
            Level::Warn,
            &format!("watch error {} {}: {}", err.code, err.reason, err.message),
        );
        Ok(())
    }

    fn rollback(_ev: Event) {
        log(Level::Info, "rollback: counters keep their values");
    }
}

export!(Metrics);

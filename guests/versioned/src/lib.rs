//! A reference-mode counter for the hot-swap tests, built in several versions:
//! `KUBELISTEN_GUEST_VERSION` (at build time) names the version in every log line, and the
//! `handover` feature implements the `stateful-listener` world so the count survives a swap.
//!
//! Each create/update logs `versioned <version> <namespace>/<name> rv=<rv> count=<n>`; with
//! `handover`, `snapshot` and `restore` log `handover <version> snapshot|restore count=<n>`.

use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "handover")]
wit_bindgen::generate!({ path: "../../wit", world: "stateful-listener" });
#[cfg(not(feature = "handover"))]
wit_bindgen::generate!({ path: "../../wit", world: "listener" });

use kubelisten::listener::log::{log, Level};

const VERSION: &str = match option_env!("KUBELISTEN_GUEST_VERSION") {
    Some(v) => v,
    None => "dev",
};

static COUNT: AtomicU64 = AtomicU64::new(0);

fn handle(ev: &Event) -> Result<(), String> {
    let count = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    log(
        Level::Info,
        &format!(
            "versioned {VERSION} {}/{} rv={} count={count}",
            ev.meta.namespace.as_deref().unwrap_or("-"),
            ev.meta.name,
            ev.meta.resource_version
        ),
    );
    Ok(())
}

struct Versioned;

impl Guest for Versioned {
    fn create(ev: Event) -> Result<(), String> {
        handle(&ev)
    }

    fn update(ev: Event) -> Result<(), String> {
        handle(&ev)
    }

    fn delete(_ev: Event) -> Result<(), String> {
        Ok(())
    }

    fn error(_err: WatchError) -> Result<(), String> {
        Ok(())
    }

    fn rollback(_ev: Event) {}

    #[cfg(feature = "handover")]
    fn snapshot() -> Vec<u8> {
        let count = COUNT.load(Ordering::Relaxed);
        log(
            Level::Info,
            &format!("handover {VERSION} snapshot count={count}"),
        );
        count.to_le_bytes().to_vec()
    }

    #[cfg(feature = "handover")]
    fn restore(state: Vec<u8>) {
        if let Ok(bytes) = <[u8; 8]>::try_from(state.as_slice()) {
            let count = u64::from_le_bytes(bytes);
            COUNT.store(count, Ordering::Relaxed);
            log(
                Level::Info,
                &format!("handover {VERSION} restore count={count}"),
            );
        }
    }
}

export!(Versioned);

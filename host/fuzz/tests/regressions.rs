//! Replays every input under `seeds/<target>/` and `regressions/<target>/` through its fuzz
//! target's body (`kubelisten_fuzz::<target>`), on stable Rust with plain `cargo test`: a seed
//! or a crash found by fuzzing that panics again fails here. Run by `make test`
//! (`make test-fuzz-inputs`).

use std::path::Path;

/// Runs `body` on every file of `seeds/<target>` and `regressions/<target>` (either may be
/// absent); returns how many inputs were replayed.
fn replay(target: &str, body: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    for dir in ["seeds", "regressions"] {
        let dir = root.join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .map(|e| e.expect("read a directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("read an input");
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(outcome.is_ok(), "{} panicked", file.display());
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn config_inputs() {
    assert!(replay("config", kubelisten_fuzz::config) > 0, "no seeds");
}

#[test]
fn crd_inputs() {
    assert!(replay("crd", kubelisten_fuzz::crd) > 0, "no seeds");
}

#[test]
fn watch_events_inputs() {
    assert!(
        replay("watch_events", kubelisten_fuzz::watch_events) > 0,
        "no seeds"
    );
}

#[test]
fn configmap_inputs() {
    assert!(
        replay("configmap", kubelisten_fuzz::configmap) > 0,
        "no seeds"
    );
}

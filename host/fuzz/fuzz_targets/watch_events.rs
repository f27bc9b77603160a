//! Fuzz target `watch_events`: see `kubelisten_fuzz::watch_events` (host/fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubelisten_fuzz::watch_events(data));

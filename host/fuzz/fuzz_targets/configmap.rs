//! Fuzz target `configmap`: see `kubelisten_fuzz::configmap` (host/fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubelisten_fuzz::configmap(data));

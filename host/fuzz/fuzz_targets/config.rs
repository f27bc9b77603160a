//! Fuzz target `config`: see `kubelisten_fuzz::config` (host/fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubelisten_fuzz::config(data));

//! Fuzz target `crd`: see `kubelisten_fuzz::crd` (host/fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubelisten_fuzz::crd(data));

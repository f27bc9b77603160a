//! Host bindings generated from the listener world in `wit/`; nothing else lives here.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "listener",
});

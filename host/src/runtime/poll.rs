//! `wasi:io/poll` bounded by the call's time limit.
//!
//! The epoch deadline only interrupts a guest while it runs wasm code. A guest that sleeps
//! (`std::thread::sleep`, Python's `time.sleep`, any `pollable.block`) waits inside the host,
//! where no epoch check happens, and would hold its thread, its object's queue and, in reference
//! mode, its instance for as long as it asked. These replacements for wasmtime-wasi's
//! synchronous `poll`, `pollable.block` and `pollable.ready` wait at most until the call's time
//! limit and then trap with [`wasmtime::Trap::Interrupt`], which is classified as `deadline`
//! like a busy loop. A halt of the runtime ends the wait at once.

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sync::io::poll;
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;
use wasmtime_wasi_io::poll::DynPollable;

use super::state::HostState;

/// The resource table, the time the current call has left, and the runtime's halt.
pub(crate) struct BoundedPoll<'a> {
    table: &'a mut ResourceTable,
    left: std::time::Duration,
    halt: tokio_util::sync::CancellationToken,
}

struct HasBoundedPoll;

impl HasData for HasBoundedPoll {
    type Data<'a> = BoundedPoll<'a>;
}

/// Replaces the `wasi:io/poll` functions of `linker` (already holding wasmtime-wasi's) with the
/// bounded ones.
pub(crate) fn shadow_wasi_poll(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = poll::add_to_linker::<HostState, HasBoundedPoll>(linker, |state| {
        let left = state.time_left();
        let halt = state.halt_token().clone();
        BoundedPoll {
            table: state.table_mut(),
            left,
            halt,
        }
    });
    linker.allow_shadowing(false);
    added
}

impl BoundedPoll<'_> {
    /// Runs `wait` for at most the time left, else traps as the deadline would; a halt
    /// ([`Runtime::halt_guests`](super::Runtime::halt_guests)) ends it at once.
    fn bounded<T>(
        &mut self,
        wait: impl AsyncFnOnce(&mut ResourceTable) -> wasmtime::Result<T>,
    ) -> wasmtime::Result<T> {
        let left = self.left;
        let table = &mut *self.table;
        let halt = self.halt.clone();
        wasmtime_wasi::runtime::in_tokio(async move {
            tokio::select! {
                biased;
                () = halt.cancelled() => Err(super::trap::Halted.into()),
                timed = tokio::time::timeout(left, wait(table)) => match timed {
                    Ok(result) => result,
                    Err(_) => Err(wasmtime::Trap::Interrupt.into()),
                },
            }
        })
    }
}

impl poll::Host for BoundedPoll<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        self.bounded(async move |table| async_poll::Host::poll(table, pollables).await)
    }
}

impl poll::HostPollable for BoundedPoll<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        self.bounded(async move |table| async_poll::HostPollable::ready(table, pollable).await)
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        self.bounded(async move |table| async_poll::HostPollable::block(table, pollable).await)
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.table, pollable)
    }
}

//! The process-wide [`Runtime`]: one wasmtime `Engine` (pooling allocator when possible), the
//! `Linker` with every host interface, the epoch ticker, and the on-disk compiled-code cache.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::Listener as ListenerWorld;
use super::compiler::{compile_in_child, ChildFailure, ChildLimits};
use super::host::{ClusterAccess, GuestLogSink, NoCluster, TracingSink};
use super::slot_reset::{slot_reset, SwapFacts};
use super::state::HostState;
use super::{Error, Result};

/// Interval of the epoch ticker; call deadlines are rounded up to whole ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The longest stretch, in epoch ticks, a guest runs between two checks of its deadline
/// callback (time left, [`Runtime::halt_guests`]): 100 ms.
pub const HALT_CHECK_TICKS: u64 = 10;

/// Settings of the [`Runtime`].
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Directory of the compiled-code cache (`None` disables it). It keeps the 256 most recently
    /// used entries of this engine; entries of other engines are removed.
    pub cache_dir: Option<PathBuf>,
    /// Try the pooling instance allocator first (falls back to on-demand when it cannot be used).
    pub pooling: bool,
    /// Instances the pool holds at once (fresh classname instances in flight plus reference ones).
    pub pool_instances: u32,
    /// Where guest log lines go.
    pub sink: Arc<dyn GuestLogSink>,
    /// What serves the guests' `cluster` import ([`NoCluster`] refuses every call).
    pub cluster: Arc<dyn ClusterAccess>,
    /// A program that compiles components in a child process when run as
    /// `PROGRAM compile-worker` (the `kubelisten` binary itself; see [`super::compiler`]);
    /// `None` compiles in this process.
    pub compiler: Option<PathBuf>,
    /// How long the compiler process may take for one module; a module it has not compiled by
    /// then is rejected (compiling in this process has no such bound).
    pub compile_timeout: Duration,
    /// Bytes of data the compiler process may allocate (`RLIMIT_DATA`); a module that needs more
    /// is rejected (at least [`super::compiler::MIN_MEMORY`]). The largest guests here need the
    /// most: JavaScript 448 MiB, Python 416, Rust ones under 64 (two compiler threads;
    /// BENCHMARKS.md, "Compiler process memory").
    pub compile_memory: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: default_cache_dir(),
            pooling: true,
            pool_instances: 256,
            sink: Arc::new(TracingSink),
            cluster: Arc::new(NoCluster),
            compiler: None,
            compile_timeout: DEFAULT_COMPILE_TIMEOUT,
            compile_memory: DEFAULT_COMPILE_MEMORY,
        }
    }
}

/// The default [`RuntimeConfig::compile_timeout`]: ample for the multi-megabyte Python and
/// JavaScript guests on a slow machine, a bound for a module that makes the compiler spin.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(600);

/// The default [`RuntimeConfig::compile_memory`]: 2 GiB, five times what the largest guests
/// here need.
pub const DEFAULT_COMPILE_MEMORY: u64 = 2 << 30;

/// `$KUBELISTEN_CACHE_DIR`, else `$XDG_CACHE_HOME/kubelisten/compiled`, else
/// `~/.cache/kubelisten/compiled`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KUBELISTEN_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("kubelisten").join("compiled"))
}

/// Which instance allocator the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorKind {
    /// Pre-reserved slots, memory kept resident between instances: the fast path.
    Pooling,
    /// mmap per instance: used when the address space does not allow the pool.
    OnDemand,
}

struct Inner {
    engine: Engine,
    linker: Linker<HostState>,
    allocator: AllocatorKind,
    config: RuntimeConfig,
    stop_ticker: Arc<AtomicBool>,
    /// Modules loaded from the disk or memory cache instead of being compiled.
    cache_hits: std::sync::atomic::AtomicU64,
    /// Modules compiled by the compiler process ([`RuntimeConfig::compiler`]).
    compiled_in_child: std::sync::atomic::AtomicU64,
    /// Modules compiled in this process (no compiler process, or it could not be used).
    compiled_in_process: std::sync::atomic::AtomicU64,
    /// The components compiled or loaded last, by digest, least recently used first, so loading a
    /// module again (a swap back) is immediate (see [`MEMORY_CACHE_ENTRIES`]).
    compiled: std::sync::Mutex<Vec<(String, Component)>>,
    /// Prewarmed spare instances alive now (see [`Runtime::reserve_spare`]).
    spares: AtomicU32,
    /// How many spares may be alive at once.
    spare_budget: u32,
    /// Compiled-code cache entries of this engine kept on disk (see [`DISK_CACHE_ENTRIES`]).
    disk_cache_entries: usize,
    /// Bytes of this engine's compiled code kept on disk (see [`DISK_CACHE_BYTES`]).
    disk_cache_bytes: u64,
    /// Set once it was logged that the cache directory cannot hold executable code.
    unmappable_cache_logged: AtomicBool,
    /// Cancelled by [`Runtime::halt_guests`]: every guest call stops at its next check.
    halt: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// The process-wide wasm runtime; cheap to clone.
#[derive(Clone)]
pub struct Runtime(Arc<Inner>);

impl Runtime {
    /// Creates the engine (pooling allocator if the machine allows, else on-demand, logged),
    /// the linker with WASI p2 (nothing granted) and the listener imports, and starts the epoch
    /// ticker thread.
    ///
    /// # Errors
    /// [`Error::EngineFailed`] when no engine can be built.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        Self::with_disk_cache_bounds(config, DISK_CACHE_ENTRIES, DISK_CACHE_BYTES)
    }

    /// [`Runtime::new`] keeping at most `disk_cache_entries` compiled-code cache entries and
    /// `disk_cache_bytes` bytes.
    fn with_disk_cache_bounds(
        config: RuntimeConfig,
        disk_cache_entries: usize,
        disk_cache_bytes: u64,
    ) -> Result<Self> {
        let (engine, allocator) = build_engine(&config)?;
        tracing::info!(allocator = ?allocator, "wasm engine ready");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| Error::EngineFailed(e.into()))?;
        super::poll::shadow_wasi_poll(&mut linker).map_err(|e| Error::EngineFailed(e.into()))?;
        ListenerWorld::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| Error::EngineFailed(e.into()))?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), stop_ticker.clone());
        let spare_budget = spare_budget(allocator, config.pool_instances);
        Ok(Self(Arc::new(Inner {
            engine,
            linker,
            allocator,
            config,
            stop_ticker,
            compiled: std::sync::Mutex::default(),
            cache_hits: std::sync::atomic::AtomicU64::new(0),
            compiled_in_child: std::sync::atomic::AtomicU64::new(0),
            compiled_in_process: std::sync::atomic::AtomicU64::new(0),
            spares: AtomicU32::new(0),
            spare_budget,
            disk_cache_entries,
            disk_cache_bytes,
            unmappable_cache_logged: AtomicBool::new(false),
            halt: CancellationToken::new(),
        })))
    }

    /// Stops every guest call of this runtime, for the end of a run: the leadership was lost
    /// or the shutdown grace ran out, and a call still running must not go on computing (its
    /// cluster calls are refused already, see `KubeCluster::stop_calls`). A guest running wasm
    /// is interrupted at its next epoch check (every 10 epoch ticks, 100 ms), a
    /// guest waiting in `wasi:io/poll` at once; the call traps with kind `other`
    /// (`Halted`). Calls started later trap at their first check.
    /// It cannot be undone.
    pub fn halt_guests(&self) {
        self.0.halt.cancel();
    }

    /// Whether [`Runtime::halt_guests`] was called.
    pub fn halted(&self) -> bool {
        self.0.halt.is_cancelled()
    }

    /// The token [`Runtime::halt_guests`] cancels, for each store.
    pub(crate) fn halt_token(&self) -> CancellationToken {
        self.0.halt.clone()
    }

    /// Reserves room for one prewarmed spare instance, or `None` when spares already hold their
    /// share of the instance pool (a quarter of `pool_instances`; no cap with on-demand
    /// allocation). Idle spares must never take the slots that events in flight and reference
    /// instances need: with more classname listeners than that share, the ones past it simply
    /// instantiate inline. The reservation ends when the ticket is dropped.
    pub(crate) fn reserve_spare(&self) -> Option<SpareTicket> {
        self.0
            .spares
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.0.spare_budget).then_some(n + 1)
            })
            .ok()
            .map(|_| SpareTicket(self.clone()))
    }

    /// Prewarmed spare instances alive now.
    pub fn spare_instances(&self) -> u32 {
        self.0.spares.load(Ordering::Acquire)
    }

    /// How many prewarmed spares may be alive at once.
    pub fn spare_budget(&self) -> u32 {
        self.0.spare_budget
    }

    /// Component instances the pool holds now and its capacity (`None` with on-demand
    /// allocation, which has no fixed capacity).
    pub fn pool_usage(&self) -> Option<(u64, u32)> {
        let metrics = self.0.engine.pooling_allocator_metrics()?;
        Some((metrics.component_instances(), self.0.config.pool_instances))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.0.engine
    }

    /// The linker holding every host interface.
    pub(crate) fn linker(&self) -> &Linker<HostState> {
        &self.0.linker
    }

    /// Which allocator is in use.
    pub fn allocator(&self) -> AllocatorKind {
        self.0.allocator
    }

    /// Where guest log lines go.
    pub(crate) fn sink(&self) -> Arc<dyn GuestLogSink> {
        self.0.config.sink.clone()
    }

    /// What serves the guests' `cluster` import.
    pub(crate) fn cluster(&self) -> Arc<dyn ClusterAccess> {
        self.0.config.cluster.clone()
    }

    /// Compiles `bytes` (a component), through the on-disk cache keyed by the content digest
    /// and the engine's compatibility hash. Returns the component and its `sha256:` digest.
    pub(crate) fn compile(&self, bytes: &[u8]) -> wasmtime::Result<(Component, String)> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let memory = || {
            self.0
                .compiled
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        {
            let mut memory = memory();
            if let Some(at) = memory.iter().position(|(d, _)| *d == digest) {
                let entry = memory.remove(at);
                let component = entry.1.clone();
                memory.push(entry);
                self.0.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok((component, digest));
            }
        }
        let component = self.compile_uncached(bytes, &digest)?;
        let mut memory = memory();
        memory.push((digest.clone(), component.clone()));
        if memory.len() > MEMORY_CACHE_ENTRIES {
            // A running listener keeps its own handle: only the cache's is dropped.
            memory.remove(0);
        }
        Ok((component, digest))
    }

    /// Compiles `bytes` into the caches (memory and disk) ahead of use, so that loading a
    /// listener of that module later does not wait for the compiler: a standby does this while
    /// it waits for the leadership, so that a failover does not compile. Returns the module's
    /// digest, or `None` when it does not compile (that is reported when it is loaded).
    pub fn precompile(&self, bytes: &[u8]) -> Option<String> {
        self.compile(bytes).ok().map(|(_, digest)| digest)
    }

    /// How many compiled components the memory cache holds.
    pub fn memory_cache_len(&self) -> usize {
        self.0
            .compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    fn compile_uncached(&self, bytes: &[u8], digest: &str) -> wasmtime::Result<Component> {
        let Some(dir) = &self.0.config.cache_dir else {
            return self.compile_fresh(bytes, None);
        };
        let engine_hash = self.engine_hash();
        let path = dir.join(format!("{}-{engine_hash}.cwasm", &digest[7..]));
        if path.exists() {
            match self.load_cache_entry(&path) {
                Ok(component) => {
                    self.0.cache_hits.fetch_add(1, Ordering::Relaxed);
                    mark_used(&path);
                    tracing::debug!(%digest, path = %path.display(), "compiled code loaded from cache");
                    return Ok(component);
                }
                Err(err) => {
                    // Compiled again below, and written over; removed now so that a module that
                    // is then rejected (say, by the compiler process) leaves no entry behind.
                    tracing::warn!(path = %path.display(), error = %format!("{err:#}"), "removing unusable cache entry");
                    remove_entry(&path);
                }
            }
        }
        let component = self.compile_fresh(bytes, Some(&path))?;
        if path.exists() {
            evict(
                dir,
                &engine_hash,
                self.0.disk_cache_entries,
                self.0.disk_cache_bytes,
                &path,
            );
        }
        Ok(component)
    }

    /// Loads a compiled-code cache entry: mapped from the file, so that only the code a listener
    /// runs becomes resident (the JavaScript and Python guests' tens of MiB of code, copied into
    /// memory, kept an idle host with the two at 111 MiB; mapped, 30 MiB).
    fn load_cache_entry(&self, path: &Path) -> wasmtime::Result<Component> {
        #[cfg(test)]
        if tests::MAPPING_FAILS.with(std::cell::Cell::get) {
            // What wasmtime says where the mapping cannot be made executable (mprotect EACCES
            // on a `noexec` mount).
            return Err(
                wasmtime::Error::new(std::io::Error::from_raw_os_error(libc::EACCES))
                    .context("unable to make memory executable"),
            );
        }
        // SAFETY: the file was written by `Engine::precompile_component` of an engine with the
        // same compatibility hash (part of the file name; this process or its compiler
        // process, checked by `deserialize_file`), in a directory this process owns.
        unsafe { Component::deserialize_file(&self.0.engine, path) }
    }

    /// Compiles `bytes`: in the compiler process when one is configured, else in this process
    /// (also when the compiler process cannot be used: see [`Runtime::compile_by_worker`]).
    /// With `cache_entry`, the artifact is written there (atomically, through a temporary file)
    /// and loaded from it; an entry that does not load is removed.
    fn compile_fresh(
        &self,
        bytes: &[u8],
        cache_entry: Option<&Path>,
    ) -> wasmtime::Result<Component> {
        if let Some(program) = &self.0.config.compiler {
            match self.compile_by_worker(program, bytes, cache_entry) {
                Ok(component) => {
                    self.0.compiled_in_child.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(program = %program.display(), "compiled by the compiler process");
                    return Ok(component);
                }
                Err(ChildFailure::Rejected(message)) => return Err(wasmtime::Error::msg(message)),
                Err(ChildFailure::Unavailable(err)) => tracing::warn!(
                    program = %program.display(),
                    error = %err,
                    "the compiler process did not compile the module; compiling in this process"
                ),
            }
        }
        let compiled = self.0.engine.precompile_component(bytes)?;
        self.0.compiled_in_process.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("compiled in this process");
        if let Some(path) = cache_entry {
            match write_atomically(path, &compiled) {
                Ok(()) => match self.load_cache_entry(path) {
                    Ok(component) => return Ok(component),
                    Err(err) => {
                        // Loaded from memory below instead (a cache directory that does not
                        // allow mapping code, say), or rejected (the pool's limits): either
                        // way the entry would fail every later load too.
                        remove_entry(path);
                        // SAFETY: `compiled` was produced just now by this engine.
                        let component =
                            unsafe { Component::deserialize(&self.0.engine, &compiled) }?;
                        self.cache_cannot_map(path, &err);
                        return Ok(component);
                    }
                },
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot write compiled-code cache")
                }
            }
        }
        // SAFETY: `compiled` was produced just now by this engine.
        unsafe { Component::deserialize(&self.0.engine, &compiled) }
    }

    /// [`compile_in_child`] (the worker), its artifact streamed into `cache_entry` (through a
    /// temporary file renamed into place) when there is one and it can be written, else into
    /// memory; loaded. An artifact that does not load mapped from the cache file is removed
    /// from the cache and loaded from its bytes (see [`Runtime::load_unmapped`]).
    fn compile_by_worker(
        &self,
        program: &Path,
        bytes: &[u8],
        cache_entry: Option<&Path>,
    ) -> Result<Component, ChildFailure> {
        let limits = ChildLimits {
            timeout: self.0.config.compile_timeout,
            memory: self.0.config.compile_memory,
        };
        let temp = cache_entry.and_then(|path| match create_temp(path) {
            Ok((temp, file)) => Some((path, temp, file)),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot write compiled-code cache");
                None
            }
        });
        let Some((path, temp, file)) = temp else {
            let compiled = compile_in_child(program, bytes, &limits, None)?;
            // SAFETY: the artifact comes from the configured compiler program (this
            // executable), a source as trusted as the cache directory; `deserialize` checks
            // that it was compiled for this engine's settings and wasmtime version.
            return unsafe { Component::deserialize(&self.0.engine, &compiled) }
                .map_err(|err| self.unloadable(&err, Artifact::Bytes(&compiled)));
        };
        let written = compile_in_child(program, bytes, &limits, Some(file)).map(|_| ());
        put_in_place(&temp, path, written)?;
        self.load_cache_entry(path).or_else(|err| {
            let loaded = self.load_unmapped(path, &err);
            remove_entry(path);
            loaded
        })
    }

    /// The compiler process's artifact in the cache file `path`, which did not load mapped
    /// from the file (`err`), loaded from its bytes. The mapping may be what failed (a cache
    /// directory on a `noexec` mount cannot hold executable code) while the code is good:
    /// compiling it again in this process, without the compiler process's memory and time
    /// bounds, would gain nothing. Only when the bytes do not load either is the artifact
    /// judged by [`Runtime::unloadable`].
    fn load_unmapped(&self, path: &Path, err: &wasmtime::Error) -> Result<Component, ChildFailure> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(read) => {
                tracing::warn!(path = %path.display(), error = %read, "cannot read the compiled-code cache entry just written");
                return Err(self.unloadable(err, Artifact::File(path)));
            }
        };
        // SAFETY: as for the load without a cache entry (`compile_by_worker`): the artifact
        // comes from the configured compiler program, and `deserialize` checks that it was
        // compiled for this engine's settings and wasmtime version.
        match unsafe { Component::deserialize(&self.0.engine, &bytes) } {
            Ok(component) => {
                self.cache_cannot_map(path, err);
                Ok(component)
            }
            Err(err) => Err(self.unloadable(&err, Artifact::Bytes(&bytes))),
        }
    }

    /// Logs, once per runtime (at warn; later at debug), that compiled code loaded from its
    /// bytes after mapping its cache entry at `path` failed with `err`: the cache directory
    /// cannot hold executable code, so no entry is kept and each module is compiled again at
    /// the next start.
    fn cache_cannot_map(&self, path: &Path, err: &wasmtime::Error) {
        let dir = path.parent().unwrap_or(path).display();
        let error = format!("{err:#}");
        if self.0.unmappable_cache_logged.swap(true, Ordering::Relaxed) {
            tracing::debug!(%dir, %error, "compiled code loaded into memory: its cache entry cannot be mapped executable");
        } else {
            tracing::warn!(%dir, %error, "the compiled-code cache directory cannot hold executable code (a noexec mount?): compiled code is loaded into memory instead and no cache entry is kept, so every start compiles again");
        }
    }

    /// What the compiler process's `artifact`, which this engine refused with `err`, means.
    ///
    /// - Compiled code of this engine's settings and wasmtime version that only the pooling
    ///   allocator's limits refuse (a core module with more than one memory or table, more
    ///   than 50 core instances in the component, and so on: it loads into an engine of the
    ///   same settings without the pool): [`ChildFailure::Rejected`] with `err`. The module is
    ///   the problem; compiling it again in this process would only produce the same refused
    ///   code, without the compiler process's memory and time bounds.
    /// - Anything else (not a wasmtime component artifact at all, or one of another wasmtime
    ///   version or engine settings: a `--compiler` program that is not this build):
    ///   [`ChildFailure::Unavailable`], and the module is compiled in this process.
    fn unloadable(&self, err: &wasmtime::Error, artifact: Artifact<'_>) -> ChildFailure {
        let message = format!("{err:#}");
        let ours = match artifact {
            Artifact::Bytes(bytes) => {
                Engine::detect_precompiled(bytes) == Some(wasmtime::Precompiled::Component)
                    && self.loads_without_pool(|engine| {
                        // SAFETY: as for the load that failed (`compile_by_worker`).
                        unsafe { Component::deserialize(engine, bytes) }
                    })
            }
            Artifact::File(path) => {
                matches!(
                    Engine::detect_precompiled_file(path),
                    Ok(Some(wasmtime::Precompiled::Component))
                ) && self.loads_without_pool(|engine| {
                    // SAFETY: as for the load that failed (`load_cache_entry`).
                    unsafe { Component::deserialize_file(engine, path) }
                })
            }
        };
        if ours {
            tracing::debug!(error = %message, "the instance pool cannot hold the compiled module; rejecting it");
            ChildFailure::Rejected(message)
        } else {
            ChildFailure::Unavailable(std::io::Error::other(format!(
                "its output is not compiled code of this engine: {message}"
            )))
        }
    }

    /// Whether `load` succeeds with an engine of this one's settings but without the pooling
    /// allocator (`false` when this engine has none: it refused the artifact for another reason).
    fn loads_without_pool(
        &self,
        load: impl FnOnce(&Engine) -> wasmtime::Result<Component>,
    ) -> bool {
        if self.0.allocator != AllocatorKind::Pooling {
            return false;
        }
        match Engine::new(&base_config()) {
            Ok(engine) => load(&engine).is_ok(),
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "cannot create an engine to check the compiler's output");
                false
            }
        }
    }

    /// How many modules the compiler process compiled (see [`RuntimeConfig::compiler`]).
    pub fn compiled_in_child(&self) -> u64 {
        self.0.compiled_in_child.load(Ordering::Relaxed)
    }

    /// How many modules were compiled in this process: without a compiler process, or when it
    /// could not be used (see [`RuntimeConfig::compiler`]).
    pub fn compiled_in_process(&self) -> u64 {
        self.0.compiled_in_process.load(Ordering::Relaxed)
    }

    /// How many modules were loaded from the compiled-code cache (disk or memory) so far.
    pub fn cache_hits(&self) -> u64 {
        self.0.cache_hits.load(Ordering::Relaxed)
    }

    fn engine_hash(&self) -> String {
        let mut hasher = DefaultHasher::new();
        self.0
            .engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }
}

/// The compiler process's output, in memory or in the cache file it was streamed into.
#[derive(Clone, Copy)]
enum Artifact<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// Removes the compiled-code cache entry at `path`, which does not load; a failure is logged
/// (the next load of it fails and removes it again).
fn remove_entry(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove an unloadable compiled-code cache entry")
        }
    }
}

/// Compiled components kept in memory besides the ones in use: enough for every listener of a
/// large configuration to be loaded again at once (a hot swap back), without keeping every
/// version a ConfigMap ever held. Older ones are loaded again from the disk cache.
const MEMORY_CACHE_ENTRIES: usize = 64;

/// Compiled-code cache entries (`<digest>-<engine hash>.cwasm` files) of the running engine
/// kept on disk. After each new entry is written, the least recently used ones beyond this bound
/// or beyond [`DISK_CACHE_BYTES`] are removed (loading an entry counts as a use: it refreshes
/// the file's modification time), and so are the entries of any other engine hash (another
/// kubelisten or wasmtime version) unused for [`FOREIGN_ENTRY_AGE`].
const DISK_CACHE_ENTRIES: usize = 256;

/// Bytes of compiled code of the running engine kept on disk (JavaScript and Python guests
/// compile to tens of MiB each); the entry just written stays even if it alone is larger.
const DISK_CACHE_BYTES: u64 = 1 << 30;

/// Room for one prewarmed spare instance, held while the spare exists
/// ([`Runtime::reserve_spare`]).
pub(crate) struct SpareTicket(Runtime);

impl Drop for SpareTicket {
    fn drop(&mut self) {
        self.0 .0.spares.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Spares may hold a quarter of the pool (none in a pool of 1–3); on-demand has no cap.
fn spare_budget(allocator: AllocatorKind, pool_instances: u32) -> u32 {
    match allocator {
        AllocatorKind::Pooling => pool_instances / 4,
        AllocatorKind::OnDemand => u32::MAX,
    }
}

pub(super) fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config
}

fn build_engine(config: &RuntimeConfig) -> Result<(Engine, AllocatorKind)> {
    if config.pooling {
        match pooling_allowed() {
            Ok(()) => {
                let reset = slot_reset(&SwapFacts::read());
                let mut wasm = base_config();
                wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(
                    config.pool_instances,
                    reset.pagemap_scan,
                )));
                match Engine::new(&wasm) {
                    Ok(engine) => {
                        let slot_reset = if reset.pagemap_scan {
                            "pagemap scan (the pages the last instance dirtied, where the kernel has PAGEMAP_SCAN)"
                        } else {
                            "full (memset of the resident part, the rest decommitted)"
                        };
                        tracing::info!(
                            slot_reset,
                            reason = reset.reason,
                            "instance pool slot reset"
                        );
                        return Ok((engine, AllocatorKind::Pooling));
                    }
                    Err(err) => {
                        tracing::warn!(error = %format!("{err:#}"), "pooling allocator unavailable, using on-demand allocation")
                    }
                }
            }
            Err(why) => tracing::warn!(
                reason = why,
                "pooling allocator unavailable, using on-demand allocation"
            ),
        }
    }
    let engine = Engine::new(&base_config()).map_err(|e| Error::EngineFailed(e.into()))?;
    Ok((engine, AllocatorKind::OnDemand))
}

/// Virtual address space the pool needs per memory slot (default 4 GiB reservation plus guards).
const SLOT_BYTES: u64 = (4 << 30) + (64 << 20);

/// The pool's settings; `pagemap_scan` only where this process cannot swap ([`slot_reset`]).
fn pool(instances: u32, pagemap_scan: bool) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        .total_core_instances(instances * 8)
        .total_memories(instances * 2)
        .total_tables(instances * 4)
        .max_core_instances_per_component(50)
        .max_memories_per_component(10)
        .max_tables_per_component(20)
        .linear_memory_keep_resident(4 << 20)
        .table_keep_resident(64 << 10)
        // With PAGEMAP_SCAN (Linux >= 6.7) only the pages an instance dirtied are reset when its
        // slot is reused, instead of memsetting the whole keep-resident region. Not with swap:
        // the scan skips dirty pages that are swapped out (see `slot_reset`).
        .pagemap_scan(if pagemap_scan {
            wasmtime::Enabled::Auto
        } else {
            wasmtime::Enabled::No
        });
    pool
}

/// Checks the address-space limit; the pool reserves `SLOT_BYTES` per memory slot up front.
fn pooling_allowed() -> std::result::Result<(), &'static str> {
    if cfg!(not(target_pointer_width = "64")) {
        return Err("not a 64-bit host");
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and has no other effect.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) };
    if rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < 64 * SLOT_BYTES {
        return Err("RLIMIT_AS is too small for the pool's address-space reservation");
    }
    Ok(())
}

/// Hands the allocator's free memory back to the system. glibc keeps what is freed in its
/// arenas: after the compiler ran in this process (`--compile-in-process`, or no compiler
/// process could be started), an idle host kept about 10 MiB more RSS than with a warm cache
/// (35 against 25 MiB for three listeners; 33 with this call).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns the allocator's free pages to the system; it takes and
    // keeps no pointer of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn spawn_ticker(engine: Engine, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("kubelisten-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        });
    if let Err(err) = spawned {
        tracing::error!(error = %err, "cannot start the epoch ticker: guest time limits are not enforced");
    }
}

/// Marks the cache entry at `path` as just used (its modification time is what eviction goes
/// by). A failure (an entry another process removed meanwhile, a read-only cache) only makes the
/// entry an earlier candidate for eviction.
fn mark_used(path: &Path) {
    let touched =
        std::fs::File::open(path).and_then(|file| file.set_modified(std::time::SystemTime::now()));
    if let Err(err) = touched {
        tracing::debug!(path = %path.display(), error = %err, "cannot mark a cache entry as used");
    }
}

/// The engine hash in `name` if it is a cache entry's name (`<64 hex digest>-<16 hex>.cwasm`).
fn cache_entry_engine(name: &str) -> Option<&str> {
    let (digest, engine) = name.strip_suffix(".cwasm")?.split_once('-')?;
    let lower_hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    (lower_hex(digest, 64) && lower_hex(engine, 16)).then_some(engine)
}

/// Removes from the cache `dir` the entries of engines other than `engine_hash` and the least
/// recently modified entries of this one beyond `keep` (counting `written`, which is kept).
/// Only regular files named like cache entries are removed: other files (another process's
/// write in progress, anything else put there) are left alone. The directory may be shared by
/// several processes (`default_cache_dir` is per user), so a file that vanished meanwhile is no
/// error; other errors are logged and never fail the compile.
/// How long an entry of another engine (kubelisten or wasmtime version) stays in the disk
/// cache after its last use: a week.
const FOREIGN_ENTRY_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

fn evict(dir: &Path, engine_hash: &str, keep: usize, max_bytes: u64, written: &Path) {
    let remove = |path: &Path, why: &'static str| match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), reason = why, "compiled-code cache entry removed")
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove a compiled-code cache entry")
        }
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot list the compiled-code cache");
            return;
        }
    };
    let (mut ours, mut written_bytes) = (Vec::new(), 0);
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err, "cannot list the compiled-code cache");
                return;
            }
        };
        let name = entry.file_name();
        let Some(engine) = name.to_str().and_then(cache_entry_engine) else {
            continue;
        };
        let path = entry.path();
        // Not followed: a symlink or directory of that name is nothing this cache wrote.
        let meta = match entry.metadata() {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot read a compiled-code cache entry");
                continue;
            }
        };
        if engine != engine_hash {
            // Another kubelisten or wasmtime version: never loadable by this one, but maybe by a
            // version that runs beside it (an installed binary and a dev build share the
            // default directory): removed once unused for FOREIGN_ENTRY_AGE.
            let unused = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > FOREIGN_ENTRY_AGE);
            if unused {
                remove(&path, "compiled by another engine, unused for a week");
            }
        } else if path == written {
            written_bytes = meta.len();
        } else {
            match meta.modified() {
                Ok(modified) => ours.push((modified, meta.len(), path)),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot read a compiled-code cache entry")
                }
            }
        }
    }
    // The oldest first (ties by size, then name); `written` is the newest and counts as one. Removed
    // while there are too many entries or too many bytes.
    ours.sort();
    let mut entries = ours.len() + 1;
    let mut bytes = written_bytes + ours.iter().map(|(_, len, _)| len).sum::<u64>();
    for (_, len, path) in ours {
        if entries <= keep.max(1) && bytes <= max_bytes {
            break;
        }
        remove(&path, "least recently used");
        entries -= 1;
        bytes = bytes.saturating_sub(len);
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let (tmp, mut file) = create_temp(path)?;
    let written = std::io::Write::write_all(&mut file, data);
    drop(file);
    put_in_place(&tmp, path, written)
}

/// Renames the temporary file `tmp` (from [`create_temp`]) to `path` once `written` says it is
/// complete; removes it otherwise.
fn put_in_place<E: From<std::io::Error>>(
    tmp: &Path,
    path: &Path,
    written: Result<(), E>,
) -> Result<(), E> {
    let placed = written.and_then(|()| std::fs::rename(tmp, path).map_err(E::from));
    if placed.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    placed
}

/// Creates a temporary file beside `path` (and `path`'s directory if need be), unique per
/// write, also within a process (two compiles of one module at once).
fn create_temp(path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let file = std::fs::File::create(&tmp)?;
    Ok((tmp, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    /// A runtime caching into `dir` that keeps `keep` entries on disk.
    fn runtime(dir: &Path, keep: usize) -> Runtime {
        runtime_with_bytes(dir, keep, DISK_CACHE_BYTES)
    }

    /// A runtime caching into `dir` that keeps `keep` entries and `bytes` bytes on disk.
    fn runtime_with_bytes(dir: &Path, keep: usize, bytes: u64) -> Runtime {
        Runtime::with_disk_cache_bounds(
            RuntimeConfig {
                cache_dir: Some(dir.to_path_buf()),
                pooling: false,
                ..Default::default()
            },
            keep,
            bytes,
        )
        .unwrap()
    }

    /// A small component of its own (distinct bytes, so a distinct digest) and its cache path.
    fn component(runtime: &Runtime, dir: &Path, n: u32) -> (Vec<u8>, PathBuf) {
        let bytes = wat::parse_str(format!(
            "(component (core module (func (export \"f{n}\"))))"
        ))
        .unwrap();
        let digest = hex::encode(Sha256::digest(&bytes));
        let path = dir.join(format!("{digest}-{}.cwasm", runtime.engine_hash()));
        (bytes, path)
    }

    /// A runtime without a disk cache whose compiler process is the shell script `script`
    /// (written into `dir`).
    fn runtime_with_compiler(dir: &Path, script: &str) -> Runtime {
        use std::os::unix::fs::PermissionsExt;
        let program = dir.join("compiler");
        std::fs::write(&program, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        Runtime::new(RuntimeConfig {
            cache_dir: None,
            pooling: false,
            compiler: Some(program),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn a_module_the_compiler_process_rejects_is_rejected_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime_with_compiler(
            dir.path(),
            "cat >/dev/null; echo 'WARN noise' >&2; echo 'error: bad code at 0x10' >&2; exit 65",
        );
        let (bytes, _) = component(&rt, dir.path(), 1);
        let err = rt.compile(&bytes).map(|_| ()).unwrap_err();
        assert_eq!(format!("{err:#}"), "bad code at 0x10");
        assert_eq!(rt.compiled_in_child(), 0);
    }

    #[test]
    fn a_compiler_process_that_dies_on_a_module_rejects_it_and_the_host_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        for (script, expected) in [
            // The OOM killer, or an allocation beyond the limit (abort).
            ("cat >/dev/null; kill -9 $$", "signal: 9"),
            // A panic in the compiler.
            (
                "cat >/dev/null; echo 'panicked at cranelift' >&2; exit 101",
                "exit status: 101",
            ),
        ] {
            let rt = runtime_with_compiler(dir.path(), script);
            let (bytes, _) = component(&rt, dir.path(), 1);
            let err = format!("{:#}", rt.compile(&bytes).map(|_| ()).unwrap_err());
            assert!(
                err.starts_with("the compiler process failed") && err.contains(expected),
                "{script}: {err}"
            );
        }
    }

    #[test]
    fn a_compiler_process_that_takes_too_long_is_killed_with_its_group_and_the_module_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // A grandchild in the compiler's process group (its pipes closed, so that only the
        // group kill can end it), then the compiler waits for it.
        let rt = runtime_with_compiler(
            dir.path(),
            &format!(
                "sleep 600 </dev/null >/dev/null 2>&1 & echo $! > {}; wait",
                pid_file.display()
            ),
        );
        let rt = Runtime::new(RuntimeConfig {
            compile_timeout: Duration::from_secs(2),
            ..rt.0.config.clone()
        })
        .unwrap();
        let (bytes, _) = component(&rt, dir.path(), 1);
        let err = format!("{:#}", rt.compile(&bytes).map(|_| ()).unwrap_err());
        assert_eq!(
            err,
            "the compiler process took longer than 2s and was stopped"
        );
        let pid = std::fs::read_to_string(&pid_file).expect("the compiler ran for 2 s");
        let stat = Path::new("/proc").join(pid.trim()).join("stat");
        // Killed: gone once reaped by whoever adopted it, a zombie until then.
        let killed = || {
            std::fs::read_to_string(&stat).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
        };
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while !killed() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(killed(), "the compiler's child {} still runs", pid.trim());
    }

    #[test]
    fn a_module_compiled_here_runs_mapped_from_its_cache_entry() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), 10);
        let (bytes, path) = component(&rt, dir.path(), 7);
        let (_component, _) = rt.compile(&bytes).unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(
            maps.contains(path.to_str().unwrap()),
            "{} is not mapped",
            path.display()
        );
    }

    #[test]
    fn a_compiler_process_output_that_does_not_load_leaves_a_good_cache_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let rt = runtime_with_compiler(dir.path(), "cat >/dev/null; echo not-compiled-code");
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.clone()),
            ..rt.0.config.clone()
        })
        .unwrap();
        let (bytes, path) = component(&rt, &cache, 1);
        rt.compile(&bytes).unwrap();
        assert_eq!(rt.compiled_in_child(), 0);
        // The entry is this process's compile, and no temporary file is left.
        let names: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [path.file_name().unwrap()]);
        let again = runtime(&cache, 10);
        again.compile(&bytes).unwrap();
        assert_eq!(again.cache_hits(), 1);
    }

    /// A component the pooling allocator refuses (two memories in one core module: valid wasm,
    /// multi-memory is on) but the compiler, whose engine has no pool, compiles.
    const TWO_MEMORIES: &str =
        "(component (core module $m (memory 1) (memory 1)) (core instance (instantiate $m)))";

    /// A compiler program (in `dir`) that writes `artifact` whatever it is given.
    fn compiler_writing(dir: &Path, artifact: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let output = dir.join("artifact");
        std::fs::write(&output, artifact).unwrap();
        let program = dir.join("compiler");
        std::fs::write(
            &program,
            format!("#!/bin/sh\ncat >/dev/null; cat {}\n", output.display()),
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        program
    }

    /// Names of the files in `dir`.
    fn files_in(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir).map_or_else(
            |_| Vec::new(),
            |entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            },
        )
    }

    #[test]
    fn a_module_the_pool_refuses_is_rejected_without_compiling_it_here_or_caching_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let bytes = wat::parse_str(TWO_MEMORIES).unwrap();
        // What the worker (this build, `base_config()`, no pool) writes for it.
        let artifact = Engine::new(&base_config())
            .unwrap()
            .precompile_component(&bytes)
            .unwrap();
        for streamed_to_cache in [true, false] {
            let rt = Runtime::new(RuntimeConfig {
                cache_dir: streamed_to_cache.then(|| cache.clone()),
                pooling: true,
                pool_instances: 4,
                compiler: Some(compiler_writing(dir.path(), &artifact)),
                ..Default::default()
            })
            .unwrap();
            assert_eq!(rt.allocator(), AllocatorKind::Pooling);
            let err = format!("{:#}", rt.compile(&bytes).map(|_| ()).unwrap_err());
            assert!(
                err.contains("pooling allocator"),
                "the pool's reason: {err}"
            );
            assert_eq!(rt.compiled_in_process(), 0, "compiled again in the host");
            assert_eq!(rt.compiled_in_child(), 0);
            assert_eq!(files_in(&cache), Vec::<String>::new(), "left in the cache");
        }
    }

    #[test]
    fn a_module_the_pool_refuses_leaves_no_cache_entry_when_compiled_here() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(dir.path().to_path_buf()),
            pooling: true,
            pool_instances: 4,
            compiler: None,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(rt.allocator(), AllocatorKind::Pooling);
        let bytes = wat::parse_str(TWO_MEMORIES).unwrap();
        let err = format!("{:#}", rt.compile(&bytes).map(|_| ()).unwrap_err());
        assert!(err.contains("pooling allocator"), "{err}");
        assert_eq!(rt.compiled_in_process(), 1);
        assert_eq!(files_in(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn without_a_usable_compiler_process_the_module_is_compiled_here() {
        let dir = tempfile::tempdir().unwrap();
        for script in [
            // Output that is no compiled component (another build's, say).
            "cat >/dev/null; echo not-compiled-code",
            // A failure that is not the module's: a program without the worker (usage error).
            "cat >/dev/null; echo 'error: unrecognized subcommand' >&2; exit 2",
        ] {
            let rt = runtime_with_compiler(dir.path(), script);
            let (bytes, _) = component(&rt, dir.path(), 1);
            let (compiled, digest) = rt.compile(&bytes).unwrap();
            assert!(digest.starts_with("sha256:"));
            assert_eq!(compiled.component_type().exports(rt.engine()).count(), 0);
            assert_eq!(rt.compiled_in_child(), 0, "{script}");
            assert_eq!(rt.compiled_in_process(), 1, "{script}");
        }
        // Compiled code of another engine (settings or wasmtime version: a `--compiler` program
        // that is not this build), with the pool on: not the module's fault.
        let bytes = wat::parse_str("(component (core module (func (export \"f3\"))))").unwrap();
        let mut other = base_config();
        other.epoch_interruption(false);
        let foreign = Engine::new(&other)
            .unwrap()
            .precompile_component(&bytes)
            .unwrap();
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(dir.path().join("cache")),
            pooling: true,
            pool_instances: 4,
            compiler: Some(compiler_writing(dir.path(), &foreign)),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(rt.allocator(), AllocatorKind::Pooling);
        rt.compile(&bytes).unwrap();
        assert_eq!((rt.compiled_in_child(), rt.compiled_in_process()), (0, 1));
        // No program at all.
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: None,
            pooling: false,
            compiler: Some(dir.path().join("missing")),
            ..Default::default()
        })
        .unwrap();
        rt.compile(&component(&rt, dir.path(), 2).0).unwrap();
        assert_eq!(rt.compiled_in_child(), 0);
    }

    thread_local! {
        /// Makes [`Runtime::load_cache_entry`] fail on this thread as it does where the cache
        /// directory cannot hold executable code (a `noexec` mount).
        pub(super) static MAPPING_FAILS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// `compile` with every cache entry failing to map, as on a `noexec` cache directory.
    fn compile_unmappable(rt: &Runtime, bytes: &[u8]) -> wasmtime::Result<(Component, String)> {
        MAPPING_FAILS.with(|fails| fails.set(true));
        let compiled = rt.compile(bytes);
        MAPPING_FAILS.with(|fails| fails.set(false));
        compiled
    }

    /// A component whose export `answer` returns 42.
    const ANSWER: &str = r#"(component
        (core module $m (func (export "answer") (result i32) i32.const 42))
        (core instance $i (instantiate $m))
        (func (export "answer") (result u32) (canon lift (core func $i "answer"))))"#;

    /// What `component`'s export `answer` returns.
    fn answer(rt: &Runtime, component: &Component) -> u32 {
        let mut store = wasmtime::Store::new(rt.engine(), ());
        store.set_epoch_deadline(1_000_000);
        let instance = Linker::<()>::new(rt.engine())
            .instantiate(&mut store, component)
            .unwrap();
        let answer = instance
            .get_typed_func::<(), (u32,)>(&mut store, "answer")
            .unwrap();
        answer.call(&mut store, ()).unwrap().0
    }

    #[test]
    fn a_cache_directory_that_cannot_hold_code_does_not_make_the_host_compile() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let bytes = wat::parse_str(ANSWER).unwrap();
        // What the worker (this build, `base_config()`) writes for it.
        let artifact = Engine::new(&base_config())
            .unwrap()
            .precompile_component(&bytes)
            .unwrap();
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.clone()),
            pooling: false,
            compiler: Some(compiler_writing(dir.path(), &artifact)),
            ..Default::default()
        })
        .unwrap();
        let (component, _) = compile_unmappable(&rt, &bytes).unwrap();
        assert_eq!(
            (rt.compiled_in_child(), rt.compiled_in_process()),
            (1, 0),
            "compiled by the worker only"
        );
        assert_eq!(answer(&rt, &component), 42);
        assert_eq!(
            files_in(&cache),
            Vec::<String>::new(),
            "no unusable entry is kept"
        );
        assert!(rt.0.unmappable_cache_logged.load(Ordering::Relaxed));

        // A module the pool refuses is still rejected, not compiled again here.
        let bytes = wat::parse_str(TWO_MEMORIES).unwrap();
        let artifact = Engine::new(&base_config())
            .unwrap()
            .precompile_component(&bytes)
            .unwrap();
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.clone()),
            pooling: true,
            pool_instances: 4,
            compiler: Some(compiler_writing(dir.path(), &artifact)),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(rt.allocator(), AllocatorKind::Pooling);
        let err = format!(
            "{:#}",
            compile_unmappable(&rt, &bytes).map(|_| ()).unwrap_err()
        );
        assert!(
            err.contains("pooling allocator"),
            "the pool's reason: {err}"
        );
        assert_eq!((rt.compiled_in_child(), rt.compiled_in_process()), (0, 0));
        assert_eq!(files_in(&cache), Vec::<String>::new());

        // Compiled in this process (no compiler process): loaded from memory as well.
        let rt = runtime(&cache, 10);
        let (component, _) = compile_unmappable(&rt, &wat::parse_str(ANSWER).unwrap()).unwrap();
        assert_eq!(rt.compiled_in_process(), 1);
        assert_eq!(answer(&rt, &component), 42);
        assert_eq!(files_in(&cache), Vec::<String>::new());
        assert!(rt.0.unmappable_cache_logged.load(Ordering::Relaxed));
    }

    /// Sets the modification time of `path` to `hours` ago.
    fn age(path: &Path, hours: u64) {
        let then = SystemTime::now() - Duration::from_secs(hours * 3600);
        std::fs::File::open(path)
            .unwrap()
            .set_modified(then)
            .unwrap();
    }

    #[test]
    fn entries_beyond_the_bound_are_evicted_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), 3);
        let [a, b, c, d, e] = [1, 2, 3, 4, 5].map(|n| component(&rt, dir.path(), n));
        for (bytes, _) in [&a, &b, &c] {
            rt.compile(bytes).unwrap();
        }
        assert!(a.1.exists() && b.1.exists() && c.1.exists());
        // By modification time, not by name or order of writing: b, then c, then a.
        age(&a.1, 1);
        age(&b.1, 3);
        age(&c.1, 2);
        rt.compile(&d.0).unwrap();
        assert!(!b.1.exists(), "the oldest entry goes first");
        assert!(a.1.exists() && c.1.exists() && d.1.exists());
        rt.compile(&e.0).unwrap();
        assert!(!c.1.exists());
        assert!(a.1.exists() && d.1.exists() && e.1.exists());
    }

    #[test]
    fn entries_beyond_the_byte_budget_are_evicted_too() {
        let dir = tempfile::tempdir().unwrap();
        let probe = runtime(dir.path(), 100);
        let [a, b, c] = [1, 2, 3].map(|n| component(&probe, dir.path(), n));
        probe.compile(&a.0).unwrap();
        let size = std::fs::metadata(&a.1).unwrap().len();
        std::fs::remove_file(&a.1).unwrap();
        // Room for two entries of this size, though a hundred entries are allowed.
        let rt = runtime_with_bytes(dir.path(), 100, size * 2 + size / 2);
        for (n, (bytes, path)) in [&a, &b].into_iter().enumerate() {
            rt.compile(bytes).unwrap();
            age(path, 3 - n as u64);
        }
        assert!(a.1.exists() && b.1.exists());
        rt.compile(&c.0).unwrap();
        assert!(
            !a.1.exists(),
            "the oldest entry goes when the bytes run out"
        );
        assert!(b.1.exists() && c.1.exists());
        // An entry larger than the whole budget still stays: it was just written.
        let tiny = runtime_with_bytes(dir.path(), 100, 1);
        let (d, d_path) = component(&tiny, dir.path(), 4);
        tiny.compile(&d).unwrap();
        assert!(d_path.exists() && !b.1.exists() && !c.1.exists());
    }

    #[test]
    fn a_precompiled_module_is_loaded_from_the_memory_cache() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), 10);
        let (bytes, _) = component(&rt, dir.path(), 1);
        let digest = rt.precompile(&bytes).expect("compiles");
        assert_eq!(rt.cache_hits(), 0);
        assert_eq!(rt.compile(&bytes).unwrap().1, digest);
        assert_eq!(rt.cache_hits(), 1, "no second compilation");
        assert_eq!(rt.precompile(b"not wasm"), None);
    }

    #[test]
    fn loading_an_entry_keeps_it_from_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let first = runtime(dir.path(), 2);
        let [a, b, c] = [1, 2, 3].map(|n| component(&first, dir.path(), n));
        first.compile(&a.0).unwrap();
        first.compile(&b.0).unwrap();
        age(&a.1, 3);
        age(&b.1, 2);
        // Another process (an empty memory cache) loads a from the disk cache: a hit ...
        let second = runtime(dir.path(), 2);
        second.compile(&a.0).unwrap();
        assert_eq!(second.cache_hits(), 1);
        // ... so b, not a, is the least recently used when c is written.
        second.compile(&c.0).unwrap();
        assert!(!b.1.exists(), "b was used least recently");
        assert!(a.1.exists() && c.1.exists());
    }

    #[test]
    fn other_engines_entries_go_and_other_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), 2);
        let ours = rt.engine_hash();
        let other_engine = if ours == "0123456789abcdef" {
            "fedcba9876543210"
        } else {
            "0123456789abcdef"
        };
        let digest = "ab".repeat(32);
        let foreign = dir.path().join(format!("{digest}-{other_engine}.cwasm"));
        // Another engine's entry used within the week: another version may be using it.
        let foreign_recent = dir
            .path()
            .join(format!("{}-{other_engine}.cwasm", "ef".repeat(32)));
        std::fs::write(&foreign_recent, b"x").unwrap();
        age(&foreign_recent, 24);
        let unrelated = [
            "notes.txt".to_string(),
            "module.cwasm".to_string(),
            format!("{digest}-{ours}.cwasm.bak"),
            // Another process's write in progress (write_atomically's temporary file).
            format!("{digest}-{ours}.tmp4242"),
            format!("{}-{ours}.cwasm", "AB".repeat(32)),
            format!("{digest}-{other_engine}x.cwasm"),
        ]
        .map(|name| dir.path().join(name));
        for path in unrelated.iter().chain([&foreign]) {
            std::fs::write(path, b"x").unwrap();
            age(path, 1000);
        }
        // A directory named like an entry is not one either.
        let named_like_an_entry = dir.path().join(format!("{}-{ours}.cwasm", "cd".repeat(32)));
        std::fs::create_dir(&named_like_an_entry).unwrap();
        for n in 1..=4 {
            rt.compile(&component(&rt, dir.path(), n).0).unwrap();
        }
        assert!(
            !foreign.exists(),
            "another engine's entry unused for over a week is removed"
        );
        assert!(foreign_recent.exists());
        for path in &unrelated {
            assert!(path.exists(), "{} was removed", path.display());
        }
        assert!(named_like_an_entry.is_dir());
        let entries = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| cache_entry_engine(name) == Some(ours.as_str()))
            .count();
        // The two newest entries, plus the directory.
        assert_eq!(entries, 3);
    }
}

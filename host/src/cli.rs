//! Command-line interface (clap); every flag has a `KUBELISTEN_*` environment fallback.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Runs Kubernetes event listeners as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "kubelisten", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "KUBELISTEN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Directory of the compiled-code cache (default `~/.cache/kubelisten/compiled`).
    #[arg(long, global = true, env = "KUBELISTEN_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Disable the compiled-code cache.
    #[arg(long, global = true, env = "KUBELISTEN_NO_CACHE")]
    pub no_cache: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Output format of `replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One aligned line per listener call, then a summary.
    Text,
    /// One JSON object per listener call; the summary goes to stderr.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that a file is a component implementing the kubelisten listener world (exit 0/1).
    Check {
        /// The component file(s).
        #[arg(required = true)]
        modules: Vec<PathBuf>,
    },
    /// Feed recorded watch events through a listener chain, offline.
    Replay {
        /// A listener `path[:reference|:classname]` (default mode classname); repeat for a chain.
        #[arg(
            long = "listener",
            short = 'l',
            required = true,
            env = "KUBELISTEN_LISTENERS",
            value_delimiter = ','
        )]
        listeners: Vec<String>,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text, env = "KUBELISTEN_OUTPUT")]
        output: OutputFormat,
        /// Exit non-zero if any call failed or any document was malformed.
        #[arg(long, env = "KUBELISTEN_FAIL_ON_ERROR")]
        fail_on_error: bool,
        /// Per-call time limit in milliseconds.
        #[arg(long, env = "KUBELISTEN_CALL_TIMEOUT_MS")]
        call_timeout_ms: Option<u64>,
        /// Per-instance memory limit in MiB.
        #[arg(long, env = "KUBELISTEN_MEMORY_MIB")]
        memory_mib: Option<usize>,
        /// Events file (`kubectl get -w --output-watch-events -o json`); `-` reads stdin.
        events: PathBuf,
    },
}

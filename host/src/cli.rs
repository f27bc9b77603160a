//! Command-line interface (clap); every flag has a `KUBELISTEN_*` environment fallback.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use kubelisten::server::StatusAddr;

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
    /// Compile modules in this process instead of a short-lived `kubelisten compile-worker`
    /// child (the default keeps the compiler's memory out of the long-running process).
    #[arg(long, global = true, env = "KUBELISTEN_COMPILE_IN_PROCESS")]
    pub compile_in_process: bool,
    /// The compiler program to run instead of this executable's `compile-worker` (hidden: for
    /// tests that need a compiler that is slow or fails in a given way). Ignored with
    /// `--compile-in-process`.
    #[arg(long, global = true, hide = true)]
    pub compiler: Option<PathBuf>,
    /// Seconds the compiler process may take for one module; a module not compiled by then is
    /// rejected like one that does not compile.
    #[arg(long, global = true, env = "KUBELISTEN_COMPILE_TIMEOUT", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub compile_timeout: u64,
    /// MiB of data the compiler process may allocate; a module that needs more is rejected.
    #[arg(long, global = true, env = "KUBELISTEN_COMPILE_MEMORY_MIB", default_value_t = 2048,
          value_parser = clap::value_parser!(u64).range(kubelisten::runtime::compiler::MIN_MEMORY >> 20..=1 << 20))]
    pub compile_memory_mib: u64,
    /// Component instances the pooling allocator holds at once: classname instances in flight
    /// (up to `--workers` per watch), one per reference listener and one prewarmed spare per
    /// classname listener. Each takes about 8 GiB of address space (not memory).
    #[arg(long, global = true, env = "KUBELISTEN_POOL_INSTANCES", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub pool_instances: u32,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The wasm runtime settings these options ask for (cache directory, pool size, compiler).
    pub fn runtime_config(&self) -> kubelisten::runtime::RuntimeConfig {
        let mut config = kubelisten::runtime::RuntimeConfig {
            pool_instances: self.pool_instances,
            compile_timeout: std::time::Duration::from_secs(self.compile_timeout),
            compile_memory: self.compile_memory_mib << 20,
            ..Default::default()
        };
        if !self.compile_in_process {
            config.compiler = self
                .compiler
                .clone()
                .or_else(kubelisten::runtime::compiler::own_executable);
            if config.compiler.is_none() {
                tracing::warn!(
                    "cannot find this program's executable; compiling modules in this process"
                );
            }
        }
        if self.no_cache {
            config.cache_dir = None;
        } else if let Some(dir) = &self.cache_dir {
            config.cache_dir = Some(dir.clone());
        }
        config
    }
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
    /// Watch the cluster and run the listener chains (until SIGTERM/SIGINT).
    Run(Box<RunArgs>),
    /// Show, or wait for, the kstatus status of objects (live from the cluster, or --offline).
    Status(Box<kubelisten::status_cli::StatusArgs>),
    /// Create a buildable listener folder (WIT, sample handler, sample events, build.sh) in rust|python|js|c|go.
    New(kubelisten::scaffold::NewArgs),
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
        #[arg(long, env = "KUBELISTEN_CALL_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..))]
        call_timeout_ms: Option<u64>,
        /// Per-instance memory limit in MiB (1-4096).
        #[arg(long, env = "KUBELISTEN_MEMORY_MIB", value_parser = clap::value_parser!(u32).range(1..=4096))]
        memory_mib: Option<u32>,
        /// Events file (`kubectl get -w --output-watch-events -o json`); `-` reads stdin.
        events: PathBuf,
    },
}

/// Arguments of `run`: a config file, or one CRD and its listeners given as flags.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The config file listing the watches (see the README).
    #[arg(long, env = "KUBELISTEN_CONFIG", conflicts_with = "crd")]
    pub config: Option<PathBuf>,
    /// One CRD file to watch (registered if the cluster lacks it); use with --listener.
    #[arg(long, env = "KUBELISTEN_CRD")]
    pub crd: Option<PathBuf>,
    /// A listener `path[:reference|:classname]` for --crd; repeat for a chain. Only with --crd:
    /// an error with --config (the file lists the listeners) or --modules-configmap (the
    /// ConfigMap supplies them).
    #[arg(
        long = "listener",
        short = 'l',
        env = "KUBELISTEN_LISTENERS",
        value_delimiter = ',',
        requires = "crd",
        conflicts_with_all = ["config", "modules_configmap"]
    )]
    pub listeners: Vec<String>,
    /// Namespaces to watch with --crd (default all). Only with --crd: an error with --config
    /// (the file lists each watch's namespaces).
    #[arg(
        long = "namespace",
        short = 'n',
        env = "KUBELISTEN_NAMESPACES",
        value_delimiter = ',',
        requires = "crd",
        conflicts_with = "config"
    )]
    pub namespaces: Vec<String>,
    /// Label selector with --crd. Only with --crd: an error with --config.
    #[arg(
        long,
        env = "KUBELISTEN_LABEL_SELECTOR",
        value_parser = label_selector,
        requires = "crd",
        conflicts_with = "config"
    )]
    pub label_selector: Option<String>,
    /// Field selector with --crd. Only with --crd: an error with --config.
    #[arg(
        long,
        env = "KUBELISTEN_FIELD_SELECTOR",
        value_parser = field_selector,
        requires = "crd",
        conflicts_with = "config"
    )]
    pub field_selector: Option<String>,
    /// Objects handled in parallel per watch.
    #[arg(long, env = "KUBELISTEN_WORKERS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Events queued per watch before the watch stops being read (back-pressure).
    #[arg(long, env = "KUBELISTEN_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Server-side watch timeout in seconds (the watch is reopened after it; at most 290).
    #[arg(long, env = "KUBELISTEN_WATCH_TIMEOUT", default_value_t = 290)]
    pub watch_timeout: u64,
    /// Attempts per event before it is given up (1 = no retry).
    #[arg(long, env = "KUBELISTEN_RETRY_ATTEMPTS", default_value_t = 5)]
    pub retry_attempts: u32,
    /// Delay before the first retry, in milliseconds; doubles per attempt.
    #[arg(long, env = "KUBELISTEN_RETRY_BASE_MS", default_value_t = 200)]
    pub retry_base_ms: u64,
    /// Longest retry delay, in milliseconds.
    #[arg(long, env = "KUBELISTEN_RETRY_MAX_MS", default_value_t = 30_000)]
    pub retry_max_ms: u64,
    /// Seconds in-flight events may take to finish at shutdown.
    #[arg(long, env = "KUBELISTEN_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Limits of the listeners given with --listener.
    #[command(flatten)]
    pub limits: LimitFlags,
    /// Port of /healthz, /readyz and /metrics, the probes' server (0 turns it off).
    #[arg(long, env = "KUBELISTEN_HEALTH_PORT", default_value_t = 8080)]
    pub health_port: u16,
    /// Address the health server binds: `::` (the default) is dual-stack, IPv4 and IPv6 (IPv4
    /// only where the kernel has no IPv6).
    #[arg(long, env = "KUBELISTEN_HEALTH_BIND", default_value = "::")]
    pub health_bind: std::net::IpAddr,
    /// ADDRESS:PORT of /status, a listener of its own: /status names every watched object, so
    /// the default is loopback (`kubectl port-forward POD 8081` reaches it). `off`, an empty
    /// value or port 0 (as with --health-port 0) turns it off. A given address that cannot be
    /// bound stops the start; the default, when taken (by a second kubelisten, a
    /// controller-runtime manager's :8081), only turns /status off, with a warning
    /// [default: 127.0.0.1:8081]
    // No `default_value`: whether the address was given decides what a bind failure does
    // (`RunArgs::status_addr`).
    #[arg(long, env = "KUBELISTEN_STATUS_BIND", value_parser = status_bind)]
    pub status_bind: Option<StatusBind>,
    /// Turns leader election on, with the lock in this namespace.
    #[arg(long, env = "KUBELISTEN_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the lock object.
    #[arg(
        long,
        env = "KUBELISTEN_LEADER_ELECTION_NAME",
        default_value = "kubelisten"
    )]
    pub leader_election_name: String,
    /// The lock: a coordination.k8s.io/v1 Lease or a ConfigMap record.
    #[arg(
        long,
        env = "KUBELISTEN_LEADER_ELECTION_LOCK",
        value_enum,
        default_value = "lease"
    )]
    pub leader_election_lock: kubelisten::watch::leader::LockKind,
    /// This replica's identity (default: the Pod name from HOSTNAME, else `kubelisten`, with
    /// a random suffix of this process).
    #[arg(long, env = "KUBELISTEN_LEADER_ELECTION_IDENTITY")]
    pub leader_election_identity: Option<String>,
    /// Lease duration in seconds (client-go default 15).
    #[arg(long, env = "KUBELISTEN_LEASE_DURATION", default_value_t = 15.0)]
    pub lease_duration: f64,
    /// Renew deadline in seconds (client-go default 10).
    #[arg(long, env = "KUBELISTEN_RENEW_DEADLINE", default_value_t = 10.0)]
    pub renew_deadline: f64,
    /// Take the listener chains from this ConfigMap (`listeners.yaml` + modules as binaryData)
    /// and hot-swap them when it changes; the config's listeners are then ignored.
    #[arg(long, env = "KUBELISTEN_MODULES_CONFIGMAP")]
    pub modules_configmap: Option<kubelisten::hotswap::ModulesConfigMap>,
    /// Retry period in seconds (client-go default 2).
    #[arg(long, env = "KUBELISTEN_RETRY_PERIOD", default_value_t = 2.0)]
    pub retry_period: f64,
}

/// Limits of the listeners given with `--listener`; each flag given overrides that field of
/// their [`Limits`](kubelisten::runtime::Limits). Only with --listener: an error with --config
/// or --modules-configmap (set `limits` per listener there).
#[derive(Debug, Default, Clone, clap::Args)]
#[group(multiple = true, requires = "listeners", conflicts_with_all = ["config", "modules_configmap"])]
pub struct LimitFlags {
    /// Per-call time limit in milliseconds for listeners given with --listener.
    #[arg(long, env = "KUBELISTEN_CALL_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub call_timeout_ms: Option<u64>,
    /// Per-instance memory limit in MiB for listeners given with --listener (1-4096: a 32-bit
    /// wasm memory holds at most 4 GiB).
    #[arg(long, env = "KUBELISTEN_MEMORY_MIB", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub memory_mib: Option<u32>,
    /// Consecutive traps after which a listener given with --listener is backed off
    /// (crash-loop protection; default 5).
    #[arg(
        long,
        env = "KUBELISTEN_CRASH_LOOP_THRESHOLD",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub crash_loop_threshold: Option<u32>,
    /// First crash-loop backoff in milliseconds for listeners given with --listener; doubles
    /// with every further backoff (default 1000).
    #[arg(
        long,
        env = "KUBELISTEN_CRASH_LOOP_BACKOFF_MS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub crash_loop_backoff_ms: Option<u64>,
    /// Longest crash-loop backoff in milliseconds for listeners given with --listener (default
    /// 300000).
    #[arg(
        long,
        env = "KUBELISTEN_CRASH_LOOP_BACKOFF_MAX_MS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub crash_loop_backoff_max_ms: Option<u64>,
}

impl LimitFlags {
    /// Overrides the fields of `limits` that a flag was given for.
    pub fn apply(&self, limits: &mut kubelisten::runtime::Limits) {
        use std::time::Duration;
        if let Some(ms) = self.call_timeout_ms {
            limits.call_timeout = Duration::from_millis(ms);
        }
        if let Some(mib) = self.memory_mib {
            limits.memory_bytes = usize::try_from(u64::from(mib) << 20).unwrap_or(usize::MAX);
        }
        if let Some(threshold) = self.crash_loop_threshold {
            limits.crash_loop_threshold = threshold;
        }
        if let Some(ms) = self.crash_loop_backoff_ms {
            limits.crash_loop_backoff = Duration::from_millis(ms);
        }
        if let Some(ms) = self.crash_loop_backoff_max_ms {
            limits.crash_loop_backoff_max = Duration::from_millis(ms);
        }
    }
}

/// Where `/status` is served: `--status-bind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusBind(pub Option<std::net::SocketAddr>);

/// The status address when neither `--status-bind` nor `KUBELISTEN_STATUS_BIND` is given.
pub const DEFAULT_STATUS_BIND: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8081);

impl RunArgs {
    /// Where `/status` is served (`None`: turned off). A given address must be bound; the
    /// default, [`DEFAULT_STATUS_BIND`], may be skipped when it is taken
    /// ([`kubelisten::server::bind_status`]).
    pub fn status_addr(&self) -> Option<StatusAddr> {
        match self.status_bind {
            None => Some(StatusAddr {
                addr: DEFAULT_STATUS_BIND,
                given: false,
            }),
            Some(StatusBind(addr)) => addr.map(|addr| StatusAddr { addr, given: true }),
        }
    }
}

/// `--status-bind`: `ADDRESS:PORT` (`[::1]:8081` for IPv6), or `off`, empty or port 0 for no
/// status listener.
fn status_bind(s: &str) -> Result<StatusBind, String> {
    if s.is_empty() || s.eq_ignore_ascii_case("off") {
        return Ok(StatusBind(None));
    }
    let addr: std::net::SocketAddr = s.parse().map_err(|_| {
        format!("{s:?} is not ADDRESS:PORT (say 127.0.0.1:8081 or [::1]:8081) or `off`")
    })?;
    Ok(StatusBind((addr.port() != 0).then_some(addr)))
}

/// `--label-selector`: checked like the API server would (see [`kubelisten::watch::selectors`]).
fn label_selector(s: &str) -> Result<String, String> {
    kubelisten::watch::selectors::check_label_selector(s).map(|()| s.to_string())
}

/// `--field-selector`: checked like the API server would (see [`kubelisten::watch::selectors`]).
fn field_selector(s: &str) -> Result<String, String> {
    kubelisten::watch::selectors::check_field_selector(s).map(|()| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["kubelisten"].iter().chain(args))
    }

    #[tokio::test]
    async fn the_default_health_address_takes_ipv4_and_ipv6() {
        let Cli {
            command: Command::Run(run),
            ..
        } = parse(&["run", "--crd", "crd.yaml", "-l", "a.wasm"]).expect("defaults")
        else {
            panic!("not run");
        };
        let listener =
            kubelisten::server::bind(std::net::SocketAddr::new(run.health_bind, 0)).expect("bound");
        let port = listener.local_addr().expect("address").port();
        // IPv6 loopback is not everywhere (a container with IPv6 turned off): then IPv4 only.
        let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
        for ip in ["127.0.0.1", "::1"]
            .into_iter()
            .take(if ipv6 { 2 } else { 1 })
        {
            let ip: std::net::IpAddr = ip.parse().expect("an address");
            tokio::net::TcpStream::connect((ip, port))
                .await
                .unwrap_or_else(|err| panic!("{ip}: {err}"));
        }
    }

    /// `/status` is on loopback by default, where a taken port does not stop the start; an
    /// address that is given (even the default one) must be bound; `off` turns it off.
    #[test]
    fn status_is_served_on_loopback_by_default_and_can_be_turned_off() {
        let status = |extra: &[&str]| {
            let args = [&["run", "--crd", "crd.yaml", "-l", "a.wasm"][..], extra].concat();
            match parse(&args).map(|cli| cli.command) {
                Ok(Command::Run(run)) => Ok(run.status_addr()),
                Ok(other) => panic!("not run: {other:?}"),
                Err(err) => Err(err.to_string()),
            }
        };
        let addr = |s: &str| s.parse::<std::net::SocketAddr>().expect("an address");
        assert_eq!(
            status(&[]),
            Ok(Some(StatusAddr {
                addr: addr("127.0.0.1:8081"),
                given: false
            }))
        );
        for given in ["[::1]:9000", "127.0.0.1:8081"] {
            assert_eq!(
                status(&["--status-bind", given]),
                Ok(Some(StatusAddr {
                    addr: addr(given),
                    given: true
                })),
                "{given}"
            );
        }
        for off in ["off", "OFF", "", "127.0.0.1:0"] {
            assert_eq!(status(&["--status-bind", off]), Ok(None), "{off:?}");
        }
        let err = status(&["--status-bind", "8081"]).unwrap_err();
        assert!(
            err.contains("--status-bind") && err.contains("is not ADDRESS:PORT"),
            "{err}"
        );
    }

    #[test]
    fn runtime_options_reach_the_runtime_config() {
        let default = parse(&["check", "a.wasm"]).expect("defaults");
        assert_eq!(default.runtime_config().pool_instances, 256);
        let cli = parse(&["check", "--pool-instances", "64", "--no-cache", "a.wasm"])
            .expect("options after the subcommand (global)");
        let config = cli.runtime_config();
        assert_eq!(config.pool_instances, 64);
        assert_eq!(config.cache_dir, None);
        let cli = parse(&["--cache-dir", "/tmp/c", "check", "a.wasm"]).expect("cache dir");
        assert_eq!(
            cli.runtime_config().cache_dir,
            Some(PathBuf::from("/tmp/c"))
        );
        let err = parse(&["--pool-instances", "0", "check", "a.wasm"]).expect_err("0 instances");
        assert!(err.to_string().contains("pool-instances"), "{err}");
    }

    #[test]
    fn limit_flags_that_cannot_work_are_errors() {
        let replay =
            |flag: &str, value: &str| parse(&["replay", "-l", "a.wasm", flag, value, "e.json"]);
        for (flag, value) in [
            ("--memory-mib", "0"),
            ("--memory-mib", "4097"),
            ("--call-timeout-ms", "0"),
        ] {
            let err = replay(flag, value).expect_err(flag);
            assert!(err.to_string().contains(flag), "{flag} {value}: {err}");
        }
        assert!(replay("--memory-mib", "4096").is_ok());
        let run = |flag: &str| parse(&["run", "--crd", "c.yaml", "-l", "a.wasm", flag, "0"]);
        for flag in ["--memory-mib", "--call-timeout-ms"] {
            let err = run(flag).expect_err(flag);
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn run_flags_that_would_be_ignored_are_errors() {
        let config = ["run", "--config", "k.yaml"];
        let crd_cm = ["run", "--crd", "c.yaml", "--modules-configmap", "ns/m"];
        let cm = ["run", "--modules-configmap", "ns/m"];
        let conflict = "cannot be used with";
        let missing = "required arguments were not provided";
        // (command line, extra flags, what the error names)
        let cases: &[(&[&str], &[&str], [&str; 3])] = &[
            (&config, &["-n", "a"], [conflict, "--namespace", "--config"]),
            (
                &config,
                &["--label-selector", "a=b"],
                [conflict, "--label-selector", "--config"],
            ),
            (
                &config,
                &["--field-selector", "a=b"],
                [conflict, "--field-selector", "--config"],
            ),
            (
                &config,
                &["-l", "a.wasm"],
                [conflict, "--listener", "--config"],
            ),
            (
                &config,
                &["--call-timeout-ms", "5"],
                [conflict, "--call-timeout-ms", "--config"],
            ),
            (
                &config,
                &["--memory-mib", "5"],
                [conflict, "--memory-mib", "--config"],
            ),
            (
                &crd_cm,
                &["-l", "a.wasm"],
                [conflict, "--listener", "--modules-configmap"],
            ),
            (
                &crd_cm,
                &["--memory-mib", "5"],
                [conflict, "--memory-mib", "--modules-configmap"],
            ),
            (
                &config,
                &["--crash-loop-threshold", "2"],
                [conflict, "--crash-loop-threshold", "--config"],
            ),
            (
                &crd_cm,
                &["--crash-loop-backoff-ms", "5"],
                [conflict, "--crash-loop-backoff-ms", "--modules-configmap"],
            ),
            (
                &["run", "--crd", "c.yaml"],
                &["--crash-loop-backoff-max-ms", "5"],
                [missing, "--listener", ""],
            ),
            (
                &["run", "--crd", "c.yaml", "-l", "a.wasm"],
                &["--crash-loop-threshold", "0"],
                ["0 is not in 1..", "--crash-loop-threshold", ""],
            ),
            (&cm, &["-n", "a"], [missing, "--crd", ""]),
            (&cm, &["--field-selector", "a=b"], [missing, "--crd", ""]),
            (&["run"], &["-l", "a.wasm"], [missing, "--crd", ""]),
            (
                &["run", "--crd", "c.yaml"],
                &["--call-timeout-ms", "5"],
                [missing, "--listener", ""],
            ),
        ];
        for (base, extra, wanted) in cases {
            let args = [*base, *extra].concat();
            let err = parse(&args).expect_err(&format!("{args:?}")).to_string();
            assert!(wanted.iter().all(|w| err.contains(w)), "{args:?}: {err}");
        }
        for ok in [
            &[
                "run",
                "--crd",
                "c.yaml",
                "-l",
                "a.wasm",
                "-n",
                "a",
                "--label-selector",
                "a=b",
                "--field-selector",
                "a=b",
                "--call-timeout-ms",
                "5",
                "--memory-mib",
                "5",
                "--crash-loop-threshold",
                "2",
                "--crash-loop-backoff-ms",
                "100",
                "--crash-loop-backoff-max-ms",
                "400",
            ][..],
            &[
                "run",
                "--crd",
                "c.yaml",
                "--modules-configmap",
                "ns/m",
                "-n",
                "a",
            ],
            &["run", "--config", "k.yaml", "--modules-configmap", "ns/m"],
        ] {
            parse(ok).unwrap_or_else(|err| panic!("{ok:?}: {err}"));
        }
        let crd = ["run", "--crd", "c.yaml", "-l", "a.wasm"];
        for (flag, bad, says) in [
            ("--label-selector", "app=web,", "comma with no requirement"),
            ("--field-selector", "metadata.name", "no operator"),
        ] {
            let err = parse(&[&crd[..], &[flag, bad]].concat())
                .expect_err(bad)
                .to_string();
            assert!(err.contains(flag) && err.contains(says), "{err}");
        }
    }
}

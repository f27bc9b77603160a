//! The `kubelisten` binary: parse the command line, set up logging, run the subcommand.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kubelisten::app::{self, RunSettings};
use kubelisten::config::{self, Config, TargetConfig, WatchConfig};
use kubelisten::dispatch::dispatcher::{DispatcherConfig, RetryPolicy};
use kubelisten::dispatch::Chain;
use kubelisten::replay;
use kubelisten::runtime::{check, Listener, ListenerSpec, Runtime, RuntimeConfig};
use kubelisten::watch::leader::{default_identity, LeaderConfig};
use std::time::Duration;

mod cli;

use cli::{Cli, Command, LimitFlags, LogFormat, OutputFormat, RunArgs};

fn main() -> ExitCode {
    // `kubelisten compile-worker`: the compiler process of the other commands (see
    // `--compile-in-process`), before the command line is parsed as the host's.
    if let Some(code) = kubelisten::runtime::compiler::run_worker_if_asked() {
        return code;
    }
    let cli = Cli::parse();
    let log_format = cli.log_format;
    init_tracing(log_format);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            report_fatal(log_format, &err);
            ExitCode::FAILURE
        }
    }
}

/// Reports the error that ends the process, once. With `--log-format json` it is a log event
/// (level ERROR, the whole cause chain in the field `error`), so that log pipelines that parse
/// JSON see why the process exited; a plain `error: ...` line there would be the only line
/// that is not JSON. With the text format, or when the log filter drops errors
/// (`RUST_LOG=off`), it is the plain line on stderr, as for any command-line tool.
fn report_fatal(format: LogFormat, err: &anyhow::Error) {
    if format == LogFormat::Json && tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!(error = %format!("{err:#}"), "exiting on an error");
    } else {
        eprintln!("error: {err:#}");
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,cranelift=warn,wasmtime=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime_config = cli.runtime_config();
    match cli.command {
        Command::Run(args) => return run_cluster(runtime_config, *args),
        Command::Status(args) => return kubelisten::status_cli::run_blocking(*args),
        Command::New(args) => return kubelisten::scaffold::run(args),
        _ => {}
    }
    let runtime = Runtime::new(runtime_config).context("starting the wasm runtime")?;
    match cli.command {
        Command::Run(_) | Command::Status(_) | Command::New(_) => unreachable!("handled above"),
        Command::Check { modules } => Ok(check_modules(&runtime, &modules)),
        Command::Replay {
            listeners,
            output,
            fail_on_error,
            call_timeout_ms,
            memory_mib,
            events,
        } => {
            let limits = LimitFlags {
                call_timeout_ms,
                memory_mib,
                ..LimitFlags::default()
            };
            let mut specs = listener_specs(&listeners, &limits, false)?;
            // Replay gives every event one attempt: no crash-loop backoff, whose skips would
            // depend on how fast the events go through.
            for spec in &mut specs {
                spec.limits.crash_loop_threshold = u32::MAX;
            }
            let chain = Chain::new(
                specs
                    .iter()
                    .map(|spec| Listener::load(&runtime, spec).map(Arc::new))
                    .collect::<Result<_, _>>()?,
            );
            let text = read_input(&events)?;
            let items = replay::parse_events(&text);
            let mut stdout = std::io::stdout().lock();
            let summary = replay::replay(
                &chain,
                items,
                |call| {
                    let line = match output {
                        OutputFormat::Json => call.to_json().to_string(),
                        OutputFormat::Text => call.to_text(),
                    };
                    let _ = writeln!(stdout, "{line}");
                },
                |line, error| eprintln!("{}:{line}: malformed event: {error}", events.display()),
            );
            match output {
                OutputFormat::Text => println!("{summary}"),
                OutputFormat::Json => eprintln!("{summary}"),
            }
            Ok(if fail_on_error && summary.has_failures() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Parses `path[:mode]` listener flags and applies the limit flags to each. Names (file stems)
/// must differ, as in a config file: a name keys the listener's logs, metrics and output.
/// `has_config`: the command also takes `--config` (named listeners), which the error suggests.
fn listener_specs(
    listeners: &[String],
    limits: &LimitFlags,
    has_config: bool,
) -> anyhow::Result<Vec<ListenerSpec>> {
    let mut specs: Vec<ListenerSpec> = Vec::with_capacity(listeners.len());
    for text in listeners {
        let mut spec: ListenerSpec = text.parse()?;
        limits.apply(&mut spec.limits);
        if let Some(first) = specs.iter().position(|s| s.name == spec.name) {
            anyhow::bail!(
                "--listener {text}: listener name {:?} (the file stem) is also the name of \
                 --listener {}; rename (or copy) one of the files{}",
                spec.name,
                listeners[first],
                if has_config {
                    ", or use --config to give each a `name`"
                } else {
                    ""
                }
            );
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// The watches of `run`: the config file, or the single CRD given by flags.
fn run_config(args: &RunArgs) -> anyhow::Result<Config> {
    if let Some(path) = &args.config {
        if args.modules_configmap.is_none() {
            return config::load(path).map_err(anyhow::Error::new);
        }
        // The ConfigMap's listeners.yaml supplies every chain: the file only names the watches.
        let config = config::load_watches(path)?;
        for watch in config.watches.iter().filter(|w| !w.listeners.is_empty()) {
            tracing::warn!(
                watch = %watch.name,
                listeners = watch.listeners.len(),
                "the config file's listeners for this watch are ignored: with --modules-configmap the ConfigMap's listeners.yaml supplies them"
            );
        }
        return Ok(config);
    }
    let Some(crd) = &args.crd else {
        anyhow::bail!("nothing to watch: give --config FILE, --crd FILE with --listener MODULE, or --modules-configmap with a listeners.yaml that lists the watches");
    };
    if args.listeners.is_empty() && args.modules_configmap.is_none() {
        anyhow::bail!("--crd needs --listener MODULE (or --modules-configmap NAMESPACE/NAME)");
    }
    let name = crd
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("crd")
        .to_string();
    Ok(Config {
        watches: vec![WatchConfig {
            name,
            target: TargetConfig::Crd { path: crd.clone() },
            namespaces: flag_namespaces(&args.namespaces)?,
            label_selector: args.label_selector.clone(),
            field_selector: args.field_selector.clone(),
            listeners: listener_specs(&args.listeners, &args.limits, true)?,
        }],
    })
}

/// The namespaces of `--namespace` (or `KUBELISTEN_NAMESPACES`), checked as a config file's
/// are: each a namespace name, none repeated (each entry starts its own watch, so a repeated namespace
/// would dispatch every event once per repeat).
fn flag_namespaces(namespaces: &[String]) -> anyhow::Result<Vec<String>> {
    for (i, ns) in namespaces.iter().enumerate() {
        anyhow::ensure!(!ns.is_empty(), "--namespace: namespace must not be empty (leave --namespace out to watch all namespaces)");
        kubelisten::watch::selectors::check_namespace(ns)
            .map_err(|why| anyhow::anyhow!("--namespace: {why}"))?;
        anyhow::ensure!(
            !namespaces[..i].contains(ns),
            "--namespace: namespace {ns:?} is listed twice"
        );
    }
    Ok(namespaces.to_vec())
}

fn run_cluster(runtime_config: RuntimeConfig, args: RunArgs) -> anyhow::Result<ExitCode> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The stop signals are caught from here on (the handlers are installed now, in the runtime):
    // a SIGTERM while the modules ConfigMap is read or the watches are set up stops the run
    // gracefully instead of getting the default action.
    let mut shutdown = {
        let _runtime = tokio.enter();
        Box::pin(shutdown_signal())
    };
    // Only a modules ConfigMap: its listeners.yaml (the --config format) names the watches.
    let from_configmap = args.config.is_none() && args.crd.is_none();
    let config = match &args.modules_configmap {
        Some(source) if from_configmap => {
            let read = tokio.block_on(async {
                tokio::select! {
                    config = config_from_configmap(source) => Some(config),
                    () = &mut shutdown => None,
                }
            });
            let Some(config) = read else {
                tracing::info!(
                    namespace = %source.namespace,
                    configmap = %source.name,
                    "shutting down before the watches started (reading the modules ConfigMap)"
                );
                return Ok(ExitCode::SUCCESS);
            };
            config?
        }
        _ => run_config(&args)?,
    };
    // Bad CRD files are startup errors even before the cluster is reachable.
    for watch in &config.watches {
        if let TargetConfig::Crd { path } = &watch.target {
            kubelisten::watch::target::read_crd(path)
                .with_context(|| format!("watch {}", watch.name))?;
        }
    }
    let settings = RunSettings {
        dispatch: DispatcherConfig {
            workers: args.workers as usize,
            queue_capacity: args.queue_capacity,
            retry: RetryPolicy {
                attempts: args.retry_attempts.max(1),
                base: Duration::from_millis(args.retry_base_ms),
                max: Duration::from_millis(args.retry_max_ms),
            },
            // `stop_grace` comes from `shutdown_grace` below (`RunSettings::dispatch`).
            ..DispatcherConfig::default()
        },
        watch_timeout: Duration::from_secs(args.watch_timeout.clamp(1, 290)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        health_addr: (args.health_port != 0)
            .then(|| std::net::SocketAddr::new(args.health_bind, args.health_port)),
        status_addr: args.status_addr(),
        leader: leader_config(&args)?,
        modules: args.modules_configmap.clone(),
        watches_from_modules: from_configmap && args.modules_configmap.is_some(),
    };
    let ran = tokio.block_on(async {
        let client = kubelisten::connect::client().await?;
        let cluster = app::cluster_access(&client, &config)?;
        let runtime = Runtime::new(RuntimeConfig {
            cluster: cluster.clone(),
            ..runtime_config
        })
        .context("starting the wasm runtime")?;
        app::run(
            client,
            &runtime,
            &config,
            &settings,
            Some(cluster),
            shutdown,
        )
        .await
    });
    // A compile may still run on the blocking pool (a hot swap's, a standby's precompile, a
    // start cut short): dropping the runtime would wait for it, up to --compile-timeout, and a
    // pod would be killed at the end of its grace period. The stop is complete by now (the
    // lock released, guest calls halted); the compiler process dies with this one
    // (PR_SET_PDEATHSIG).
    tokio.shutdown_timeout(Duration::from_secs(1));
    ran?;
    Ok(ExitCode::SUCCESS)
}

fn leader_config(args: &RunArgs) -> anyhow::Result<Option<LeaderConfig>> {
    let Some(namespace) = args.leader_election_namespace.clone() else {
        return Ok(None);
    };
    let secs = |name: &str, v: f64| {
        Duration::try_from_secs_f64(v)
            .map_err(|_| anyhow::anyhow!("--{name} must be a positive number of seconds"))
    };
    let (lease, renew, retry) = (
        secs("lease-duration", args.lease_duration)?,
        secs("renew-deadline", args.renew_deadline)?,
        secs("retry-period", args.retry_period)?,
    );
    anyhow::ensure!(
        lease > renew,
        "--lease-duration must be longer than --renew-deadline"
    );
    anyhow::ensure!(
        renew > retry,
        "--renew-deadline must be longer than --retry-period"
    );
    anyhow::ensure!(
        !retry.is_zero(),
        "--retry-period must be more than 0 (it paces every election request)"
    );
    Ok(Some(LeaderConfig {
        namespace,
        name: args.leader_election_name.clone(),
        identity: args
            .leader_election_identity
            .clone()
            .unwrap_or_else(default_identity),
        lock: args.leader_election_lock,
        lease_duration: lease,
        renew_deadline: renew,
        retry_period: retry,
    }))
}

/// The watches of a modules ConfigMap whose `listeners.yaml` is in the `--config` format.
async fn config_from_configmap(
    source: &kubelisten::hotswap::ModulesConfigMap,
) -> anyhow::Result<Config> {
    let client = kubelisten::connect::client().await?;
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, &source.namespace);
    let cm = api.get(&source.name).await.with_context(|| {
        format!(
            "reading the modules ConfigMap {}/{}",
            source.namespace, source.name
        )
    })?;
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("listeners.yaml"))
        .with_context(|| {
            format!(
                "ConfigMap {}/{} has no listeners.yaml",
                source.namespace, source.name
            )
        })?;
    anyhow::ensure!(
        kubelisten::hotswap::source::is_config_format(text),
        "the listeners.yaml of {}/{} lists no watches: give --config or --crd too",
        source.namespace,
        source.name
    );
    Ok(kubelisten::hotswap::source::parse_config(text)?)
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed at once (not when first polled):
/// a signal while the watches are being set up is not lost to the default action, it stops the
/// run gracefully.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (term, int) => {
                    tracing::warn!(
                        sigterm = term.is_ok(),
                        sigint = int.is_ok(),
                        "cannot listen for every stop signal"
                    );
                    if let Ok(mut term) = term {
                        term.recv().await;
                    } else if let Ok(mut int) = int {
                        int.recv().await;
                    } else {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn read_input(path: &std::path::Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading events from stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading events file {}", path.display()))
}

fn check_modules(runtime: &Runtime, modules: &[std::path::PathBuf]) -> ExitCode {
    let mut ok = true;
    for path in modules {
        let result = std::fs::read(path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|bytes| check::check(runtime, &bytes).map_err(|p| p.0.join("\n  - ")));
        match result {
            Ok(report) => println!(
                "{}: ok, implements kubelisten:listener/listener@0.1.0 ({}; imports {})",
                path.display(),
                report.digest,
                report.imports.join(", ")
            ),
            Err(problems) => {
                ok = false;
                println!(
                    "{}: not a kubelisten listener:\n  - {problems}",
                    path.display()
                );
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubelisten::runtime::Limits;

    #[test]
    fn listener_flags_need_distinct_names() {
        let err = listener_specs(
            &["a/x.wasm".into(), "b/x.wasm:reference".into()],
            &LimitFlags::default(),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("listener name \"x\"") && err.contains("a/x.wasm"),
            "{err}"
        );
        assert!(err.contains("--config"), "{err}");
        // replay has no --config: its error does not suggest it.
        let err = listener_specs(
            &["a/x.wasm".into(), "b/x.wasm".into()],
            &LimitFlags::default(),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("rename (or copy) one of the files") && !err.contains("--config"),
            "{err}"
        );
        let flags = LimitFlags {
            call_timeout_ms: Some(5),
            crash_loop_threshold: Some(2),
            crash_loop_backoff_ms: Some(100),
            crash_loop_backoff_max_ms: Some(400),
            ..LimitFlags::default()
        };
        let specs = listener_specs(&["a/x.wasm".into(), "b/y.wasm".into()], &flags, true).unwrap();
        assert_eq!(specs.len(), 2);
        let limits = &specs[1].limits;
        assert_eq!(limits.call_timeout, Duration::from_millis(5));
        assert_eq!(limits.memory_bytes, Limits::default().memory_bytes);
        assert_eq!(limits.crash_loop_threshold, 2);
        assert_eq!(limits.crash_loop_backoff, Duration::from_millis(100));
        assert_eq!(limits.crash_loop_backoff_max, Duration::from_millis(400));
    }

    /// The `run` arguments of `kubelisten run ARGS`.
    fn run_args(args: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from(["kubelisten", "run"].iter().chain(args)).expect("parses");
        match cli.command {
            Command::Run(args) => *args,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn leader_timings_must_leave_room_for_each_other() {
        let base = [
            "--crd",
            "t.yaml",
            "-l",
            "a.wasm",
            "--leader-election-namespace",
            "ns",
        ];
        let leader = |extra: &[&str]| leader_config(&run_args(&[&base[..], extra].concat()));
        let config = leader(&[
            "--lease-duration",
            "1.5",
            "--renew-deadline",
            "1.2",
            "--retry-period",
            "0.2",
        ])
        .expect("fractional timings")
        .expect("on");
        assert_eq!(config.lease_duration, Duration::from_millis(1500));
        for (extra, wanted) in [
            (
                &["--retry-period", "0"][..],
                "--retry-period must be more than 0",
            ),
            (
                &["--lease-duration", "10", "--renew-deadline", "10"],
                "--lease-duration must be longer than --renew-deadline",
            ),
            (
                &["--renew-deadline", "2", "--retry-period", "2"],
                "--renew-deadline must be longer than --retry-period",
            ),
        ] {
            let err = leader(extra).expect_err(&format!("{extra:?}")).to_string();
            assert!(err.contains(wanted), "{extra:?}: {err}");
        }
    }

    #[test]
    fn flag_namespaces_are_checked_as_a_config_files_are() {
        let crd = ["--crd", "things.yaml", "-l", "a.wasm"];
        let ok = |extra: &[&str]| run_config(&run_args(&[&crd[..], extra].concat()));
        let config = ok(&["-n", "a", "-n", "b"]).expect("two namespaces");
        assert_eq!(config.watches[0].namespaces, ["a", "b"]);
        assert!(ok(&[]).expect("all namespaces").watches[0]
            .namespaces
            .is_empty());
        for (extra, wanted) in [
            (
                &["-n", "a", "-n", "a"][..],
                "namespace \"a\" is listed twice",
            ),
            (&["-n", "a,b,a"], "namespace \"a\" is listed twice"),
            (&["-n", "a,,b"], "namespace must not be empty"),
            (&["-n", ""], "namespace must not be empty"),
        ] {
            let err = ok(extra).expect_err(&format!("{extra:?}")).to_string();
            assert!(
                err.contains("--namespace") && err.contains(wanted),
                "{extra:?}: {err}"
            );
        }
    }
}

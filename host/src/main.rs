//! The `kubelisten` binary: parse the command line, set up logging, run the subcommand.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kubelisten::dispatch::Chain;
use kubelisten::replay;
use kubelisten::runtime::{check, Listener, ListenerSpec, Runtime, RuntimeConfig};

mod cli;

use cli::{Cli, Command, LogFormat, OutputFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
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

fn runtime(cli: &Cli) -> anyhow::Result<Runtime> {
    let mut config = RuntimeConfig::default();
    if cli.no_cache {
        config.cache_dir = None;
    } else if let Some(dir) = &cli.cache_dir {
        config.cache_dir = Some(dir.clone());
    }
    Runtime::new(config).context("starting the wasm runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = runtime(&cli)?;
    match cli.command {
        Command::Check { modules } => Ok(check_modules(&runtime, &modules)),
        Command::Replay {
            listeners,
            output,
            fail_on_error,
            call_timeout_ms,
            memory_mib,
            events,
        } => {
            let mut specs = Vec::new();
            for spec in &listeners {
                let mut spec: ListenerSpec = spec.parse()?;
                if let Some(ms) = call_timeout_ms {
                    spec.limits.call_timeout = std::time::Duration::from_millis(ms);
                }
                if let Some(mib) = memory_mib {
                    spec.limits.memory_bytes = mib << 20;
                }
                specs.push(spec);
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

//! A stop signal while `kubelisten run` is still starting ends it gracefully (exit status 0), on
//! the real signal path: the built binary against an API server that accepts connections and
//! never answers, so the start is stuck where the signal arrives. Needs no cluster.
//!
//! The same start shows what a taken status address does: the default one (`127.0.0.1:8081`)
//! only turns `/status` off, and the start goes on to the API server; a given one stops it.
#![cfg(unix)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long each wait may take: a liveness bound, not a timing assertion.
const BOUND: Duration = Duration::from_secs(30);

/// A fake API server: accepts connections and holds them, never answering.
struct Unanswering {
    listener: TcpListener,
    held: Vec<TcpStream>,
}

impl Unanswering {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Self {
            listener,
            held: Vec::new(),
        }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    /// Waits until `child` has connected (the accept happened); panics if it exits first.
    fn wait_for_connection(&mut self, child: &mut Child, log: &Path) {
        let started = Instant::now();
        loop {
            match self.listener.accept() {
                Ok((connection, _)) => {
                    self.held.push(connection);
                    return;
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) => panic!("accept: {err}"),
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "kubelisten exited ({status}) before connecting:\n{}",
                    read_log(log)
                );
            }
            if started.elapsed() > BOUND {
                let _ = child.kill();
                panic!(
                    "kubelisten did not connect within {BOUND:?}:\n{}",
                    read_log(log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Starts `kubelisten run ARGS` with a kubeconfig pointing at `api`, its stderr in the returned
/// log file, and nothing from the environment that could point it elsewhere; no probe server
/// and no status listener.
fn run(dir: &Path, api: &Unanswering, args: &[&str]) -> (Child, PathBuf) {
    let args = [args, &["--health-port", "0", "--status-bind", "off"]].concat();
    start(dir, api, &args, &[])
}

/// Starts `kubelisten run ARGS` as [`run`] does, with the environment variables `env` and
/// nothing else added (the probe server and the status listener at their defaults unless
/// `args` or `env` say otherwise).
fn start(dir: &Path, api: &Unanswering, args: &[&str], env: &[(&str, &str)]) -> (Child, PathBuf) {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            api.port()
        ),
    )
    .unwrap();
    let log = dir.join("stderr.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubelisten"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("KUBELISTEN_")
            || name.starts_with("KUBERNETES_")
            || name.to_ascii_lowercase().ends_with("_proxy")
        {
            command.env_remove(name);
        }
    }
    let child = command
        .arg("run")
        .args(args)
        .envs(env.iter().copied())
        .env("KUBECONFIG", &kubeconfig)
        .env("KUBELISTEN_CACHE_DIR", dir.join("cache"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

/// Sends SIGTERM to `child` and waits for it to exit.
fn terminate(child: &mut Child, log: &Path) -> ExitStatus {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM failed: {sent}");
    exited(child, log, "of SIGTERM")
}

/// Waits for `child` to exit (`after` says since what, for the panic after [`BOUND`]).
fn exited(child: &mut Child, log: &Path, after: &str) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kubelisten did not exit within {BOUND:?} {after}:\n{}",
                read_log(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A config file whose one watch needs API discovery (never answered by [`Unanswering`]); the
/// module is loaded only after that, so it need not exist.
fn config_file(dir: &Path) -> PathBuf {
    let config = dir.join("kubelisten.yaml");
    std::fs::write(
        &config,
        "watches:\n  - name: cms\n    apiVersion: v1\n    kind: ConfigMap\n    listeners: [{module: x.wasm}]\n",
    )
    .unwrap();
    config
}

/// A TCP port free now on every address (the probe server binds `::`, dual-stack; IPv4 only
/// where there is no IPv6).
fn free_port() -> u16 {
    TcpListener::bind("[::]:0")
        .or_else(|_| TcpListener::bind("0.0.0.0:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on `127.0.0.1:port`: the response's status line.
fn status_line(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(BOUND))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.lines().next().unwrap_or_default().to_string())
}

#[test]
fn sigterm_while_the_modules_configmap_is_read_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = Unanswering::start();
    // The ConfigMap alone configures kubelisten: its first read (which never gets an answer)
    // comes before anything else.
    let (mut child, log) = run(
        dir.path(),
        &api,
        &["--modules-configmap", "default/kubelisten-modules"],
    );
    api.wait_for_connection(&mut child, &log);
    let status = terminate(&mut child, &log);
    let log = read_log(&log);
    assert!(status.success(), "{status}:\n{log}");
    assert!(
        log.contains("shutting down before the watches started"),
        "{log}"
    );
}

#[test]
fn sigterm_while_the_watches_are_set_up_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = Unanswering::start();
    // A normal start from a config file: resolving the watch's target (API discovery) is what
    // never gets an answer.
    let config = config_file(dir.path());
    let (mut child, log) = run(dir.path(), &api, &["--config", config.to_str().unwrap()]);
    api.wait_for_connection(&mut child, &log);
    let status = terminate(&mut child, &log);
    let log = read_log(&log);
    assert!(status.success(), "{status}:\n{log}");
    assert!(
        log.contains("shutting down before the watches started"),
        "{log}"
    );
}

/// The default status address taken (a second kubelisten on the host, a controller-runtime
/// manager's `:8081`): the start goes on without `/status`, with a warning. It gets past the
/// servers to the API server, and the probe server answers.
#[test]
fn a_taken_default_status_address_does_not_stop_the_start() {
    // Held here, or already by something else: either way kubelisten cannot bind it.
    let _held = match TcpListener::bind("127.0.0.1:8081") {
        Ok(held) => Some(held),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => None,
        Err(err) => panic!("binding 127.0.0.1:8081: {err}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut api = Unanswering::start();
    let config = config_file(dir.path());
    let health = free_port().to_string();
    let (mut child, log) = start(
        dir.path(),
        &api,
        &[
            "--config",
            config.to_str().unwrap(),
            "--health-port",
            &health,
        ],
        &[],
    );
    // Connecting to the API server comes after the servers are bound (the process would
    // have exited before it).
    api.wait_for_connection(&mut child, &log);
    let healthz = status_line(health.parse().unwrap(), "/healthz");
    assert!(
        healthz.as_ref().is_ok_and(|line| line.contains(" 200 ")),
        "{healthz:?}:\n{}",
        read_log(&log)
    );
    let status = terminate(&mut child, &log);
    let log = read_log(&log);
    assert!(status.success(), "{status}:\n{log}");
    assert!(
        log.contains("cannot bind the default status address 127.0.0.1:8081")
            && log.contains("/status is off")
            && log.contains("--status-bind"),
        "{log}"
    );
}

/// A status address that is given (flag or environment) and taken stops the start with the
/// error, as before: it was asked for.
#[test]
fn a_taken_given_status_address_stops_the_start() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let via_flag = [["--status-bind", addr.as_str()]];
    let via_env = [("KUBELISTEN_STATUS_BIND", addr.as_str())];
    for (args, env) in [(&via_flag[..], &[][..]), (&[][..], &via_env[..])] {
        let dir = tempfile::tempdir().unwrap();
        let api = Unanswering::start();
        let config = config_file(dir.path());
        let mut all = vec!["--config", config.to_str().unwrap(), "--health-port", "0"];
        all.extend(args.iter().flatten());
        let (mut child, log) = start(dir.path(), &api, &all, env);
        let status = exited(&mut child, &log, "of its start");
        let log = read_log(&log);
        assert!(!status.success(), "{args:?} {env:?}: {status}:\n{log}");
        assert!(
            log.contains(&format!("binding the status address {addr}")),
            "{args:?} {env:?}:\n{log}"
        );
    }
}

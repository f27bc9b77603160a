//! A stop signal while `kubelisten run` is still starting ends it gracefully (exit status 0), on
//! the real signal path: the built binary against an API server that accepts connections and
//! never answers, so the start is stuck where the signal arrives. Needs no cluster.
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
/// log file, and nothing from the environment that could point it elsewhere.
fn run(dir: &Path, api: &Unanswering, args: &[&str]) -> (Child, PathBuf) {
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
        .args(["--health-port", "0", "--status-bind", "off"])
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
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kubelisten did not exit within {BOUND:?} of SIGTERM:\n{}",
                read_log(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
    // never gets an answer; the module is loaded only after that, so it need not exist.
    let config = dir.path().join("kubelisten.yaml");
    std::fs::write(
        &config,
        "watches:\n  - name: cms\n    apiVersion: v1\n    kind: ConfigMap\n    listeners: [{module: x.wasm}]\n",
    )
    .unwrap();
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

//! Native baseline for bench/e2e.sh: watch one custom resource kind with kube-runtime's watcher
//! and, for every event, print
//!
//! `BENCH <create|update|delete> <namespace>/<name> <resourceVersion> <unix-time-ns>`
//!
//! to stdout (one write per line, like the kubelisten guest's log line). Like kubelisten it keeps
//! the last seen state of every object so an update is told from a create and carries the
//! previous object (kubelisten passes the old object to `update`).
//!
//! Usage: native-listener GROUP VERSION KIND PLURAL [NAMESPACE]
use std::collections::HashMap;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn seen(out: &mut std::io::Stdout, kind: &str, obj: &DynamicObject) {
    let t = now_ns();
    let line = format!(
        "BENCH {kind} {}/{} {} {t}\n",
        obj.namespace().as_deref().unwrap_or("-"),
        obj.name_any(),
        obj.resource_version().as_deref().unwrap_or("")
    );
    let mut lock = out.lock();
    let _ = lock.write_all(line.as_bytes());
    let _ = lock.flush();
}

/// Trivial handler standing in for a listener: it only looks at the object.
fn handle(kind: &str, obj: &DynamicObject, old: Option<&DynamicObject>, out: &mut std::io::Stdout) {
    std::hint::black_box(old);
    seen(out, kind, obj);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        anyhow::bail!("usage: native-listener GROUP VERSION KIND PLURAL [NAMESPACE]");
    }
    let gvk = GroupVersionKind::gvk(&args[1], &args[2], &args[3]);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &args[4]);
    let client = Client::try_default().await?;
    let api: Api<DynamicObject> = match args.get(5) {
        Some(ns) => Api::namespaced_with(client, ns, &ar),
        None => Api::all_with(client, &ar),
    };
    let mut out = std::io::stdout();
    let mut known: HashMap<(Option<String>, String), DynamicObject> = HashMap::new();
    let stream = watcher::watcher(api, watcher::Config::default().any_semantic());
    futures::pin_mut!(stream);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let ev = tokio::select! {
            ev = stream.try_next() => ev,
            _ = &mut ctrl_c => break,
            _ = term.recv() => break,
        };
        let ev = match ev {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => {
                eprintln!("watch error: {e}");
                continue;
            }
        };
        match ev {
            Event::Init => {}
            Event::InitDone => {
                eprintln!("initial list done: {} objects", known.len());
            }
            Event::Apply(obj) | Event::InitApply(obj) => {
                let key = (obj.namespace(), obj.name_any());
                let old = known.insert(key, obj.clone());
                let kind = if old.is_some() { "update" } else { "create" };
                handle(kind, &obj, old.as_ref(), &mut out);
            }
            Event::Delete(obj) => {
                known.remove(&(obj.namespace(), obj.name_any()));
                handle("delete", &obj, None, &mut out);
            }
        }
    }
    Ok(())
}

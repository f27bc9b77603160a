//! Connecting to Kubernetes: the inferred configuration (in-cluster, else `KUBECONFIG` or
//! `~/.kube/config`) with a read timeout, so that no request can wait for good on a connection
//! that went silent.

use std::time::Duration;

use anyhow::Context;

/// Longest silence on a connection while a response is awaited: more than a watch's longest
/// server-side timeout (290 s) plus its bookmarks, so a healthy watch never meets it. Requests
/// with their own, shorter bounds (leader election, guest calls, list pages) keep those.
pub const READ_TIMEOUT: Duration = Duration::from_secs(330);

/// A client for the inferred configuration, with [`READ_TIMEOUT`] counted from each request.
///
/// # Errors
/// No configuration could be inferred, or the client could not be built from it.
pub async fn client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await.context(
        "connecting to Kubernetes (in-cluster config, else KUBECONFIG or ~/.kube/config)",
    )?;
    config.read_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
    kube::Client::try_from(config).context("connecting to Kubernetes: building the client")
}

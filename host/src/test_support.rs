//! Shared pieces of the unit tests.

/// A client of an API server that accepts connections and never answers (a peer gone without a
/// reset); the server lives as long as the returned task.
pub(crate) async fn unanswering_api() -> (kube::Client, tokio::task::JoinHandle<()>) {
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", server.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((connection, _)) = server.accept().await {
            open.push(connection);
        }
    });
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    (client, held)
}

//! The admin HTTP API (warp): health, readiness and metrics.

use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use warp::Filter;
use warp::http::StatusCode;

/// Binds `addr` and serves the admin API until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "admin API listening");
    let health = warp::path!("health").and(warp::get()).map(|| warp::reply::json(&serde_json::json!({"status": "ok"})));
    let ready_metrics = metrics.clone();
    let ready = warp::path!("ready").and(warp::get()).map(move || {
        let ready = ready_metrics.is_ready();
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        warp::reply::with_status(warp::reply::json(&serde_json::json!({"ready": ready})), status)
    });
    let prometheus = warp::path!("metrics")
        .and(warp::get())
        .map(move || warp::reply::with_header(metrics.render(), "content-type", "text/plain; version=0.0.4"));
    let routes = health.or(ready).or(prometheus);
    Ok(tokio::spawn(warp::serve(routes).incoming(listener).graceful(shutdown).run()))
}

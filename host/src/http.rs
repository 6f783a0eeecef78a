//! The admin HTTP API (warp): health, readiness, metrics, the live pipeline
//! and reloads. Every answer is JSON (metrics aside), errors included:
//! `{"error": "..."}` with a status code that fits.

use crate::metrics::Metrics;
use crate::reload::{Outcome, Report, Request, Status, Trigger};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// How long `POST /api/reload` waits for the reload to finish before it
/// answers `202 Accepted` (the reload goes on). Default 30 s: compiling a
/// large new plugin takes seconds, a batch stuck on an outage may take more.
pub const RELOAD_WAIT: Duration = Duration::from_secs(30);

/// What the admin API reads and where it sends reload requests.
#[derive(Clone)]
pub struct Admin {
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// The live pipeline.
    pub status: Arc<Status>,
    /// The reloader's queue.
    pub requests: mpsc::Sender<Request>,
}

/// Binds `addr` and serves the admin API until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    admin: Admin,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "admin API listening");
    let with = move || {
        let admin = admin.clone();
        warp::any().map(move || admin.clone())
    };
    let health = warp::path!("health").and(warp::get()).map(|| json_reply(StatusCode::OK, json!({"status": "ok"})));
    let ready = warp::path!("ready").and(warp::get()).and(with()).map(|admin: Admin| {
        let ready = admin.metrics.is_ready();
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        json_reply(status, json!({"ready": ready}))
    });
    let prometheus = warp::path!("metrics").and(warp::get()).and(with()).map(|admin: Admin| {
        warp::reply::with_header(admin.metrics.render(), "content-type", "text/plain; version=0.0.4").into_response()
    });
    let pipeline = warp::path!("api" / "pipeline").and(warp::get()).and(with()).map(|admin: Admin| {
        if !admin.status.is_live() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the pipeline is still loading");
        }
        json_reply(StatusCode::OK, admin.status.to_json(&admin.metrics))
    });
    let reload = warp::path!("api" / "reload")
        .and(warp::post())
        .and(with())
        .then(|admin: Admin| async move { request(&admin, Trigger::Api).await });
    let promote = warp::path!("api" / "promote" / String).and(warp::post()).and(with()).then(
        |stage: String, admin: Admin| async move {
            match admin.status.stage(&stage) {
                None => error(StatusCode::NOT_FOUND, &format!("no stage `{stage}` in the live pipeline")),
                Some(false) => error(StatusCode::CONFLICT, &format!("stage `{stage}` has no canary to promote")),
                Some(true) => request(&admin, Trigger::Promote(stage)).await,
            }
        },
    );
    let routes =
        health.or(ready).unify().or(prometheus).unify().or(pipeline).unify().or(reload).unify().or(promote).unify();
    let routes = routes.recover(rejection);
    Ok(tokio::spawn(warp::serve(routes).incoming(listener).graceful(shutdown).run()))
}

/// Queues a reload and answers with its report.
async fn request(admin: &Admin, trigger: Trigger) -> Response {
    let (reply, report) = oneshot::channel();
    if admin.requests.send(Request { trigger, reply: Some(reply) }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the host is stopping");
    }
    match tokio::time::timeout(RELOAD_WAIT, report).await {
        Ok(Ok(report)) => report_reply(&report),
        Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "the host is stopping"),
        Err(_) => json_reply(
            StatusCode::ACCEPTED,
            json!({"status": "pending", "message": "the reload is still running; see GET /api/pipeline"}),
        ),
    }
}

fn report_reply(report: &Report) -> Response {
    let status = match report.result {
        Outcome::Applied | Outcome::Unchanged => StatusCode::OK,
        Outcome::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
        Outcome::RestartRequired => StatusCode::CONFLICT,
    };
    json_reply(status, serde_json::to_value(report).expect("a report is JSON"))
}

fn json_reply(status: StatusCode, body: serde_json::Value) -> Response {
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json_reply(status, json!({"error": message}))
}

/// Unknown paths and wrong methods, as JSON.
async fn rejection(rejection: warp::Rejection) -> Result<Response, Infallible> {
    let known = ["/health", "/ready", "/metrics", "GET /api/pipeline", "POST /api/reload", "POST /api/promote/{stage}"];
    Ok(if rejection.is_not_found() {
        json_reply(StatusCode::NOT_FOUND, json!({"error": "no such endpoint", "endpoints": known}))
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        json_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "method not allowed on this endpoint", "endpoints": known}),
        )
    } else {
        error(StatusCode::BAD_REQUEST, &format!("{rejection:?}"))
    })
}

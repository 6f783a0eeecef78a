//! The admin HTTP API (warp): health, readiness, metrics, the live pipeline,
//! reloads, the sales report, HTTP ingest and the dashboard. Every answer
//! is JSON (metrics and the dashboard aside), errors included:
//! `{"error": "..."}` with a status code that fits. When a token is set
//! (`SLUICE_ADMIN_TOKEN`), the endpoints that show the pipeline's data
//! (`/api/pipeline`, `/api/stats`, `/api/report`) and those that change
//! something (reload, promote, ingest) need `Authorization: Bearer <token>`;
//! the probes (`/health`, `/ready`), `/metrics`, and the dashboard's page and
//! script, which hold no data, stay open. The endpoints that change something
//! take only `Content-Type: application/json` (see `json_only`).

pub mod views;

use crate::kafka::Writer;
use crate::metrics::Metrics;
use crate::reload::{ReloadOutcome, ReloadReport, Request, Trigger};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use views::PipelineStatus;
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
    pub status: Arc<PipelineStatus>,
    /// The reloader's queue.
    pub requests: mpsc::Sender<Request>,
    /// What `GET /api/report` serves.
    pub report: Arc<dyn ReportSource>,
    /// HTTP ingest.
    pub ingest: Arc<Ingest>,
    /// The bearer token the data and the changing endpoints need, if any.
    pub token: Option<Arc<str>>,
    /// Host names answered besides IP addresses and `localhost`.
    pub allowed_hosts: Arc<[String]>,
}

/// What `GET /api/report` serves: a report of the pipeline's results as
/// JSON, or why it could not be read. The composition root gives the admin
/// API one (the default pipeline's sales report), so that the API does not
/// know what the report holds.
pub trait ReportSource: Send + Sync {
    /// The report.
    fn report(&self) -> futures::future::BoxFuture<'_, Result<serde_json::Value, String>>;
}

/// `POST /api/ingest/{topic}`: a producer and the topics it may write to.
pub struct Ingest {
    /// An idempotent producer (not the pipeline's transactional one).
    pub producer: Writer,
    /// The allow-list.
    pub topics: Vec<String>,
    /// Largest body, in bytes.
    pub max_bytes: u64,
    /// One permit per ingest request being served ([`INGEST_CONCURRENCY`]).
    pub permits: Arc<tokio::sync::Semaphore>,
}

/// Ingest requests served at once; more are answered 429 at once. Default
/// 4: each may hold `admin.ingest_max_bytes` in memory while it is read and
/// produced, and the pipeline's own producer shares the broker.
pub const INGEST_CONCURRENCY: usize = 4;

/// Refused for want of a free ingest slot.
#[derive(Debug)]
struct Busy;

impl warp::reject::Reject for Busy {}

/// The dashboard page.
const DASHBOARD: &str = include_str!("dashboard.html");
/// Chart.js, from the npm registry (`dashboard/package.json`), embedded so
/// that the dashboard works offline.
const CHART_JS: &[u8] = include_bytes!("../../../dashboard/node_modules/chart.js/dist/chart.umd.min.js");

/// A request refused for want of the admin token, or for where it comes
/// from: the status, the error, and the `WWW-Authenticate` challenge if
/// any.
#[derive(Debug)]
struct Unauthorized(StatusCode, &'static str, Option<&'static str>);

impl warp::reject::Reject for Unauthorized {}

/// The challenge of a 401: the token goes in `Authorization: Bearer`
/// (RFC 6750).
const CHALLENGE: &str = r#"Bearer realm="sluice""#;
/// The challenge of the 403 for a wrong token, by which the dashboard tells
/// it from the other 403s (a foreign `Host` or origin) and asks again.
const WRONG_TOKEN: &str = r#"Bearer realm="sluice", error="invalid_token""#;

/// Passes when no token is set or the request carries it: 401 (with a
/// `WWW-Authenticate` challenge) without it, 403 with another.
fn authorized(token: Option<Arc<str>>) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and_then(move |header: Option<String>| {
            let token = token.clone();
            async move {
                let Some(token) = token else { return Ok(()) };
                match header.as_deref().and_then(|h| h.strip_prefix("Bearer ")) {
                    None => Err(warp::reject::custom(Unauthorized(
                        StatusCode::UNAUTHORIZED,
                        "this endpoint needs `Authorization: Bearer <SLUICE_ADMIN_TOKEN>`",
                        Some(CHALLENGE),
                    ))),
                    // In constant time: how much of a guess matches must not show in the answer time.
                    Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
                    Some(_) => Err(warp::reject::custom(Unauthorized(
                        StatusCode::FORBIDDEN,
                        "wrong admin token",
                        Some(WRONG_TOKEN),
                    ))),
                }
            }
        })
        .untuple_one()
}

/// Whether the admin API may listen on `addr`: beyond loopback without a
/// token, anyone who reaches the port could read the pipeline's data,
/// ingest records, reload and promote, so that needs `admin.insecure = true`.
pub fn check_exposure(addr: SocketAddr, has_token: bool, insecure: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || has_token {
        return Ok(());
    }
    if insecure {
        tracing::warn!(%addr, "the admin API listens beyond loopback with no token (admin.insecure = true)");
        return Ok(());
    }
    Err(format!(
        "the admin API would listen on {addr}, beyond loopback, with no token: set SLUICE_ADMIN_TOKEN (the \
         API's data and the endpoints that change something then need `Authorization: Bearer <token>`), \
         listen on 127.0.0.1, \
         or set `admin.insecure = true` in pipeline.toml to serve it open"
    ))
}

/// Passes requests whose `Host` names this host the way only its own users
/// would: an IP address, `localhost` or a name of `allowed` (no `Host`:
/// not a browser). Any other name may be an attacker's that resolves here
/// (DNS rebinding), so that a web page could read and drive the API.
fn host_allowed(allowed: Arc<[String]>) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("host")
        .and_then(move |host: Option<String>| {
            let allowed = allowed.clone();
            async move {
                match host {
                    Some(host) if !host_is_allowed(&host, &allowed) => Err(warp::reject::custom(Unauthorized(
                        StatusCode::FORBIDDEN,
                        "this Host is not one the admin API answers to: use an IP address or localhost, or list \
                         the name in admin.allowed_hosts",
                        None,
                    ))),
                    _ => Ok(()),
                }
            }
        })
        .untuple_one()
}

/// Whether a `Host` header (`name[:port]`, `[v6]:port`) is an IP address,
/// `localhost` or one of `allowed`.
fn host_is_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Refuses a request that a web page of another origin made, as the
/// browser says in `Sec-Fetch-Site` or `Origin`: a page must not change the
/// pipeline of a host its visitor can reach.
fn same_origin() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    let header = |name| warp::header::optional::<String>(name);
    header("sec-fetch-site")
        .and(header("origin"))
        .and(header("host"))
        .and_then(|site: Option<String>, origin: Option<String>, host: Option<String>| async move {
            let other_site = site.is_some_and(|s| s != "same-origin" && s != "none");
            let other_origin = origin.is_some_and(|origin| {
                let origin_host = origin.split_once("://").map(|(_, rest)| rest);
                origin_host.is_none_or(|o| host.as_deref().is_none_or(|h| !o.eq_ignore_ascii_case(h)))
            });
            if other_site || other_origin {
                return Err(warp::reject::custom(Unauthorized(
                    StatusCode::FORBIDDEN,
                    "a request from a web page of another origin may not change anything",
                    None,
                )));
            }
            Ok(())
        })
        .untuple_one()
}

/// A change refused for its `Content-Type` (415): the one it had, if any.
#[derive(Debug)]
struct NotJson(Option<String>);

impl warp::reject::Reject for NotJson {}

/// Passes requests whose `Content-Type` is `application/json` (parameters
/// such as `; charset=utf-8` aside), on every endpoint that changes
/// something, whether it reads a body (ingest, which takes one JSON value)
/// or not (reload, promote); anything else, or none, is answered 415.
///
/// This is what keeps web pages of other sites from those endpoints, with a
/// token or without. A page can make its visitor's browser send a request
/// to another site without asking that site first (a CORS "simple
/// request": an HTML `<form>`, `fetch` in `no-cors` mode,
/// `navigator.sendBeacon`) only with a body typed `text/plain`,
/// `application/x-www-form-urlencoded` or `multipart/form-data`. Any other
/// type, `application/json` included, makes the browser ask first with a
/// preflight `OPTIONS`, which this API never grants (it sends no
/// `Access-Control-Allow-*` headers), so the request itself is never sent.
/// [`same_origin`] refuses the requests whose browser says where they come
/// from; this one does not depend on what the browser says.
fn json_only() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|content_type: Option<String>| async move {
            match content_type {
                Some(t) if is_json(&t) => Ok(()),
                other => Err(warp::reject::custom(NotJson(other))),
            }
        })
        .untuple_one()
}

/// Whether a `Content-Type` is `application/json`, in any case, with or
/// without parameters.
fn is_json(content_type: &str) -> bool {
    content_type.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/json")
}

/// Binds `addr` and serves the admin API until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    admin: Admin,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "admin API listening");
    let (admin_token, max_body, allowed_hosts) =
        (admin.token.clone(), admin.ingest.max_bytes, admin.allowed_hosts.clone());
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
        warp::reply::with_header(admin.metrics.render(), "content-type", crate::metrics::CONTENT_TYPE).into_response()
    });
    // With a token, the reads that show data need it too: the stages' configs
    // and canary examples (record values), the counters, the sales report.
    let data = authorized(admin_token.clone());
    let pipeline =
        warp::path!("api" / "pipeline").and(warp::get()).and(data.clone()).and(with()).map(|admin: Admin| {
            if !admin.status.is_live() {
                return error(StatusCode::SERVICE_UNAVAILABLE, "the pipeline is still loading");
            }
            json_reply(StatusCode::OK, admin.status.to_json(&admin.metrics))
        });
    let auth = same_origin().and(authorized(admin_token)).and(json_only());
    let reload = warp::path!("api" / "reload")
        .and(warp::post())
        .and(auth.clone())
        .and(with())
        .then(|admin: Admin| async move { request(&admin, Trigger::Api).await });
    let promote = warp::path!("api" / "promote" / String).and(warp::post()).and(auth.clone()).and(with()).then(
        |stage: String, admin: Admin| async move {
            match admin.status.stage(&stage) {
                None => error(StatusCode::NOT_FOUND, &format!("no stage `{stage}` in the live pipeline")),
                Some(false) => error(StatusCode::CONFLICT, &format!("stage `{stage}` has no canary to promote")),
                Some(true) => request(&admin, Trigger::Promote(stage)).await,
            }
        },
    );
    let report =
        warp::path!("api" / "report").and(warp::get()).and(data.clone()).and(with()).then(|admin: Admin| async move {
            match admin.report.report().await {
                Ok(report) => json_reply(StatusCode::OK, report),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
            }
        });
    let stats = warp::path!("api" / "stats")
        .and(warp::get())
        .and(data)
        .and(with())
        .map(|admin: Admin| json_reply(StatusCode::OK, admin.metrics.snapshot()));
    // The slot is taken before the body is read and held until the answer.
    let slot = with().and_then(|admin: Admin| async move {
        admin.ingest.permits.clone().try_acquire_owned().map_err(|_| warp::reject::custom(Busy))
    });
    let ingest = warp::path!("api" / "ingest" / String)
        .and(warp::post())
        .and(auth)
        .and(slot)
        .and(with())
        .and(warp::body::content_length_limit(max_body))
        .and(warp::body::bytes())
        .then(|topic: String, _slot: tokio::sync::OwnedSemaphorePermit, admin: Admin, body: bytes::Bytes| async move {
            ingest(&admin, &topic, &body).await
        });
    let dashboard = warp::path::end().and(warp::get()).map(|| warp::reply::html(DASHBOARD).into_response());
    let chart = warp::path!("assets" / "chart.umd.min.js")
        .and(warp::get())
        .map(|| warp::reply::with_header(CHART_JS, "content-type", "text/javascript; charset=utf-8").into_response());
    let routes = health
        .or(ready)
        .unify()
        .or(prometheus)
        .unify()
        .or(pipeline)
        .unify()
        .or(reload)
        .unify()
        .or(promote)
        .unify()
        .or(report)
        .unify()
        .or(stats)
        .unify()
        .or(ingest)
        .unify()
        .or(dashboard)
        .unify()
        .or(chart)
        .unify();
    let routes = host_allowed(allowed_hosts).and(routes).recover(rejection);
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

fn report_reply(report: &ReloadReport) -> Response {
    let status = match report.result {
        ReloadOutcome::Applied | ReloadOutcome::Unchanged => StatusCode::OK,
        ReloadOutcome::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
        ReloadOutcome::RestartRequired => StatusCode::CONFLICT,
    };
    json_reply(status, serde_json::to_value(report).expect("a report is JSON"))
}

fn json_reply(status: StatusCode, body: serde_json::Value) -> Response {
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json_reply(status, json!({"error": message}))
}

/// Produces a JSON object, or each object of a JSON array, to `topic`.
async fn ingest(admin: &Admin, topic: &str, body: &[u8]) -> Response {
    if !admin.ingest.topics.iter().any(|t| t == topic) {
        let allowed = admin.ingest.topics.join(", ");
        return error(StatusCode::NOT_FOUND, &format!("topic `{topic}` is not open for ingest (allowed: {allowed})"));
    }
    let records: Vec<&[u8]> = match serde_json::from_slice::<serde_json::Value>(body) {
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("the body is not JSON: {e}")),
        Ok(serde_json::Value::Object(_)) => vec![body],
        Ok(serde_json::Value::Array(items)) => {
            if items.is_empty() {
                return error(StatusCode::BAD_REQUEST, "the array is empty: nothing to ingest");
            }
            if let Some(i) = items.iter().position(|v| !v.is_object()) {
                return error(StatusCode::BAD_REQUEST, &format!("element {i} of the array is not a JSON object"));
            }
            let raw: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).expect("parsed above");
            raw.into_iter().map(|r| r.get().as_bytes()).collect()
        }
        Ok(_) => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object or an array of objects"),
    };
    let positions = |written: Vec<(i32, i64)>| -> Vec<serde_json::Value> {
        written.into_iter().map(|(partition, offset)| json!({"partition": partition, "offset": offset})).collect()
    };
    match admin.ingest.producer.write_all(topic, &records).await {
        Ok(written) => json_reply(StatusCode::OK, json!({"topic": topic, "records": positions(written)})),
        Err((written, e)) => {
            admin.metrics.record_error("kafka");
            let message = format!("{} of {} records were written; then: {e}", written.len(), records.len());
            json_reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": message, "records": positions(written)}))
        }
    }
}

/// Unknown paths, wrong methods, missing tokens, bodies that are not JSON and
/// oversize bodies, as JSON.
async fn rejection(rejection: warp::Rejection) -> Result<Response, Infallible> {
    let known = [
        "GET /",
        "GET /health",
        "GET /ready",
        "GET /metrics",
        "GET /api/pipeline",
        "GET /api/stats",
        "GET /api/report",
        "POST /api/reload",
        "POST /api/promote/{stage}",
        "POST /api/ingest/{topic}",
    ];
    if let Some(Unauthorized(status, message, challenge)) = rejection.find::<Unauthorized>() {
        let reply = error(*status, message);
        return Ok(match challenge {
            Some(challenge) => warp::reply::with_header(reply, "www-authenticate", *challenge).into_response(),
            None => reply,
        });
    }
    if let Some(NotJson(got)) = rejection.find::<NotJson>() {
        let got = got.as_deref().map_or_else(|| "none".to_string(), |t| format!("`{t}`"));
        let message = format!("this endpoint takes only `Content-Type: application/json` (got {got})");
        return Ok(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &message));
    }
    if rejection.find::<Busy>().is_some() {
        let message = format!("{INGEST_CONCURRENCY} ingest requests are being served: retry shortly");
        return Ok(warp::reply::with_header(error(StatusCode::TOO_MANY_REQUESTS, &message), "retry-after", "1")
            .into_response());
    }
    if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        return Ok(error(StatusCode::PAYLOAD_TOO_LARGE, "the body is larger than admin.ingest_max_bytes"));
    }
    if rejection.find::<warp::reject::LengthRequired>().is_some() {
        return Ok(error(StatusCode::LENGTH_REQUIRED, "send a Content-Length header"));
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_are_ip_addresses_localhost_or_listed() {
        let allowed = ["sluice.prod.svc".to_string()];
        for host in ["127.0.0.1:8080", "10.1.2.3", "[::1]:8080", "localhost:8080", "LOCALHOST", "sluice.prod.svc:8080"]
        {
            assert!(super::host_is_allowed(host, &allowed), "{host}");
        }
        for host in ["evil.example:8080", "localhost.evil.example", "127.0.0.1.nip.io", "sluice.prod.svc.evil"] {
            assert!(!super::host_is_allowed(host, &allowed), "{host}");
        }
    }

    #[test]
    fn json_is_application_json_with_or_without_parameters() {
        for json in ["application/json", "Application/JSON", "application/json; charset=utf-8", "application/json;q"] {
            assert!(super::is_json(json), "{json}");
        }
        for other in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""] {
            assert!(!super::is_json(other), "{other}");
        }
        for other in ["application/jsonp", "application/json-seq", "text/json", "application/json+x", "json"] {
            assert!(!super::is_json(other), "{other}");
        }
    }
}

//! Liveness and readiness for the load balancer and systemd, and metrics for Prometheus.

use rocket::http::Status;
use rocket::request::{FromRequest, Outcome};
use rocket::serde::json::Json;
use rocket::{get, routes, Request, Route, State};
use serde_json::{json, Value};

use super::doc::{errors, Up};
use crate::error::{AppError, ErrorCode};
use crate::state::{AppState, Dependencies};
use crate::telemetry::RequestId;

pub fn routes() -> Vec<Route> {
    routes![healthz, readyz, metrics]
}

errors!(NotReady {
    "503" => "NOT_READY, naming the failing part; `checks` has each part's status",
});

/// `/metrics` and `/readyz` are for the instance itself (the CloudWatch agent, the deployment hooks, an operator
/// on the machine): answered only to a client on this machine that came through no proxy. The load balancer
/// connects from the network and adds `X-Forwarded-For`, so through it every spelling of these paths
/// (`//metrics`, `/%6detrics`, `/metrics/`) is a 404, as an unknown path is.
pub struct Local;

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Local {
    type Error = ();

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ()> {
        let proxied = req.headers().contains("X-Forwarded-For") || req.headers().contains("Forwarded");
        // No address at all is an in-process client (Rocket's local client in tests).
        let on_this_machine = crate::telemetry::client_ip(req, 0).is_none_or(|ip| ip.to_canonical().is_loopback());
        if on_this_machine && !proxied {
            Outcome::Success(Local)
        } else {
            Outcome::Forward(Status::NotFound)
        }
    }
}

#[utoipa::path(get, path = "/metrics", operation_id = "metrics",
    summary = "Prometheus metrics: requests and latency by route and status, upload bytes, inference time, queues, outbox backlog",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
#[get("/metrics")]
async fn metrics(
    _local: Local,
    state: &State<AppState>,
    connections: &State<std::sync::Arc<crate::connections::ConnectionStats>>,
) -> (rocket::http::ContentType, String) {
    let backlog = state.app.db.run(crate::db::outbox::backlog).await.ok();
    let reconcile = state.app.db.run(crate::db::reconcile_runs::latest).await.ok().flatten();
    let gauges = crate::metrics::Gauges {
        cpu_slots_free: state.app.cpu_slots_free(),
        upload_budget_free_bytes: state.app.upload_budget_free(),
        inference_sessions_idle: state.app.inference.idle_sessions(),
        outbox_unsent: backlog.map(|b| b.unsent),
        outbox_failed: backlog.map(|b| b.failed),
        outbox_oldest_unsent_secs: backlog.and_then(|b| b.oldest_unsent_secs()),
        connections: connections.snapshot(),
        reconcile,
    };
    let text_format = rocket::http::ContentType::new("text", "plain").with_params([("version", "0.0.4")]);
    (text_format, state.app.metrics.render(&gauges))
}

#[utoipa::path(get, path = "/healthz", operation_id = "healthz", summary = "Liveness",
    responses((status = 200, description = "Up", body = Up)))]
#[get("/healthz")]
fn healthz() -> Json<Up> {
    Up::answer()
}

#[utoipa::path(get, path = "/readyz", operation_id = "readyz",
    summary = "Readiness: database and object store reachable",
    responses((status = 200, description = "Ready", body = Object), NotReady))]
#[get("/readyz")]
async fn readyz(_local: Local, state: &State<AppState>, request_id: RequestId) -> (Status, Json<Value>) {
    let Dependencies { database, store } = state.dependencies().await;
    let backlog = state.app.db.run(crate::db::outbox::backlog).await.ok();
    let mut failing = Vec::new();
    let mut report = |name: &'static str, result: &Result<(), String>| match result {
        Ok(()) => json!({ "status": "ok" }),
        Err(error) => {
            log::warn!("readiness: {name} failed: {error}");
            failing.push(name);
            json!({ "status": "failed" })
        }
    };
    let engine = &state.app.inference;
    let checks = json!({
        "database": report("database", &database),
        "store": report("store", &store),
        // Models load before the server listens, so they are ready whenever this answers.
        "models": {
            "status": "ok",
            "classifier": engine.classifier_info(),
            "sessions": engine.sessions(),
            "idle_sessions": engine.idle_sessions(),
        },
    });
    let mut checks = checks;
    let mut status = "ready";
    if let Some(backlog) = backlog {
        let oldest_secs = backlog.oldest_unsent_secs();
        // A notification stuck this long means publishing is down: still serving, but worth a look.
        let stale =
            oldest_secs.is_some_and(|age| age as u64 > state.app.config.settings.outbox.outbox_degraded_after_secs);
        if stale {
            status = "degraded";
            log::warn!(
                "readiness degraded: {} notification(s) unsent, oldest {} s",
                backlog.unsent,
                oldest_secs.unwrap_or(0)
            );
        }
        checks["outbox"] = json!({
            "status": if stale { "degraded" } else { "ok" },
            "unsent": backlog.unsent,
            "failed": backlog.failed,
            "oldest_unsent_secs": oldest_secs,
        });
    }
    if failing.is_empty() {
        return (Status::Ok, Json(json!({ "status": status, "checks": checks })));
    }
    let error = AppError::new(ErrorCode::NotReady, format!("Not ready: {} unavailable.", failing.join(" and ")));
    let mut body = error.body(request_id.as_str());
    body["checks"] = checks;
    (Status::ServiceUnavailable, Json(body))
}

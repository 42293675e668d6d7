//! Prometheus metrics at `/metrics`, through the `metrics` facade and its Prometheus exporter. Each server
//! has its own recorder (several run in one test process), so values are recorded with it in scope rather
//! than through a global one.
//!
//! | series | type | labels |
//! | --- | --- | --- |
//! | `upshot_http_requests_total` | counter | `method`, `route` (the route's template), `status` |
//! | `upshot_http_request_duration_seconds` | histogram | `method`, `route` |
//! | `upshot_upload_bytes_total` | counter | |
//! | `upshot_inference_seconds`, `upshot_inference_cpu_seconds` | histogram | |
//! | `upshot_cpu_slots_free`, `upshot_upload_budget_free_bytes`, `upshot_inference_sessions_idle` | gauge | |
//! | `upshot_outbox_unsent`, `upshot_outbox_failed`, `upshot_outbox_oldest_unsent_seconds` | gauge | |
//! | `upshot_connections_open` | gauge | |
//! | `upshot_reconcile_orphans`, `upshot_reconcile_missing`, `upshot_reconcile_repaired`, `upshot_reconcile_last_success_timestamp` | gauge | |
//! | `upshot_connections_refused_total`, `upshot_connections_refused_per_client_total` | counter | |
//! | `upshot_connections_closed_total` | counter | `reason`: `header_timeout`, `slow_body`, `idle` |
//!
//! With a StatsD listener (`statsd_addr`: the CloudWatch agent, in AWS), each event also goes there as it
//! happens: `upshot_uploads_stored` and `upshot_errors` (tagged `code`) as counters, `upshot_inference_ms` as a
//! timer.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Where events also go, as StatsD, when the server has a listener (the CloudWatch agent, in AWS).
    statsd: std::sync::OnceLock<std::net::UdpSocket>,
}

/// Values read at scrape time rather than counted.
pub struct Gauges {
    pub cpu_slots_free: usize,
    pub upload_budget_free_bytes: u64,
    pub inference_sessions_idle: usize,
    pub outbox_unsent: Option<i64>,
    pub outbox_failed: Option<i64>,
    pub outbox_oldest_unsent_secs: Option<i64>,
    pub connections: Connections,
    /// The fleet's last completed consistency check, when there is one.
    pub reconcile: Option<crate::db::reconcile_runs::ReconcileRun>,
}

/// The public socket's counts.
pub struct Connections {
    pub open: u64,
    pub refused: u64,
    pub refused_per_client: u64,
    /// By reason: `header_timeout`, `slow_body`, `idle`.
    pub cut: [(&'static str, u64); 3],
}

impl Default for Metrics {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &BUCKETS)
            .expect("the latency buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let metrics = Metrics { recorder, handle, statsd: std::sync::OnceLock::new() };
        metrics.record(describe);
        metrics
    }
}

fn describe() {
    describe_counter!("upshot_http_requests_total", "HTTP requests by method, route and status.");
    describe_histogram!("upshot_http_request_duration_seconds", Unit::Seconds, "Request latency by method and route.");
    describe_counter!("upshot_upload_bytes_total", Unit::Bytes, "Bytes of accepted upload files read.");
    describe_histogram!(
        "upshot_inference_seconds",
        Unit::Seconds,
        "Model time per image (classifier, face detector, colours)."
    );
    describe_histogram!(
        "upshot_inference_cpu_seconds",
        Unit::Seconds,
        "CPU time the two models took per image, on their own thread: the floor of an upload's cost."
    );
    describe_gauge!("upshot_cpu_slots_free", "Image decoding slots free right now.");
    describe_gauge!("upshot_upload_budget_free_bytes", "Room left for upload bytes in memory (upload_budget_bytes).");
    describe_gauge!("upshot_inference_sessions_idle", "Model sessions not in use right now.");
    describe_gauge!("upshot_outbox_unsent", "Notifications not yet published.");
    describe_gauge!("upshot_outbox_failed", "Notifications parked after their last attempt.");
    describe_gauge!("upshot_outbox_oldest_unsent_seconds", "Age of the oldest unpublished notification.");
    describe_gauge!("upshot_connections_open", "Client connections open now.");
    describe_gauge!("upshot_reconcile_orphans", "Orphaned objects the last consistency check found.");
    describe_gauge!("upshot_reconcile_missing", "Images lost (original gone) as of the last consistency check.");
    describe_gauge!("upshot_reconcile_repaired", "Repairs the last consistency check made.");
    describe_gauge!(
        "upshot_reconcile_last_success_timestamp",
        Unit::Seconds,
        "When the last consistency check completed, in Unix seconds."
    );
    describe_counter!("upshot_connections_refused_total", "Connections answered 503 BUSY: max_connections were open.");
    describe_counter!(
        "upshot_connections_refused_per_client_total",
        "Connections answered 429: their client address held max_connections_per_client."
    );
    describe_counter!("upshot_connections_closed_total", "Connections closed for a slow or idle client, by reason.");
}

impl Metrics {
    /// Runs `record` with this server's recorder as the one the `metrics` macros write to.
    fn record(&self, record: impl FnOnce()) {
        metrics::with_local_recorder(&self.recorder, record);
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.record(|| {
            let (method, route) = (method.to_owned(), route.to_owned());
            counter!("upshot_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
                .increment(1);
            histogram!("upshot_http_request_duration_seconds", "method" => method, "route" => route).record(seconds);
        });
    }

    /// Sends each upload stored, error answered and inference timed, as it happens, to the StatsD listener at
    /// `addr` too: `upshot_uploads_stored` and `upshot_errors` (tagged with its `code`) as counters,
    /// `upshot_inference_ms` as a timer.
    pub fn send_to_statsd(&self, addr: std::net::SocketAddr) -> std::io::Result<()> {
        let local: std::net::SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = std::net::UdpSocket::bind(local)?;
        socket.connect(addr)?;
        socket.set_nonblocking(true)?;
        let _ = self.statsd.set(socket);
        Ok(())
    }

    /// One StatsD line; a lost datagram costs one event, so a failure is not reported.
    fn statsd(&self, line: &str) {
        if let Some(socket) = self.statsd.get() {
            let _ = socket.send(line.as_bytes());
        }
    }

    pub fn upload_stored(&self) {
        self.statsd("upshot_uploads_stored:1|c");
    }

    /// An error answered with its stable `code`.
    pub fn error_answered(&self, code: &str) {
        self.statsd(&format!("upshot_errors:1|c|#code:{code}"));
    }

    pub fn add_upload_bytes(&self, bytes: u64) {
        self.record(|| counter!("upshot_upload_bytes_total").increment(bytes));
    }

    /// The models' time for one image: as it passed (`wall_ms`), and their own CPU time (`cpu_ms`).
    pub fn observe_inference(&self, wall_ms: f64, cpu_ms: f64) {
        self.statsd(&format!("upshot_inference_ms:{wall_ms:.1}|ms"));
        self.record(|| {
            histogram!("upshot_inference_seconds").record(wall_ms / 1000.0);
            histogram!("upshot_inference_cpu_seconds").record(cpu_ms / 1000.0);
        });
    }

    /// The Prometheus text exposition format, version 0.0.4, with the gauges as of now.
    pub fn render(&self, gauges: &Gauges) -> String {
        self.record(|| {
            gauge!("upshot_cpu_slots_free").set(gauges.cpu_slots_free as f64);
            gauge!("upshot_upload_budget_free_bytes").set(gauges.upload_budget_free_bytes as f64);
            gauge!("upshot_inference_sessions_idle").set(gauges.inference_sessions_idle as f64);
            let optional = [
                ("upshot_outbox_unsent", gauges.outbox_unsent),
                ("upshot_outbox_failed", gauges.outbox_failed),
                ("upshot_outbox_oldest_unsent_seconds", gauges.outbox_oldest_unsent_secs),
            ];
            // A figure the database could not give is left out, not reported as zero.
            for (name, value) in optional {
                if let Some(value) = value {
                    gauge!(name).set(value as f64);
                }
            }
            if let Some(run) = &gauges.reconcile {
                gauge!("upshot_reconcile_orphans").set(run.orphans as f64);
                gauge!("upshot_reconcile_missing").set(run.missing_images as f64);
                gauge!("upshot_reconcile_repaired").set(run.repaired as f64);
                gauge!("upshot_reconcile_last_success_timestamp").set(run.finished_at.and_utc().timestamp() as f64);
            }
            let connections = &gauges.connections;
            gauge!("upshot_connections_open").set(connections.open as f64);
            counter!("upshot_connections_refused_total").absolute(connections.refused);
            counter!("upshot_connections_refused_per_client_total").absolute(connections.refused_per_client);
            for (reason, count) in connections.cut {
                counter!("upshot_connections_closed_total", "reason" => reason).absolute(count);
            }
        });
        self.handle.render()
    }
}

/// One datagram to a StatsD listener (the CloudWatch agent's, in AWS). UDP: a lost one costs one period's
/// figure, so callers only log a failure.
pub fn send_statsd(addr: std::net::SocketAddr, datagram: &str) -> std::io::Result<()> {
    let local: std::net::SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    std::net::UdpSocket::bind(local)?.send_to(datagram.as_bytes(), addr).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            cpu_slots_free: 2,
            upload_budget_free_bytes: 1 << 20,
            inference_sessions_idle: 1,
            outbox_unsent: Some(3),
            outbox_failed: Some(0),
            outbox_oldest_unsent_secs: None,
            connections: Connections {
                open: 4,
                refused: 1,
                refused_per_client: 0,
                cut: [("header_timeout", 2), ("slow_body", 0), ("idle", 5)],
            },
            reconcile: None,
        }
    }

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let metrics = Metrics::default();
        metrics.observe_request("POST", "/api/v1/images", 201, 0.02);
        metrics.observe_request("POST", "/api/v1/images", 415, 0.001);
        metrics.add_upload_bytes(1234);
        metrics.observe_inference(7.5, 4.0);
        let text = metrics.render(&gauges());
        assert!(
            text.contains(r#"upshot_http_requests_total{method="POST",route="/api/v1/images",status="201"} 1"#),
            "{text}"
        );
        assert!(text.contains(
            r#"upshot_http_request_duration_seconds_bucket{method="POST",route="/api/v1/images",le="0.005"} 1"#
        ));
        assert!(text.contains(r#"upshot_http_request_duration_seconds_count{method="POST",route="/api/v1/images"} 2"#));
        assert!(text.contains("# HELP upshot_http_requests_total HTTP requests by method, route and status."));
        assert!(text.contains("upshot_upload_bytes_total 1234"));
        assert!(text.contains("upshot_inference_seconds_bucket{le=\"0.01\"} 1"));
        assert!(text.contains("upshot_outbox_unsent 3") && !text.contains("upshot_outbox_oldest_unsent_seconds "));
        assert!(text.contains("upshot_connections_open 4\n") && text.contains("upshot_connections_refused_total 1\n"));
        assert!(text.contains("upshot_connections_closed_total{reason=\"header_timeout\"} 2\n"));
    }

    #[test]
    fn two_servers_keep_their_own_figures() {
        let (one, other) = (Metrics::default(), Metrics::default());
        one.add_upload_bytes(10);
        assert!(one.render(&gauges()).contains("upshot_upload_bytes_total 10"));
        assert!(!other.render(&gauges()).contains("upshot_upload_bytes_total 10"));
    }
}

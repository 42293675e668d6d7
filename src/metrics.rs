//! Prometheus metrics at `/metrics`: requests and latency by route and status, upload bytes, inference time,
//! CPU and model queues, and the notification backlog.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), Histogram>,
    upload_bytes: u64,
    inference: Histogram,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
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
}

/// The public socket's counts.
pub struct Connections {
    pub open: u64,
    pub refused: u64,
    /// By reason: `header_timeout`, `slow_body`, `idle`.
    pub cut: [(&'static str, u64); 3],
}

impl Metrics {
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.requests.entry((method.to_owned(), route.to_owned(), status)).or_default().observe(seconds);
    }

    pub fn add_upload_bytes(&self, bytes: u64) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).upload_bytes += bytes;
    }

    pub fn observe_inference(&self, milliseconds: f64) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).inference.observe(milliseconds / 1000.0);
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub fn render(&self, gauges: &Gauges) -> String {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        out.push_str("# HELP upshot_http_requests_total HTTP requests by method, route and status.\n");
        out.push_str("# TYPE upshot_http_requests_total counter\n");
        for ((method, route, status), histogram) in &inner.requests {
            let _ = writeln!(
                out,
                "upshot_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}",
                histogram.count
            );
        }
        out.push_str("# HELP upshot_http_request_duration_seconds Request latency by method and route.\n");
        out.push_str("# TYPE upshot_http_request_duration_seconds histogram\n");
        let mut by_route: BTreeMap<(&str, &str), Histogram> = BTreeMap::new();
        for ((method, route, _), histogram) in &inner.requests {
            let merged = by_route.entry((method, route)).or_default();
            for (total, count) in merged.counts.iter_mut().zip(histogram.counts) {
                *total += count;
            }
            merged.count += histogram.count;
            merged.sum += histogram.sum;
        }
        for ((method, route), histogram) in &by_route {
            let labels = format!("method=\"{method}\",route=\"{route}\"");
            histogram.render(&mut out, "upshot_http_request_duration_seconds", &labels);
        }
        out.push_str("# HELP upshot_upload_bytes_total Bytes of accepted upload files read.\n");
        out.push_str("# TYPE upshot_upload_bytes_total counter\n");
        let _ = writeln!(out, "upshot_upload_bytes_total {}", inner.upload_bytes);
        out.push_str("# HELP upshot_inference_seconds Model time per image (classifier, face detector, colours).\n");
        out.push_str("# TYPE upshot_inference_seconds histogram\n");
        inner.inference.render(&mut out, "upshot_inference_seconds", "");
        let gauge = |out: &mut String, name: &str, help: &str, value: Option<i64>| {
            if let Some(value) = value {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
            }
        };
        gauge(
            &mut out,
            "upshot_cpu_slots_free",
            "Image decoding slots free right now.",
            Some(gauges.cpu_slots_free as i64),
        );
        gauge(
            &mut out,
            "upshot_upload_budget_free_bytes",
            "Room left for upload bytes in memory (upload_budget_bytes).",
            Some(gauges.upload_budget_free_bytes as i64),
        );
        gauge(
            &mut out,
            "upshot_inference_sessions_idle",
            "Model sessions not in use right now.",
            Some(gauges.inference_sessions_idle as i64),
        );
        gauge(&mut out, "upshot_outbox_unsent", "Notifications not yet published.", gauges.outbox_unsent);
        gauge(&mut out, "upshot_outbox_failed", "Notifications parked after their last attempt.", gauges.outbox_failed);
        gauge(
            &mut out,
            "upshot_outbox_oldest_unsent_seconds",
            "Age of the oldest unpublished notification.",
            gauges.outbox_oldest_unsent_secs,
        );
        let connections = &gauges.connections;
        gauge(&mut out, "upshot_connections_open", "Client connections open now.", Some(connections.open as i64));
        out.push_str(
            "# HELP upshot_connections_refused_total Connections answered 503 BUSY: max_connections were open.\n",
        );
        out.push_str("# TYPE upshot_connections_refused_total counter\n");
        let _ = writeln!(out, "upshot_connections_refused_total {}", connections.refused);
        out.push_str(
            "# HELP upshot_connections_closed_total Connections closed for a slow or idle client, by reason.\n",
        );
        out.push_str("# TYPE upshot_connections_closed_total counter\n");
        for (reason, count) in connections.cut {
            let _ = writeln!(out, "upshot_connections_closed_total{{reason=\"{reason}\"}} {count}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let metrics = Metrics::default();
        metrics.observe_request("POST", "/api/v1/images", 201, 0.02);
        metrics.observe_request("POST", "/api/v1/images", 415, 0.001);
        metrics.add_upload_bytes(1234);
        metrics.observe_inference(7.5);
        let text = metrics.render(&Gauges {
            cpu_slots_free: 2,
            upload_budget_free_bytes: 1 << 20,
            inference_sessions_idle: 1,
            outbox_unsent: Some(3),
            outbox_failed: Some(0),
            outbox_oldest_unsent_secs: None,
            connections: Connections {
                open: 4,
                refused: 1,
                cut: [("header_timeout", 2), ("slow_body", 0), ("idle", 5)],
            },
        });
        assert!(text.contains(r#"upshot_http_requests_total{method="POST",route="/api/v1/images",status="201"} 1"#));
        assert!(text.contains(
            r#"upshot_http_request_duration_seconds_bucket{method="POST",route="/api/v1/images",le="0.005"} 1"#
        ));
        assert!(text.contains(r#"upshot_http_request_duration_seconds_count{method="POST",route="/api/v1/images"} 2"#));
        assert!(text.contains("upshot_upload_bytes_total 1234"));
        assert!(text.contains("upshot_inference_seconds_bucket{le=\"0.01\"} 1"));
        assert!(text.contains("upshot_outbox_unsent 3") && !text.contains("upshot_outbox_oldest_unsent_seconds "));
        assert!(text.contains("upshot_connections_open 4\n") && text.contains("upshot_connections_refused_total 1\n"));
        assert!(text.contains("upshot_connections_closed_total{reason=\"header_timeout\"} 2\n"));
    }
}

//! Traces: a `tracing` span for every request and for each stage of an upload, exported as OpenTelemetry
//! over OTLP/HTTP when the standard variables name an endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_TRACES_SAMPLER`, `OTEL_SERVICE_NAME`, `OTEL_BSP_*` and
//! `OTEL_SDK_DISABLED` as the specification says). With no endpoint nothing is exported, and a span costs
//! what an entry in an empty registry costs.
//!
//! Every request has a trace id either way: the caller's W3C `traceparent` is continued, and the response
//! names the trace, so a log line, a trace and a client's report can be matched. Log lines written inside a
//! span carry the request id and trace id of the request (or background run) it belongs to.

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

static EXPORTING: OnceLock<bool> = OnceLock::new();

/// Whether spans are exported (an OTLP endpoint is configured and the pipeline started).
pub fn exporting() -> bool {
    EXPORTING.get().copied().unwrap_or(false)
}

/// The installed pipeline; `shutdown` sends what is still buffered before the process exits.
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

/// How long the last spans may take to leave at exit: within systemd's stop timeout, after the requests' grace.
const SHUTDOWN_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

impl Tracing {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_FLUSH) {
                log::warn!("traces: the last spans could not be sent: {error}");
            }
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| !value.trim().is_empty())
}

/// Whether the environment asks for an OTLP export this build can make (HTTP with protobuf bodies).
fn export_wanted() -> bool {
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    if std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.split(',').all(|e| e.trim() == "none")) {
        return false;
    }
    if !env_set("OTEL_EXPORTER_OTLP_ENDPOINT") && !env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return false;
    }
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "http/protobuf".to_owned());
    if protocol.trim() != "http/protobuf" {
        log::error!(
            "traces: OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; set http/protobuf (port 4318 on a \
             collector). Nothing is exported."
        );
        return false;
    }
    true
}

/// Installs the process's `tracing` subscriber, with an OTLP exporter when the environment configures one.
/// Call once, after the logger (export failures are logged).
pub fn init() -> Tracing {
    let provider = if export_wanted() { build_provider() } else { None };
    let otel = provider.as_ref().map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("upshot")));
    let subscriber = Registry::default().with(LogBridge::default()).with(otel);
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let _ = EXPORTING.set(provider.is_some());
        if provider.is_some() {
            log::info!("traces: exporting spans over OTLP/HTTP");
        }
    }
    Tracing { provider }
}

fn build_provider() -> Option<SdkTracerProvider> {
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
        Ok(exporter) => exporter,
        Err(error) => {
            log::error!("traces: the OTLP exporter could not be set up ({error}); nothing is exported");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder()
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !env_set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("upshot");
    }
    Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

/// A request's span and the trace it belongs to.
pub struct RequestTrace {
    pub span: Span,
    /// Without an export, the ids the request is known by all the same (the caller's trace, or a fresh one).
    local: Option<SpanContext>,
    /// The trace id, once looked at (and recorded on the span).
    trace_id: OnceLock<String>,
}

impl RequestTrace {
    /// Names the span after the route that serves it: before the span starts (its first child, or the first
    /// look at its ids), since a started span keeps its name.
    pub fn name_route(&self, method: &str, route: &str) {
        self.span.record("otel.name", format!("{method} {route}").as_str());
        self.span.record("http.route", route);
    }

    /// The span's ids; looking at them starts an exported span.
    fn context(&self) -> SpanContext {
        match &self.local {
            Some(local) => local.clone(),
            None => self.span.context().span().span_context().clone(),
        }
    }

    /// The trace id, recorded on the span the first time for the log lines written inside it.
    pub fn trace_id(&self) -> &str {
        self.trace_id.get_or_init(|| {
            let trace_id = self.context().trace_id().to_string();
            self.span.record("trace_id", trace_id.as_str());
            trace_id
        })
    }

    /// The W3C `traceparent` naming this request's span, for the response.
    pub fn traceparent(&self) -> String {
        format_traceparent(&self.context())
    }
}

/// Whether a `traceparent` has the W3C shape: `version-trace_id-parent_id-flags` in lower-case hex of 2, 32, 16
/// and 2 digits (version `ff` is invalid; a later version may append fields). The propagator alone accepts
/// shorter ids.
fn well_formed(traceparent: &str) -> bool {
    let lower_hex =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    match parts.as_slice() {
        [version, trace_id, parent_id, flags, rest @ ..] => {
            lower_hex(version, 2)
                && *version != "ff"
                && (rest.is_empty() || *version != "00")
                && lower_hex(trace_id, 32)
                && lower_hex(parent_id, 16)
                && lower_hex(flags, 2)
        }
        _ => false,
    }
}

/// The trace context a `traceparent` (and `tracestate`) header carries, when it is valid.
fn extract(traceparent: &str, tracestate: Option<&str>) -> Option<opentelemetry::Context> {
    if !well_formed(traceparent) {
        return None;
    }
    let mut carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_owned(), state.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

fn format_traceparent(context: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", context.trace_id(), context.span_id(), context.trace_flags().to_u8())
}

/// Opens the span of one HTTP request, continuing the caller's trace when it sent a valid `traceparent`.
/// Its route, status and (for an upload) image id are recorded as they become known.
pub fn start_request(
    method: &str,
    request_id: &str,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> RequestTrace {
    let span = tracing::info_span!(
        "request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = request_id,
        trace_id = tracing::field::Empty,
        upshot.image_id = tracing::field::Empty,
    );
    let parent = traceparent.and_then(|header| extract(header, tracestate));
    if exporting() {
        if let Some(parent) = parent {
            let _ = span.set_parent(parent);
        }
        return RequestTrace { span, local: None, trace_id: OnceLock::new() };
    }
    let caller = parent.map(|cx| cx.span().span_context().clone());
    let trace_id = caller.as_ref().map_or_else(|| TraceId::from_bytes(rand::random()), SpanContext::trace_id);
    let flags = caller.as_ref().map_or(TraceFlags::default(), SpanContext::trace_flags);
    let local = SpanContext::new(trace_id, SpanId::from_bytes(rand::random()), flags, false, Default::default());
    let trace = RequestTrace { span, local: Some(local), trace_id: OnceLock::new() };
    trace.trace_id();
    trace
}

/// Opens the root span of background work (an SQS event, a reconcile run), with a trace id for its log
/// lines.
pub fn start_background(span: Span) -> Span {
    let trace_id =
        if exporting() { span.context().span().span_context().trace_id() } else { TraceId::from_bytes(rand::random()) };
    span.record("trace_id", trace_id.to_string().as_str());
    span
}

/// The `traceparent` of the span in scope, when spans are exported: for work that continues the trace later
/// (an outbox message's publish). An unsampled trace stays unsampled there too.
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let context = Span::current().context().span().span_context().clone();
    context.is_valid().then(|| format_traceparent(&context))
}

/// Makes `span` a child of the span `traceparent` names (written earlier by `current_traceparent`).
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.filter(|_| exporting()).and_then(|header| extract(header, None)) {
        let _ = span.set_parent(parent);
    }
}

/// The request id and trace id of the request or background run in scope, for log lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFields {
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
}

impl Visit for LogFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "request_id" => self.request_id = Some(value.to_owned()),
            "trace_id" => self.trace_id = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "request_id" | "trace_id") {
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

/// The `LogFields` of the innermost span in scope that has them.
pub fn current_log_fields() -> Option<LogFields> {
    tracing::dispatcher::get_default(|dispatch| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let current = dispatch.current_span();
        let span = registry.span(current.id()?)?;
        span.scope().find_map(|span| span.extensions().get::<LogFields>().cloned())
    })
}

/// Keeps each span's request id and trace id where `current_log_fields` finds them, and passes the exporter's
/// warnings (an export that failed) to the log: each kind at most once a minute, so a collector that is down
/// is said, not repeated every few seconds.
#[derive(Default)]
struct LogBridge {
    last_said: std::sync::Mutex<HashMap<tracing::callsite::Identifier, std::time::Instant>>,
}

/// How often one kind of exporter warning is logged.
const EXPORTER_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for LogBridge {
    fn register_callsite(&self, metadata: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        // Our own spans, and the warnings of the exporter; the libraries' own spans and chatter (the AWS SDK
        // opens a dozen spans per call) are off at their call sites, so they cost nothing.
        let target = metadata.target();
        let wanted = if metadata.is_span() {
            target.starts_with("upshot")
        } else {
            target.starts_with("opentelemetry") && *metadata.level() <= tracing::Level::WARN
        };
        if wanted {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = LogFields::default();
        attrs.record(&mut fields);
        if fields != LogFields::default() {
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(fields);
            }
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<LogFields>() {
            Some(fields) => values.record(fields),
            None => {
                let mut fields = LogFields::default();
                values.record(&mut fields);
                if fields != LogFields::default() {
                    extensions.insert(fields);
                }
            }
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        {
            let mut last_said = self.last_said.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = std::time::Instant::now();
            match last_said.get(&metadata.callsite()) {
                Some(said) if now.duration_since(*said) < EXPORTER_WARNING_EVERY => return,
                _ => {
                    last_said.insert(metadata.callsite(), now);
                }
            }
        }
        let level = if *metadata.level() == tracing::Level::ERROR { log::Level::Error } else { log::Level::Warn };
        let mut message = EventText::default();
        event.record(&mut message);
        log::log!(target: "upshot::traces", level, "{}: {}", metadata.target(), message.0.trim_start());
    }
}

#[derive(Default)]
struct EventText(String);

impl Visit for EventText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = match field.name() {
            "message" => write!(self.0, " {value:?}"),
            name => write!(self.0, " {name}={value:?}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_a_malformed_one_ignored() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = extract(header, None).expect("valid");
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(cx.span().span_context().is_sampled());
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(extract(bad, None).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn without_an_exporter_a_request_keeps_the_callers_trace_id() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = start_request("GET", "req-1", Some(header), None);
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let traceparent = trace.traceparent();
        assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{traceparent}");
        assert!(traceparent.ends_with("-01") && !traceparent.contains("00f067aa0ba902b7"), "a span of its own");
        let fresh = start_request("GET", "req-2", None, None);
        assert_eq!(fresh.trace_id().len(), 32);
        assert_ne!(fresh.trace_id(), trace.trace_id());
    }
}

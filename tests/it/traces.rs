//! Traces over OTLP: `upshot serve` on PostgreSQL, S3 and SNS exports to a small OTLP/HTTP receiver on
//! loopback, decoded with the `opentelemetry-proto` definitions. One upload is one trace, continuing the
//! caller's `traceparent`: a span per stage with the right parents, the image id on them, and the outbox
//! relay's publish in the same trace. Without an export, a request still names its trace, and the log lines
//! carry it with the request id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::helpers::{create_bucket, create_pg_database, create_topic, file_form, free_port, ServerProcess};

/// Spans received, with the `service.name` of the resource that sent them.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    services: Vec<String>,
    requests: usize,
}

/// An OTLP/HTTP receiver: takes `POST /v1/traces` bodies (protobuf) on keep-alive connections.
async fn otlp_receiver() -> (String, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Received::default()));
    let sink = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                loop {
                    let (mut request_line, mut length) = (String::new(), 0usize);
                    if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).await.unwrap();
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).await.unwrap();
                    assert!(request_line.starts_with("POST /v1/traces "), "{request_line}");
                    let export = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP protobuf body");
                    {
                        let mut received = sink.lock().unwrap();
                        received.requests += 1;
                        for resource in export.resource_spans {
                            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
                            if let Some(name) = attributes.iter().find(|kv| kv.key == "service.name") {
                                received.services.push(string_value(name.value.as_ref()));
                            }
                            for scope in resource.scope_spans {
                                received.spans.extend(scope.spans);
                            }
                        }
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if write.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, received)
}

fn string_value(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).map(|kv| string_value(kv.value.as_ref()))
}

/// `upshot serve` on the production stack, its stderr kept in a file.
async fn serve(extra_env: &[(&str, &str)], log: &std::path::Path) -> (ServerProcess, String, tempfile::TempDir) {
    let data_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let endpoint = std::env::var("UPSHOT_TEST_AWS_ENDPOINT").expect("scripts/test.sh starts the AWS endpoint");
    let (database_url, bucket, topic) = (create_pg_database(), create_bucket().await, create_topic().await);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_upshot"));
    command
        .arg("serve")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("UPSHOT_DATA_DIR", data_dir.path())
        .env("ROCKET_ADDRESS", "127.0.0.1")
        .env("ROCKET_PORT", port.to_string())
        .env("UPSHOT_PUBLIC_URL", &base)
        .env("UPSHOT_DATABASE_URL", &database_url)
        .env("UPSHOT_STORE", "s3")
        .env("UPSHOT_S3_BUCKET", &bucket)
        .env("UPSHOT_S3_FORCE_PATH_STYLE", "true")
        .env("UPSHOT_S3_ENDPOINT_URL", &endpoint)
        .env("UPSHOT_NOTIFIER", "sns")
        .env("UPSHOT_SNS_TOPIC_ARN", &topic)
        .env("UPSHOT_SNS_ENDPOINT_URL", &endpoint)
        .env("UPSHOT_SECRET_KEY", crate::helpers::SECRET)
        .env("UPSHOT_DEDUP", "false")
        .env("UPSHOT_NOTIFY_MAX_PER_HOUR", "0")
        .env_remove("JOURNAL_STREAM")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for name in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"] {
        command.env_remove(name);
    }
    command.envs(extra_env.iter().copied());
    let server = ServerProcess(command.spawn().unwrap());
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "the server did not get ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (server, base, data_dir)
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

async fn upload_with_traceparent(base: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/api/v1/images"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .multipart(file_form("cat.jpg"))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upload_is_one_trace_with_a_span_per_stage_and_the_publish_joins_it() {
    let (otlp, received) = otlp_receiver().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let (_server, base, _data) =
        serve(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp), ("OTEL_BSP_SCHEDULE_DELAY", "100")], log.path()).await;

    let response = upload_with_traceparent(&base).await;
    assert_eq!(response.status(), 201);
    let traceparent = response.headers()["traceparent"].to_str().unwrap().to_owned();
    assert!(traceparent.starts_with(&format!("00-{CALLER_TRACE}-")), "the caller's trace continues: {traceparent}");
    let body: serde_json::Value = response.json().await.unwrap();
    let image_id = body["id"].as_str().unwrap().to_owned();

    // The relay publishes after the response; its span comes in a later export.
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans: Vec<Span> = loop {
        let spans: Vec<Span> = received
            .lock()
            .unwrap()
            .spans
            .iter()
            .filter(|span| hex::encode(&span.trace_id) == CALLER_TRACE)
            .cloned()
            .collect();
        if spans.iter().any(|span| span.name == "outbox.publish") || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
    let by_name = |name: &str| -> &Span {
        spans.iter().find(|span| span.name == name).unwrap_or_else(|| panic!("no {name} span among {names:?}"))
    };
    let id_of = |span: &Span| hex::encode(&span.span_id);
    let parent_of = |span: &Span| hex::encode(&span.parent_span_id);

    let request = by_name("POST /api/v1/images");
    assert_eq!(parent_of(request), CALLER_SPAN, "the request's span is the caller's child");
    assert_eq!(traceparent, format!("00-{CALLER_TRACE}-{}-01", id_of(request)), "the response names it");
    assert_eq!(request.kind, opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32);
    assert_eq!(attribute(request, "http.route").as_deref(), Some("/api/v1/images"));
    assert_eq!(attribute(request, "http.response.status_code").as_deref(), Some("201"));
    assert_eq!(attribute(request, "upshot.image_id").as_deref(), Some(image_id.as_str()));

    for stage in ["upload.receive", "cpu.wait", "image.identify", "image.strip", "image.decode", "image.thumbnail"] {
        assert_eq!(parent_of(by_name(stage)), id_of(request), "{stage} is a stage of the request");
    }
    let store = by_name("upload.store");
    assert_eq!(parent_of(store), id_of(request));
    assert_eq!(attribute(store, "upshot.image_id").as_deref(), Some(image_id.as_str()));
    for stage in ["models", "db.pending", "db.commit"] {
        assert_eq!(parent_of(by_name(stage)), id_of(store), "{stage} is a stage of storing");
    }
    let puts: Vec<&Span> = spans.iter().filter(|span| span.name == "store.put").collect();
    let mut keys: Vec<String> = puts.iter().filter_map(|span| attribute(span, "object.key")).collect();
    keys.sort();
    assert_eq!(keys, [format!("images/{image_id}/original.jpg"), format!("images/{image_id}/thumb.jpg")]);
    assert!(puts.iter().all(|span| parent_of(span) == id_of(store)));

    let publish = by_name("outbox.publish");
    assert_eq!(parent_of(publish), id_of(store), "the relay's publish joins the upload's trace");
    assert_eq!(attribute(publish, "upshot.image_id").as_deref(), Some(image_id.as_str()));
    assert_eq!(
        publish.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Producer as i32,
        "a message sent on"
    );
    // Each stage lies within its parent, in time.
    for span in &spans {
        if let Some(parent) = spans.iter().find(|other| other.span_id == span.parent_span_id) {
            if span.name != "outbox.publish" {
                assert!(
                    span.start_time_unix_nano >= parent.start_time_unix_nano
                        && span.end_time_unix_nano <= parent.end_time_unix_nano,
                    "{} outside {}",
                    span.name,
                    parent.name
                );
            }
        }
    }
    let received = received.lock().unwrap();
    assert!(received.services.iter().all(|name| name == "upshot"), "{:?}", received.services);
    let per_name = spans.iter().fold(HashMap::<&str, usize>::new(), |mut counts, span| {
        *counts.entry(span.name.as_str()).or_default() += 1;
        counts
    });
    println!("one upload: {} spans in {} export request(s): {per_name:?}", spans.len(), received.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_export_nothing_is_sent_and_log_lines_carry_the_request_and_trace_ids() {
    let (otlp, received) = otlp_receiver().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    // An endpoint is named, but the SDK is off: as with no endpoint, nothing goes out.
    let (_server, base, _data) =
        serve(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp), ("OTEL_SDK_DISABLED", "true")], log.path()).await;

    let response = upload_with_traceparent(&base).await;
    assert_eq!(response.status(), 201);
    let traceparent = response.headers()["traceparent"].to_str().unwrap().to_owned();
    assert!(traceparent.starts_with(&format!("00-{CALLER_TRACE}-")), "{traceparent}");

    // A refused upload logs its error from inside the request.
    let refused = reqwest::Client::new()
        .post(format!("{base}/api/v1/images"))
        .multipart(crate::helpers::bytes_form("notes.jpg", b"plain text, not a JPEG".to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 415);
    let request_id = refused.headers()["x-request-id"].to_str().unwrap().to_owned();
    let trace_id = refused.headers()["traceparent"].to_str().unwrap().split('-').nth(1).unwrap().to_owned();
    assert_eq!(trace_id.len(), 32);
    assert_ne!(trace_id, CALLER_TRACE, "a request without a traceparent starts a trace of its own");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(received.lock().unwrap().requests, 0, "nothing exported");
    let log = std::fs::read_to_string(log.path()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|line| line.contains(&format!("request_id={request_id} "))).collect();
    assert!(lines.len() >= 2, "the error and the access line: {log}");
    assert!(
        lines.iter().all(|line| line.contains(&format!("trace_id={trace_id}"))),
        "every line of the request names its trace: {lines:#?}"
    );
    assert!(lines.iter().any(|line| line.contains("code=UNSUPPORTED_MEDIA_TYPE")), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_logged_once_a_minute_and_uploads_go_on() {
    let closed = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let (_server, base, _data) =
        serve(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")], log.path()).await;
    let said = || {
        let text = std::fs::read_to_string(log.path()).unwrap();
        text.lines().filter(|line| line.contains("BatchSpanProcessor.ExportError")).count()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    for round in 0..3 {
        let response = upload_with_traceparent(&base).await;
        assert_eq!(response.status(), 201, "uploads go on without the collector");
        if round == 0 {
            while said() == 0 {
                assert!(Instant::now() < deadline, "a failed export is logged");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(said(), 1, "logged once, not per export");
}

//! The public socket: slow and idle clients are disconnected, the connection cap answers 503 `BUSY`, and
//! uploads in every framing (length, chunked, `Expect: 100-continue`) pass through it intact.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{fixture, raw_multipart, spawn_with, Stack, TestApp};

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap()
}

/// Sends `piece` every `every` until the server closes the connection; how long that took, or `None` if it
/// stayed open for `within`.
async fn trickle_until_closed(
    stream: &mut TcpStream,
    piece: &[u8],
    every: Duration,
    within: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut sink = [0u8; 1024];
    while start.elapsed() < within {
        if stream.write_all(piece).await.is_err() {
            return Some(start.elapsed());
        }
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(every, stream.read(&mut sink)).await {
            return Some(start.elapsed());
        }
    }
    None
}

/// Reads until the server closes the connection or `within` passes; what it sent.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(within, stream.read_to_end(&mut received)).await.is_ok();
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

fn quick_limits(figment: rocket::figment::Figment) -> rocket::figment::Figment {
    figment
        .merge(("header_timeout_secs", 1))
        .merge(("idle_timeout_secs", 2))
        .merge(("body_grace_secs", 1))
        .merge(("min_body_bytes_per_sec", 4096))
}

#[tokio::test]
async fn slow_heads_and_bodies_are_disconnected_while_others_are_served() {
    let app = spawn_with(Stack::Embedded, quick_limits).await;

    let mut slow_head = connect(&app).await;
    slow_head.write_all(b"GET /healthz HTTP/1.1\r\nHost: upshot\r\n").await.unwrap();
    let mut slow_body = connect(&app).await;
    let head = "POST /api/v1/images HTTP/1.1\r\nHost: upshot\r\nContent-Type: multipart/form-data; boundary=b\r\n\
                Content-Length: 1000000\r\n\r\n";
    slow_body.write_all(head.as_bytes()).await.unwrap();

    let (head_cut, body_cut, healthy) = tokio::join!(
        trickle_until_closed(&mut slow_head, b"X-Slow: 1\r\n", Duration::from_millis(200), Duration::from_secs(6)),
        trickle_until_closed(&mut slow_body, &[b'x'; 100], Duration::from_millis(200), Duration::from_secs(6)),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            app.get("/healthz").await.status().as_u16()
        }
    );
    assert_eq!(healthy, 200, "a normal request is served meanwhile");
    let head_cut = head_cut.expect("a head sent one line at a time is cut");
    assert!(head_cut < Duration::from_secs(3), "cut after {head_cut:?}, header_timeout_secs = 1");
    let body_cut = body_cut.expect("a body at 500 B/s is cut");
    assert!(body_cut < Duration::from_secs(4), "cut after {body_cut:?}, body_grace_secs = 1");

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("upshot_connections_closed_total{reason=\"header_timeout\"} 1\n"), "{metrics}");
    assert!(metrics.contains("upshot_connections_closed_total{reason=\"slow_body\"} 1\n"), "{metrics}");
    assert_eq!(app.image_rows().await, 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = spawn_with(Stack::Embedded, quick_limits).await;
    let mut stream = connect(&app).await;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: upshot\r\n\r\n").await.unwrap();
    let start = Instant::now();
    let (answer, closed) = read_to_close(&mut stream, Duration::from_secs(6)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "still open after 6 s with idle_timeout_secs = 2");
    assert!(start.elapsed() >= Duration::from_millis(1500), "closed too early: {:?}", start.elapsed());
}

#[tokio::test]
async fn connections_over_the_cap_are_answered_busy() {
    let app = spawn_with(Stack::Embedded, |figment| figment.merge(("max_connections", 2))).await;
    let held = [connect(&app).await, connect(&app).await];
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut over = connect(&app).await;
    over.write_all(b"GET /healthz HTTP/1.1\r\nHost: upshot\r\n\r\n").await.unwrap();
    let (answer, closed) = read_to_close(&mut over, Duration::from_secs(3)).await;
    assert!(closed);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After: 1\r\n"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "BUSY");

    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status().as_u16(), 200, "served again once connections close");
    // The test client's own pooled connection holds a slot too, so the held pair may have been refused a slot.
    let metrics = response.text().await.unwrap();
    let refused = metrics.lines().find_map(|l| l.strip_prefix("upshot_connections_refused_total ")).unwrap();
    assert!(refused.parse::<u64>().unwrap() >= 1, "{metrics}");
}

#[tokio::test]
async fn uploads_pass_in_every_framing() {
    let app = spawn_with(Stack::Embedded, |figment| figment).await;
    let (content_type, body) = raw_multipart(b"cat.jpg", &fixture("cat.jpg"));

    // Expect: 100-continue, as curl sends for bodies over 1 MiB: the body follows the server's go-ahead.
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /api/v1/images HTTP/1.1\r\nHost: upshot\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).await.unwrap();
    assert!(interim.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"), "{}", String::from_utf8_lossy(&interim));
    stream.write_all(&body).await.unwrap();
    let (answer, _) = read_to_close(&mut stream, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");

    // Chunked, from a stream of unknown length.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(7000).map(|c| Ok(c.to_vec())).collect();
    let response = app
        .client
        .post(app.url("/api/v1/images"))
        .header("Content-Type", &content_type)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);

    // Two requests on one connection, the second sent before the first is answered.
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: upshot\r\n\r\nGET /healthz HTTP/1.1\r\nHost: upshot\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    assert_eq!(app.image_rows().await, 2);
}

#[tokio::test]
async fn a_known_path_with_another_method_is_405_with_allow() {
    let app = spawn_with(Stack::Embedded, |figment| figment).await;
    // TRACE reaches Rocket's catcher; QUERY, which Rocket 0.5 cannot parse, is answered by the socket.
    for (method, path, allow) in [
        ("TRACE", "/api/v1/images", "GET, HEAD, POST"),
        ("QUERY", "/api/v1/images?limit=1", "GET, HEAD, POST"),
        ("PUT", "/api/v1/images/0123456789abcdef0123456789abcdef", "DELETE, GET, HEAD"),
        ("DELETE", "/healthz", "GET, HEAD"),
        ("PATCH", "/", "GET, HEAD"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = app.client.request(method.clone(), app.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
        if path == "/" {
            assert!(response.text().await.unwrap().contains("METHOD_NOT_ALLOWED"), "pages answer with a page");
        } else {
            let (_, code, _) = crate::helpers::error_code(response).await;
            assert_eq!(code, "METHOD_NOT_ALLOWED");
        }
    }
    let unknown = app.client.request(reqwest::Method::from_bytes(b"QUERY").unwrap(), app.url("/nowhere")).send();
    assert_eq!(unknown.await.unwrap().status().as_u16(), 404);
    // A missing image is still a 404, and the connection that carried a refused method served what came before.
    assert_eq!(app.get("/api/v1/images/0123456789abcdef0123456789abcdef").await.status().as_u16(), 404);
}

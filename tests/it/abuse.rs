//! One client cannot take more than its share of the public intake: each loopback address (127.0.0.2,
//! 127.0.0.3, …) is a client of its own, as distinct addresses behind the load balancer are.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// An allowance of 5 intake requests at once and 1 a minute: the sixth is refused for about a minute.
async fn strict_app() -> TestApp {
    spawn_with(Stack::Embedded, |f| f.merge(("client_requests_per_minute", 1)).merge(("client_request_burst", 5))).await
}

fn client_from(address: &str) -> reqwest::Client {
    let local: IpAddr = address.parse().unwrap();
    reqwest::Client::builder().local_address(local).timeout(Duration::from_secs(30)).build().unwrap()
}

#[tokio::test]
async fn a_flooding_client_is_refused_while_another_is_served() {
    let app = strict_app().await;
    let flooder = client_from("127.0.0.2");
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let response =
            flooder.post(app.url("/api/v1/images")).multipart(file_form("logo-alpha.png")).send().await.unwrap();
        if response.status() == 429 {
            let retry_after: u32 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry_after), "{retry_after}");
            let (_, code, body) = error_code(response).await;
            assert_eq!(code, "TOO_MANY_REQUESTS", "{body}");
            statuses.push(429);
        } else {
            statuses.push(response.status().as_u16());
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7, "{statuses:?}");
    assert_eq!(app.image_rows().await, 5, "nothing of a refused upload is stored");

    // Every intake route draws on the same allowance: classification, direct-upload sessions, the page's form.
    let classify = flooder.post(app.url("/api/v1/classify")).multipart(file_form("cat.jpg")).send().await.unwrap();
    assert_eq!(classify.status(), 429);
    let session = serde_json::json!({"filename": "a.jpg", "byte_size": 1000, "content_type": "image/jpeg"});
    let open = flooder.post(app.url("/api/v1/uploads")).json(&session).send().await.unwrap();
    assert_eq!(open.status(), 429);
    let page = flooder.post(app.url("/upload")).multipart(file_form("cat.jpg")).send().await.unwrap();
    assert_eq!(page.status(), 429);
    assert!(page.headers().contains_key("retry-after"));
    assert!(page.text().await.unwrap().contains("TOO_MANY_REQUESTS"), "the form page names the code");
    // Reads are not intake.
    assert_eq!(flooder.get(app.url("/")).send().await.unwrap().status(), 200);

    // Another client in the same minute is untouched.
    let neighbour = client_from("127.0.0.3");
    for _ in 0..5 {
        let response =
            neighbour.post(app.url("/api/v1/images")).multipart(file_form("logo-alpha.png")).send().await.unwrap();
        assert_eq!(response.status(), 201);
    }
}

#[tokio::test]
async fn a_refused_upload_is_answered_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = strict_app().await;
    let client = client_from("127.0.0.4");
    for _ in 0..5 {
        let response = client.post(app.url("/api/v1/classify")).multipart(file_form("cat.jpg")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    // A 16 MiB upload of which only the head and 1 KiB are ever sent: the answer comes all the same.
    let server: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.4:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    let head = format!(
        "POST /api/v1/images HTTP/1.1\r\nHost: {server}\r\nContent-Type: multipart/form-data; boundary=b\r\n\
         Content-Length: {}\r\n\r\n",
        16 << 20
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'x'; 1024]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await.expect("answered at once");
    let answer = String::from_utf8_lossy(&answer[..read.unwrap()]).to_string();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after:"), "{answer}");
}

async fn websocket_from(app: &TestApp, address: &str) -> Result<WebSocket, u16> {
    let server: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(address.parse().unwrap(), 0)).unwrap();
    let stream = socket.connect(server).await.unwrap();
    let url = format!("ws://{server}/api/v1/ws");
    match tokio_tungstenite::client_async(url, stream).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("{other}"),
    }
}

type WebSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

#[tokio::test]
async fn websockets_are_capped_per_client_and_each_message_is_an_intake_request() {
    let app = spawn_with(Stack::Embedded, |f| {
        f.merge(("client_requests_per_minute", 1))
            .merge(("client_request_burst", 8))
            .merge(("max_websockets_per_client", 2))
            .merge(("websocket_max_message_bytes", 1 << 20))
    })
    .await;
    let mut first = websocket_from(&app, "127.0.0.5").await.unwrap();
    let second = websocket_from(&app, "127.0.0.5").await.unwrap();
    assert_eq!(websocket_from(&app, "127.0.0.5").await.err(), Some(429), "a third socket from the same client");
    let _other = websocket_from(&app, "127.0.0.6").await.expect("another client's socket");
    // A closed socket's slot comes back (once the server has seen it close).
    drop(second);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _reopened = websocket_from(&app, "127.0.0.5").await.expect("the slot of a closed socket is given back");

    // Each upgrade took one of the 8, the refused one too: 4 images are answered, then each is refused
    // unprocessed.
    let mut codes = Vec::new();
    for _ in 0..6 {
        first.send(Message::Binary(fixture("cat.jpg"))).await.unwrap();
        let reply = first.next().await.unwrap().unwrap().into_text().unwrap();
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        codes.push(reply["error"]["code"].as_str().unwrap_or("ok").to_owned());
    }
    assert_eq!(codes, ["ok", "ok", "ok", "ok", "TOO_MANY_REQUESTS", "TOO_MANY_REQUESTS"]);

    // A message over the size limit closes the socket (1009) without the server holding it.
    first.send(Message::Binary(vec![0u8; 2 << 20])).await.ok();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match first.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert!(closed.is_none() || closed == Some(1009), "{closed:?}");
}

/// Sends a request head declaring `length` bytes of multipart body, and 1 KiB of it, from `address`.
async fn start_upload(app: &TestApp, address: &str, length: u64) -> tokio::net::TcpStream {
    start_upload_with(app, address, length, "").await
}

/// `start_upload` with `extra_headers` (each ending in CRLF) in the head.
async fn start_upload_with(app: &TestApp, address: &str, length: u64, extra_headers: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let server: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(address.parse().unwrap(), 0)).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    let head = format!(
        "POST /api/v1/images HTTP/1.1\r\nHost: {server}\r\nContent-Type: multipart/form-data; boundary=b\r\n\
         Content-Length: {length}\r\n{extra_headers}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'x'; 1024]).await.unwrap();
    stream
}

#[tokio::test]
async fn bodies_on_disk_stay_within_the_spool_quota() {
    use tokio::io::AsyncReadExt;
    // Room for one whole form (1 MiB file + 1 MiB of form) on disk at a time.
    let app = spawn_with(Stack::Embedded, |f| {
        f.merge(("max_upload_bytes", 1 << 20)).merge(("spool_quota_bytes", 2 << 20)).merge(("cpu_wait_ms", 500))
    })
    .await;
    let slow = start_upload(&app, "127.0.0.7", 2 << 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another client's body finds no room: after the wait it is refused, unread.
    let mut refused = start_upload(&app, "127.0.0.8", 1 << 20).await;
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut answer)).await.expect("answered");
    let answer = String::from_utf8_lossy(&answer[..read.unwrap()]).to_string();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"BUSY\"") && answer.to_ascii_lowercase().contains("retry-after:"), "{answer}");
    // The slow body gone, its room is given back.
    drop(slow);
    let mut stored = None;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let response =
            client_from("127.0.0.8").post(app.url("/api/v1/images")).multipart(file_form("cat.jpg")).send().await;
        if let Ok(response) = response.map(|r| r.status().as_u16()) {
            stored = Some(response);
            if response == 201 {
                break;
            }
        }
    }
    assert_eq!(stored, Some(201));
}

/// Reads what the server answered on `stream` within 5 s, as text.
async fn answer_of(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await.expect("answered");
    String::from_utf8_lossy(&answer[..read.unwrap()]).to_string()
}

#[tokio::test]
async fn a_client_holds_at_most_its_share_of_the_sockets_connections() {
    let app = spawn_with(Stack::Embedded, |f| f.merge(("max_connections_per_client", 3))).await;
    let server: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let connect = |address: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(address.parse().unwrap(), 0)).unwrap();
        socket.connect(server).await.unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect("127.0.0.9").await);
    }
    // The fourth is answered at once, unread, and closed.
    let answer = answer_of(&mut connect("127.0.0.9").await).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains("\"TOO_MANY_REQUESTS\"") && answer.to_ascii_lowercase().contains("retry-after:"),
        "{answer}"
    );
    // Another client is untouched, and a closed connection is given back.
    assert_eq!(client_from("127.0.0.10").get(app.url("/healthz")).send().await.unwrap().status(), 200);
    drop(held.pop());
    let mut served = None;
    for _ in 0..20 {
        if let Ok(response) = client_from("127.0.0.9").get(app.url("/healthz")).send().await {
            served = Some(response.status().as_u16());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, Some(200));
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    // The retries above may have been refused while the closed connection was still being let go.
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("upshot_connections_refused_per_client_total "))
        .expect("the counter")
        .parse()
        .unwrap();
    assert!(refused >= 1, "{refused}");
}

/// Behind the load balancer every connection comes from it, so what one client may hold is counted in requests:
/// its intake requests in flight.
#[tokio::test]
async fn behind_the_balancer_a_client_has_few_uploads_in_flight() {
    let app = spawn_with(Stack::Embedded, |f| {
        f.merge(("trusted_proxy_hops", 1))
            .merge(("max_intake_in_flight_per_client", 2))
            .merge(("max_connections_per_client", 1))
    })
    .await;
    let from = |client: &str| format!("X-Forwarded-For: {client}\r\n");
    let slow = [
        start_upload_with(&app, "127.0.0.1", 1 << 20, &from("198.51.100.7")).await,
        start_upload_with(&app, "127.0.0.1", 1 << 20, &from("198.51.100.7")).await,
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = answer_of(&mut start_upload_with(&app, "127.0.0.1", 1 << 20, &from("198.51.100.7")).await).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains("\"TOO_MANY_REQUESTS\"") && answer.to_ascii_lowercase().contains("retry-after:"),
        "{answer}"
    );
    // Another client behind the same balancer, on more connections from it than the per-address cap: served.
    let stored = app
        .client
        .post(app.url("/api/v1/images"))
        .header("X-Forwarded-For", "198.51.100.8")
        .multipart(file_form("cat.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    // The slow ones gone, their places are given back.
    drop(slow);
    let mut status = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let response = app
            .client
            .post(app.url("/api/v1/images"))
            .header("X-Forwarded-For", "198.51.100.7")
            .multipart(file_form("logo-alpha.png"))
            .send()
            .await
            .unwrap();
        status = response.status().as_u16();
        if status == 201 {
            break;
        }
    }
    assert_eq!(status, 201);
}

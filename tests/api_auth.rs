//! Access control of the HTTP API against a real node on 127.0.0.1 with
//! real TLS (rustls on both ends, certificates from `herald keygen`):
//! client certificates from another CA, none at all, revoked ones and node
//! certificates are refused at the handshake; every permission answers 403
//! with the JSON error naming it, and writes nothing; allowed requests
//! succeed; reads filter by channel; consumers are per client; the Unix
//! socket serves the local operator with mode 0600; plain HTTP off
//! loopback is refused by the config check.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::net::Net;
use herald::config::{ApiClientConfig, ApiConfig, NodeConfig};
use herald::identity::TrustAnchor;
use herald::net::TlsIdentity;
use herald::node::Node;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A node `a` serving HTTPS on loopback and a Unix socket, with clients.
struct Setup {
    net: Net,
    node: Node,
    addr: SocketAddr,
    socket: PathBuf,
    default_channel: String,
}

fn trust(net: &Net) -> Arc<TrustAnchor> {
    let revoked = net.keys().join("revoked.toml");
    let revoked = revoked.exists().then_some(revoked);
    Arc::new(TrustAnchor::load(&net.ca(), revoked.as_deref()).expect("trust anchor"))
}

/// The identity of certificate `name` in `keys`, verifying the server
/// against `net`'s CA.
fn identity(keys: &Path, name: &str, net: &Net) -> TlsIdentity {
    let own = Arc::new(TrustAnchor::load(&keys.join("ca.crt"), None).expect("its CA"));
    TlsIdentity::from_files(
        &keys.join(format!("{name}.crt")),
        &keys.join(format!("{name}.key")),
        own,
    )
    .expect("identity")
    .with_trust(trust(net))
}

/// An HTTPS client presenting `id`, dialling node `a` at `addr`.
fn https(id: &TlsIdentity, addr: SocketAddr) -> reqwest::Client {
    let tls = herald::net::tls::api_client_config(id).expect("client TLS config");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve("a", addr)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("client")
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("https://a:{}{path}", addr.port())
}

/// Status and JSON body (`Null` when empty) of a request.
async fn call(
    client: &reqwest::Client,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, url(addr, path));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    (status, body)
}

/// Asserts a 403 `forbidden` naming `permission`.
fn assert_forbidden(answer: &(StatusCode, Value), permission: &str) {
    assert_eq!(answer.0, StatusCode::FORBIDDEN, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], "forbidden", "{}", answer.1);
    assert_eq!(answer.1["error"]["field"], permission, "{}", answer.1);
    let message = answer.1["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(permission), "{message}");
}

/// One HTTP/1.1 request over the Unix socket: status and JSON body.
async fn over_socket(socket: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect to the API socket");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8(answer).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers and body");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).expect("a JSON body")
    };
    (status, body)
}

fn client(name: &str) -> ApiClientConfig {
    ApiClientConfig {
        name: name.into(),
        ..ApiClientConfig::default()
    }
}

async fn setup() -> Setup {
    let net = Net::mesh(&["a"]);
    let keys = net.keys();
    for name in ["writer", "reader", "nobody", "operator", "stranger", "gone"] {
        herald::identity::issue_client(&keys, name, 30, false).expect("issue client");
    }
    herald::identity::revoke(&keys, "gone").expect("revoke");
    let day_us = 86_400_000_000;
    let now_us = herald::clock::now_us();
    herald::identity::issue_client_with_validity(
        &keys,
        "expired",
        now_us - 2 * day_us,
        now_us - day_us,
        false,
    )
    .expect("issue an expired client");
    herald::identity::create_channel(&keys, "secret", false).expect("channel");
    let default_channel = net.config("a").default_channel.clone();
    let socket = net.path().join("api.sock");
    let channel = default_channel.clone();
    let socket_path = socket.clone();
    net.edit("a", |c| {
        c.channels
            .insert("secret".into(), keys.join("channel-secret.key"));
        c.api = Some(ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: true,
            unix: Some(socket_path),
            clients: vec![
                ApiClientConfig {
                    publish: vec!["order.*".into()],
                    read_channels: vec![channel],
                    queries: vec!["herald.head".into()],
                    sagas: vec!["Ping".into()],
                    ..client("writer")
                },
                ApiClientConfig {
                    read_channels: vec!["secret".into()],
                    ..client("reader")
                },
                client("nobody"),
                ApiClientConfig {
                    admin: true,
                    read_channels: vec!["*".into()],
                    ..client("operator")
                },
                client("gone"),
                client("expired"),
            ],
        });
    });
    let node = Node::start(&net.config("a")).await.expect("start a");
    let addr = node.api_addr().expect("a has an API");
    Setup {
        net,
        node,
        addr,
        socket,
        default_channel,
    }
}

fn head(node: &Node) -> Option<u64> {
    node.log()
        .heads()
        .unwrap()
        .into_iter()
        .find(|h| h.feed == "a")
        .map(|h| h.seq)
}

fn types_of(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

const PING_SAGA: &str = r#"
saga_type = "Ping"
deadline_ms = 30000

[[steps]]
name = "ping"
service = "b"
command = "ping.do"
compensation = "ping.undo"
deadline_ms = 20000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_gets_what_its_permissions_allow_and_403_for_the_rest() {
    let s = setup().await;
    let (addr, keys) = (s.addr, s.net.keys());
    let writer = https(&identity(&keys, "writer", &s.net), addr);
    let reader = https(&identity(&keys, "reader", &s.net), addr);
    let nobody = https(&identity(&keys, "nobody", &s.net), addr);
    let operator = https(&identity(&keys, "operator", &s.net), addr);
    let stranger = https(&identity(&keys, "stranger", &s.net), addr);

    // The Unix socket: mode 0600, the local operator with full access.
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let meta = std::fs::metadata(&s.socket).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let published = over_socket(
        &s.socket,
        "POST",
        "/v1/events",
        Some(json!([
            {"type": "order.created", "data": {"n": 1}},
            {"type": "secret.note", "data": {"n": 2}, "channel": "secret"},
            {"type": "payment.made", "data": {"n": 3}},
        ])),
    )
    .await;
    assert_eq!(published.0, 200, "{}", published.1);
    let order_id = published.1["receipts"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = published.1["receipts"][1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let status = over_socket(&s.socket, "GET", "/v1/status", None).await;
    assert_eq!(status.0, 200, "{}", status.1);

    // Publish: allowed types succeed; one disallowed event refuses the whole
    // batch and writes nothing.
    let ok = call(
        &writer,
        addr,
        "POST",
        "/v1/events",
        Some(json!({"type": "order.paid", "data": {}})),
    )
    .await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);
    assert_eq!(ok.1["receipts"][0]["feed"], "a");
    let before = head(&s.node);
    let refused = call(
        &writer,
        addr,
        "POST",
        "/v1/events",
        Some(json!([
            {"type": "order.shipped", "data": {}},
            {"type": "payment.made", "data": {}},
        ])),
    )
    .await;
    assert_forbidden(&refused, "publish");
    assert!(
        refused.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("payment.made")
    );
    assert_forbidden(
        &call(
            &reader,
            addr,
            "POST",
            "/v1/events",
            Some(json!({"type": "order.x", "data": {}})),
        )
        .await,
        "publish",
    );
    assert_eq!(head(&s.node), before, "a refused publish writes nothing");

    // Reads filter to the channels each client may read.
    let mine = call(&writer, addr, "GET", "/v1/events", None).await;
    assert_eq!(mine.0, StatusCode::OK, "{}", mine.1);
    assert_eq!(
        types_of(&mine.1),
        ["order.created", "payment.made", "order.paid"],
        "the writer reads its channel {} only",
        s.default_channel
    );
    let theirs = call(&reader, addr, "GET", "/v1/events", None).await;
    assert_eq!(types_of(&theirs.1), ["secret.note"]);
    assert_eq!(theirs.1["events"][0]["data"], json!({"n": 2}));
    let everything = types_of(&call(&operator, addr, "GET", "/v1/events", None).await.1);
    for t in ["order.created", "secret.note", "payment.made", "order.paid"] {
        assert!(everything.contains(&t.to_string()), "{everything:?}");
    }
    let range = call(&reader, addr, "GET", "/v1/feeds/a/events", None).await;
    assert_eq!(types_of(&range.1), ["secret.note"]);
    let one = call(
        &reader,
        addr,
        "GET",
        &format!("/v1/events/{secret_id}"),
        None,
    )
    .await;
    assert_eq!(one.0, StatusCode::OK, "{}", one.1);
    assert_forbidden(
        &call(
            &reader,
            addr,
            "GET",
            &format!("/v1/events/{order_id}"),
            None,
        )
        .await,
        "read_channels",
    );
    for path in ["/v1/events", "/v1/stream", "/v1/feeds"] {
        assert_forbidden(
            &call(&nobody, addr, "GET", path, None).await,
            "read_channels",
        );
    }

    // A stream (SSE) carries only readable events, and moves past the rest.
    let response = reader
        .get(url(addr, "/v1/stream?from=start"))
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    use futures_util::StreamExt as _;
    while !text.contains("secret.note") {
        let chunk = tokio::time::timeout(REQUEST_TIMEOUT, body.next())
            .await
            .expect("stream data in time")
            .expect("stream open")
            .expect("chunk");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(!text.contains("order."), "{text}");
    drop(body);

    // Durable consumers are per client: same name, separate consumers, each
    // pulling only what its client may read.
    for c in [&writer, &reader] {
        let put = call(
            c,
            addr,
            "PUT",
            "/v1/consumers/work",
            Some(json!({"from": "start"})),
        )
        .await;
        assert_eq!(put.0, StatusCode::CREATED, "{}", put.1);
    }
    let pulled = call(&writer, addr, "GET", "/v1/consumers/work/events", None).await;
    assert_eq!(types_of(&pulled.1).len(), 3, "{}", pulled.1);
    assert!(!types_of(&pulled.1).contains(&"secret.note".to_string()));
    let pulled = call(&reader, addr, "GET", "/v1/consumers/work/events", None).await;
    assert_eq!(types_of(&pulled.1), ["secret.note"]);
    let last = pulled.1["next_after"].as_u64().unwrap();
    let acked = call(
        &reader,
        addr,
        "POST",
        "/v1/consumers/work/ack",
        Some(json!({"position": last})),
    )
    .await;
    assert_eq!(acked.0, StatusCode::OK, "{}", acked.1);
    let writers = call(&writer, addr, "GET", "/v1/consumers/work", None).await;
    assert_eq!(
        writers.1["acked"], 0,
        "the reader's ack moved only its own consumer"
    );
    let listed = call(&writer, addr, "GET", "/v1/consumers", None).await;
    assert_eq!(listed.1["consumers"].as_array().unwrap().len(), 1);
    let local = over_socket(&s.socket, "GET", "/v1/consumers", None).await;
    assert_eq!(
        local.1["consumers"],
        json!([]),
        "clients' consumers are their own"
    );
    let deleted = call(&nobody, addr, "DELETE", "/v1/consumers/work", None).await;
    assert_eq!(deleted.0, StatusCode::NOT_FOUND, "{}", deleted.1);
    assert_forbidden(
        &call(&nobody, addr, "PUT", "/v1/consumers/work", Some(json!({}))).await,
        "read_channels",
    );

    // Queries.
    let asked = call(
        &writer,
        addr,
        "POST",
        "/v1/queries",
        Some(json!({"to": "a", "type": "herald.head", "data": {"feed": "a"}})),
    )
    .await;
    assert_eq!(asked.0, StatusCode::OK, "{}", asked.1);
    assert_forbidden(
        &call(
            &writer,
            addr,
            "POST",
            "/v1/queries",
            Some(json!({"to": "a", "type": "herald.event"})),
        )
        .await,
        "queries",
    );

    // Sagas.
    let started = call(
        &writer,
        addr,
        "POST",
        "/v1/sagas",
        Some(json!({"definition": PING_SAGA})),
    )
    .await;
    assert_eq!(started.0, StatusCode::CREATED, "{}", started.1);
    let saga_id = started.1["saga_id"].as_str().unwrap().to_string();
    let other = PING_SAGA.replace("\"Ping\"", "\"Transfer\"");
    let before = head(&s.node);
    assert_forbidden(
        &call(
            &writer,
            addr,
            "POST",
            "/v1/sagas",
            Some(json!({"definition": other})),
        )
        .await,
        "sagas",
    );
    assert_forbidden(
        &call(
            &reader,
            addr,
            "POST",
            "/v1/sagas",
            Some(json!({"definition": PING_SAGA})),
        )
        .await,
        "sagas",
    );
    assert_eq!(head(&s.node), before, "a refused saga start writes nothing");
    let saga = call(&writer, addr, "GET", &format!("/v1/sagas/{saga_id}"), None).await;
    assert_eq!(saga.0, StatusCode::OK, "{}", saga.1);
    let history = call(
        &writer,
        addr,
        "GET",
        &format!("/v1/sagas/{saga_id}/history"),
        None,
    )
    .await;
    assert_eq!(history.0, StatusCode::OK, "{}", history.1);
    assert_forbidden(
        &call(
            &reader,
            addr,
            "GET",
            &format!("/v1/sagas/{saga_id}/history"),
            None,
        )
        .await,
        "sagas",
    );
    let sagas = call(&writer, addr, "GET", "/v1/sagas", None).await;
    assert_eq!(sagas.1["sagas"].as_array().unwrap().len(), 1, "{}", sagas.1);
    assert_forbidden(
        &call(&reader, addr, "GET", "/v1/sagas", None).await,
        "sagas",
    );
    assert_forbidden(
        &call(&reader, addr, "GET", &format!("/v1/sagas/{saga_id}"), None).await,
        "sagas",
    );

    // Administration.
    for path in ["/v1/status", "/v1/peers"] {
        assert_forbidden(&call(&writer, addr, "GET", path, None).await, "admin");
        let allowed = call(&operator, addr, "GET", path, None).await;
        assert_eq!(allowed.0, StatusCode::OK, "{path}: {}", allowed.1);
    }
    // Reloading the node's trust files: admin only.
    assert_forbidden(
        &call(&writer, addr, "POST", "/v1/reload", None).await,
        "admin",
    );
    let reloaded = call(&operator, addr, "POST", "/v1/reload", None).await;
    assert_eq!(reloaded.0, StatusCode::OK, "{}", reloaded.1);
    assert_eq!(reloaded.1["service"], "a", "{}", reloaded.1);
    // Metrics name peers, feeds and consumers: admin only.
    assert_forbidden(&call(&writer, addr, "GET", "/metrics", None).await, "admin");
    let scraped = operator
        .get(url(addr, "/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(scraped.status(), StatusCode::OK);
    let text = scraped.text().await.expect("metrics text");
    assert!(text.contains("herald_events_proclaimed_total"), "{text}");

    // A valid certificate of the cluster with no [[api.clients]] entry.
    assert_forbidden(
        &call(&stranger, addr, "GET", "/v1/events", None).await,
        "client",
    );
    // Probes stay outside the permissions (but behind the TLS handshake).
    let health = call(&stranger, addr, "GET", "/healthz", None).await;
    assert_eq!(health.0, StatusCode::OK, "{}", health.1);

    s.node.shutdown().await;
    assert!(!s.socket.exists(), "the socket is removed at shutdown");
}

/// True if a request with `client` gets any HTTP answer.
async fn answered(client: &reqwest::Client, addr: SocketAddr) -> Result<StatusCode, String> {
    client
        .get(url(addr, "/healthz"))
        .send()
        .await
        .map(|r| r.status())
        .map_err(|e| format!("{e:?}"))
}

/// Accepts any server certificate: a client whose only purpose is to show
/// that the server refuses it for presenting none.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_refuses_foreign_revoked_node_and_missing_certificates() {
    let s = setup().await;
    let (addr, keys) = (s.addr, s.net.keys());
    let good = https(&identity(&keys, "writer", &s.net), addr);
    // A connection that never starts its handshake does not hold up others
    // (handshakes run on their own, each within HANDSHAKE_TIMEOUT_MS).
    let _idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let within = Duration::from_millis(herald::api::auth::HANDSHAKE_TIMEOUT_MS / 2);
    let first = tokio::time::timeout(within, answered(&good, addr)).await;
    assert_eq!(
        first.ok(),
        Some(Ok(StatusCode::OK)),
        "served beside an idle connection"
    );

    // Another cluster's CA issued a client certificate of the same name.
    let other = Net::mesh(&["x"]);
    herald::identity::issue_client(&other.keys(), "writer", 30, false).expect("issue");
    let foreign = https(&identity(&other.keys(), "writer", &s.net), addr);
    let e = answered(&foreign, addr)
        .await
        .expect_err("a foreign CA's certificate");
    assert!(e.contains("UnknownCA"), "{e}");

    // Revoked (in the revocation list the node loaded; listed in
    // [[api.clients]], so only the revocation stops it).
    let gone = https(&identity(&keys, "gone", &s.net), addr);
    let e = answered(&gone, addr)
        .await
        .expect_err("a revoked certificate");
    assert!(e.contains("CertificateRevoked"), "{e}");

    // Expired (listed, so only its validity window stops it).
    let expired = https(&identity(&keys, "expired", &s.net), addr);
    let e = answered(&expired, addr)
        .await
        .expect_err("an expired certificate");
    assert!(e.contains("CertificateExpired"), "{e}");

    // A node certificate is not an API client certificate.
    let node = https(&identity(&keys, "a", &s.net), addr);
    let e = answered(&node, addr).await.expect_err("a node certificate");
    assert!(e.contains("UnsupportedCertificate"), "{e}");

    // No client certificate at all.
    let verifier = Arc::new(AnyServer(
        Arc::new(rustls::crypto::ring::default_provider()),
    ));
    let mut bare = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    bare.alpn_protocols = vec![b"http/1.1".to_vec()];
    let anonymous = reqwest::Client::builder()
        .use_preconfigured_tls(bare)
        .resolve("a", addr)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let e = answered(&anonymous, addr)
        .await
        .expect_err("no client certificate");
    assert!(e.contains("CertificateRequired"), "{e}");
    // Plain HTTP on an HTTPS port is no way around it either.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/v1/events"))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await;
    assert!(
        plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()),
        "plain HTTP is not served on the HTTPS listener"
    );

    // An OpenSSL client (curl), which sends the CA's certificate along
    // with its own, is served as docs/API.md shows; without a certificate
    // it gets the certificate_required alert.
    let curl = |with_cert: bool| {
        let mut command = std::process::Command::new("curl");
        command
            .args(["-sS", "--max-time", "30", "--cacert"])
            .arg(keys.join("ca.crt"))
            .args(["--resolve", &format!("a:{}:127.0.0.1", addr.port())]);
        if with_cert {
            command
                .arg("--cert")
                .arg(keys.join("writer.crt"))
                .arg("--key")
                .arg(keys.join("writer.key"));
        }
        command
            .arg(url(addr, "/v1/status"))
            .output()
            .expect("curl is needed for this test (Debian package curl)")
    };
    let out = curl(true);
    let body: Value = serde_json::from_slice(&out.stdout).expect("a JSON answer");
    assert_eq!(body["error"]["field"], "admin", "{body}");
    let out = curl(false);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate required"), "{stderr}");

    // The node still serves the good client after all that.
    assert_eq!(answered(&good, addr).await, Ok(StatusCode::OK));
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_off_loopback_is_refused_with_a_clear_error() {
    let net = Net::mesh(&["a"]);
    let mut config = net.config("a");
    config.api = Some(ApiConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..ApiConfig::default()
    });
    // Loading the file refuses it...
    std::fs::write(net.config_path("a"), config.to_toml()).unwrap();
    let e = NodeConfig::load(&net.config_path("a"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("0.0.0.0:0") && e.contains("tls = true"), "{e}");
    // ...and so does starting a node from a config built in code.
    let e = match Node::start(&config).await {
        Ok(_) => panic!("a node started with plain HTTP off loopback"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("tls = true"), "{e}");
    // The same address with HTTPS starts (the refused start left nothing
    // running: the store is free).
    config.api = Some(ApiConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        tls: true,
        ..ApiConfig::default()
    });
    let node = Node::start(&config)
        .await
        .expect("HTTPS off loopback starts");
    assert!(node.api_addr().is_some());
    node.shutdown().await;
}

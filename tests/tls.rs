//! TLS: the listener serves HTTP/1.1 and HTTP/2 by ALPN with a certificate
//! generated here, and an https upstream signed by a private CA works when
//! (and only when) that CA is configured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::net::TcpStream;

struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

/// A private CA and a leaf for localhost / 127.0.0.1 signed by it.
fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Opens TLS to the proxy offering one ALPN protocol; returns the stream and
/// what the server chose.
async fn connect(
    addr: std::net::SocketAddr,
    ca: &CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn tls_listener_serves_http1_and_http2_by_alpn() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "server.pem", &pki.cert_pem);
    let key = write(dir.path(), "server.key", &pki.key_pem);
    let origin = Origin::start("officer").await;
    let text = config_text(&origin.url(), "").replace(
        "[server]\n",
        &format!("[server]\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n"),
    );
    let app = start_proxy(&text).await;

    // HTTP/1.1
    let tls = connect(app.main_addr(), &pki.ca_der, b"http/1.1").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/one?via=h1")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_11);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"officer GET /one?via=h1");
    assert_eq!(origin.last_seen().headers["x-forwarded-proto"], "https");

    // HTTP/2
    let tls = connect(app.main_addr(), &pki.ca_der, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/two?via=h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"officer GET /two?via=h2");
    app.shutdown().await;
}

#[tokio::test]
async fn https_upstream_with_custom_ca() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let origin_tls = profile_edge::http::tls::server_config(
        Path::new(&write(dir.path(), "o.pem", &pki.cert_pem)),
        Path::new(&write(dir.path(), "o.key", &pki.key_pem)),
        true,
    )
    .unwrap();
    let origin = Origin::start_tls("secure-officer", origin_tls).await;
    let url = format!("https://localhost:{}", origin.addr.port());
    let c = client();

    // With the CA configured, the upstream's certificate verifies.
    let with_ca = config_text(&url, "").replace(
        "connect_timeout = \"500ms\"\n",
        &format!("connect_timeout = \"500ms\"\nca_file = \"{ca}\"\n"),
    );
    let app = start_proxy(&with_ca).await;
    let (status, headers, body) = get(&c, &format!("http://{}/api/secure", app.main_addr())).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["x-origin-name"], "secure-officer");
    assert_eq!(origin.calls(), 1);
    app.shutdown().await;

    // Without it, the same upstream is refused: verification is real.
    let app = start_proxy(&config_text(&url, "")).await;
    let (status, _, body) = get(&c, &format!("http://{}/api/secure", app.main_addr())).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let v = error_json(&body);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{v}"
    );
    assert_eq!(origin.calls(), 1, "an unverified upstream got a request");
    app.shutdown().await;
}

#[tokio::test]
async fn unreadable_key_is_a_config_error_naming_the_key() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "server.pem", &pki.cert_pem);
    let key = write(dir.path(), "server.key", "not a key");
    let text = config_text("http://127.0.0.1:1", "").replace(
        "[server]\n",
        &format!("[server]\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n"),
    );
    let config = profile_edge::Config::parse(&text, "t.toml").unwrap();
    let err = profile_edge::state::Runtime::build(config, "t.toml")
        .err()
        .expect("a bad key must be refused");
    assert_eq!(err.problems[0].key, "server.tls");
    assert!(err.problems[0].reason.contains("server.key"), "{err}");
}

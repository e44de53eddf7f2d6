//! The Redis tier and the backplane over TLS with AUTH, as managed Redis
//! services require: real `redis-server`s on their TLS ports with a CA and
//! a certificate made for the test (`tests/harness`), the proxy trusting
//! that CA through `tls_ca_file` (rustls, aws-lc), the password from the
//! URL or from the variable `password_env` names, never in the log. Also a
//! TLS-only Redis Cluster, and a server whose certificate is not trusted.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use profile_edge::testkit::{user_id, SimOrigin};
use profile_edge_harness::{RedisCluster, TlsRedis};
use serde_json::{json, Value};
use support::*;

const USER: &str = "edge";
/// Long and unusual, so that finding it in a log cannot be a coincidence.
const PASSWORD: &str = "pw-7f3c9a1e-never-logged";
const VAR: &str = "PE_TEST_REDIS_PASSWORD";

fn tls_section(url: &str, ca: &std::path::Path, extra: &str) -> String {
    format!(
        "[tiers.redis]\nurl = \"{url}\"\ntls_ca_file = \"{}\"\nkey_prefix = \"pe:tls:\"\n\
         timeout = \"2s\"\nconnect_timeout = \"2s\"\nbreaker_cooldown = \"200ms\"\n{extra}\n\
         [backplane]\nchannel = \"pe:tls:bp\"\n\n",
        ca.display()
    )
}

async fn stats(client: &HttpClient, admin: std::net::SocketAddr) -> Value {
    admin_stats(client, admin).await
}

async fn wait_backplane(client: &HttpClient, admin: std::net::SocketAddr) {
    wait_until("backplane connected", || async {
        stats(client, admin).await["backplane"]["connected"] == json!(true)
    })
    .await;
}

async fn tier_of(client: &HttpClient, main: std::net::SocketAddr, id: &str) -> String {
    served(client, main, id).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_acl_auth_with_the_password_from_an_env_var_that_is_never_logged() {
    let redis = TlsRedis::start_with_auth(USER, PASSWORD)
        .await
        .unwrap_or_else(|e| panic!("cannot start a TLS redis-server: {e}"));
    let sim = sim_origin(100, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();

    // A: the binary, user in the URL, password from the environment.
    let admin = loopback_port();
    let a_main = loopback_port();
    let a_text = config_text_at(
        &sim.officer_url(),
        &a_main.to_string(),
        &admin.to_string(),
        &tls_section(
            &format!("rediss://{USER}@127.0.0.1:{}", redis.port()),
            redis.ca_pem_path(),
            &format!("password_env = \"{VAR}\"\n"),
        ),
    );
    let a_config = dir.path().join("a.toml");
    std::fs::write(&a_config, &a_text).unwrap();
    // `check` needs the variable too, and names it when it is missing.
    let refused = Command::new(bin())
        .args(["check", "--config"])
        .arg(&a_config)
        .env_remove(VAR)
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(1), "{line}");
    assert!(
        line.contains("tiers.redis.password_env") && line.contains(VAR),
        "{line}"
    );
    let accepted = Command::new(bin())
        .args(["check", "--config"])
        .arg(&a_config)
        .env(VAR, PASSWORD)
        .output()
        .unwrap();
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );

    let log_path = dir.path().join("a.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let a = spawn_binary_with_env(&a_config, admin, Stdio::from(log), &[(VAR, PASSWORD)]).await;

    // B: in this process, user and password in the URL.
    let b = start_proxy(&profile_config(
        &sim.officer_url(),
        &tls_section(&redis.url_with_auth(), redis.ca_pem_path(), ""),
    ))
    .await;
    let client = client();
    wait_backplane(&client, admin).await;
    wait_backplane(&client, b.admin_addr()).await;

    // Written over TLS by A, read back over TLS by B: no origin call.
    let ids: Vec<String> = (0..20).map(user_id).collect();
    for id in &ids {
        assert_eq!(tier_of(&client, a_main, id).await, "origin");
    }
    let calls = sim.stats().origin_calls();
    for id in &ids {
        assert_eq!(tier_of(&client, b.main_addr(), id).await, "redis", "{id}");
    }
    assert_eq!(sim.stats().origin_calls(), calls);

    // The backplane over TLS: A holds the id in memory, B invalidates it.
    let x = &ids[0];
    assert_eq!(tier_of(&client, a_main, x).await, "memory");
    let (v0, _) = served(&client, a_main, x).await;
    assert!(sim.update_user(x));
    purge(&client, b.admin_addr(), x).await;
    wait_until("A drops the invalidated id", || async {
        served(&client, a_main, x).await.0 > v0
    })
    .await;

    drop(a);
    b.shutdown().await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("redis tier configured"),
        "A logged its tier:\n{text}"
    );
    assert!(
        !text.contains(PASSWORD),
        "the password is in the log:\n{text}"
    );
}

/// A port that was free a moment ago, as a listen address.
fn loopback_port() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused_and_requests_still_succeed() {
    let redis = TlsRedis::start()
        .await
        .unwrap_or_else(|e| panic!("cannot start a TLS redis-server: {e}"));
    // Another server's CA: valid PEM, but it did not sign this certificate.
    let other = TlsRedis::start()
        .await
        .unwrap_or_else(|e| panic!("cannot start a TLS redis-server: {e}"));
    let sim = sim_origin(100, Duration::ZERO).await;
    let app = start_proxy(&profile_config(
        &sim.officer_url(),
        &format!(
            "[tiers.redis]\nurl = \"{}\"\ntls_ca_file = \"{}\"\ntimeout = \"2s\"\nconnect_timeout = \"2s\"\nbreaker_failures = 2\nbreaker_cooldown = \"1h\"\n",
            redis.url(),
            other.ca_pem_path().display()
        ),
    ))
    .await;
    let client = client();
    for i in 0..10 {
        let (status, _, _) = get(
            &client,
            &format!("http://{}/api/users/{}", app.main_addr(), user_id(i)),
        )
        .await;
        assert_eq!(
            status, 200,
            "a Redis that cannot be trusted costs no request"
        );
    }
    let s = stats(&client, app.admin_addr()).await;
    assert_eq!(s["tiers"]["redis"]["breaker_open"], json!(true), "{s}");
    assert_eq!(s["tiers"]["redis"]["hits"], json!(0));
    // Nothing was written to it either.
    let mut conn = redis::Client::build_with_tls(
        redis.url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(redis.ca_pem_path()).unwrap()),
        },
    )
    .unwrap()
    .get_multiplexed_async_connection()
    .await
    .unwrap();
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert_eq!(keys, 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_serves_the_tier_and_the_backplane() {
    let c = RedisCluster::start_tls()
        .await
        .unwrap_or_else(|e| panic!("cannot start a TLS Redis Cluster: {e}"));
    let ca = c
        .ca_pem_path()
        .expect("a TLS cluster has a CA")
        .to_path_buf();
    let sim: SimOrigin = sim_origin(1_000, Duration::ZERO).await;
    let nodes: Vec<String> = c.seeds().iter().map(|s| format!("{s:?}")).collect();
    let text = profile_config(
        &sim.officer_url(),
        &format!(
            "[tiers.redis]\nmode = \"cluster\"\nnodes = [{}]\ntls_ca_file = \"{}\"\nkey_prefix = \"pe:tls:\"\n\
             timeout = \"2s\"\nconnect_timeout = \"2s\"\n\n[backplane]\nchannel = \"pe:tls:cbp\"\n\n",
            nodes.join(", "),
            ca.display()
        ),
    );
    assert!(nodes.iter().all(|n| n.contains("rediss://")), "{nodes:?}");
    let a = start_proxy(&text).await;
    let b = start_proxy(&text).await;
    let client = client();
    wait_backplane(&client, a.admin_addr()).await;
    wait_backplane(&client, b.admin_addr()).await;
    let ids: Vec<String> = (0..300).map(user_id).collect();
    for id in &ids {
        assert_eq!(tier_of(&client, a.main_addr(), id).await, "origin");
    }
    let calls = sim.stats().origin_calls();
    for id in &ids {
        assert_eq!(tier_of(&client, b.main_addr(), id).await, "redis", "{id}");
    }
    assert_eq!(sim.stats().origin_calls(), calls, "0 origin calls");
    let x = &ids[3];
    let (v0, _) = served(&client, b.main_addr(), x).await;
    assert!(sim.update_user(x));
    purge(&client, a.admin_addr(), x).await;
    wait_until("B drops the invalidated id", || async {
        served(&client, b.main_addr(), x).await.0 > v0
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

//! The MongoDB snapshot tier against a real MongoDB-protocol server
//! (SecantusDB started by the test, or `MONGODB_URI`'s server) and real
//! proxies: a warm collection answers with no origin call and fills Redis
//! and memory on the way back; a server that dies is skipped by the breaker
//! and used again when it is back; removals are versioned tombstones, and a
//! load that an invalidation on another instance superseded cannot write
//! its old value back.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::time::Duration;

use http::StatusCode;
use mongodb::bson::{doc, Document};
use profile_edge::testkit::user_id;
use serde_json::json;
use support::*;

async fn snapshot(mongo: &MongoServer, id: &str) -> Option<Document> {
    mongo
        .client()
        .await
        .database(mongo.database())
        .collection::<Document>("snapshots")
        .find_one(doc! {"_id": id})
        .await
        .unwrap()
}

/// Memory and Redis empty, the snapshot collection warm: 100 ids answered
/// from it (`x-cache-tier: mongo`) with 0 origin calls, Redis and memory
/// filled on the way back, then memory hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_snapshot_collection_answers_without_the_origin() {
    let sim = sim_origin(200, Duration::ZERO).await;
    let redis = RedisServer::start().await;
    let mongo = MongoServer::start().await;
    let config = profile_config(
        &sim.officer_url(),
        &format!("{}{}", redis.tier_config(), mongo.tier_config()),
    );
    let c = client();
    let ids: Vec<String> = (0..100).map(user_id).collect();
    let filler = start_proxy(&config).await;
    let (status, _, _) = send(
        &c,
        http::Method::POST,
        &format!("http://{}/api/users/batch", filler.main_addr()),
        &[("content-type", "application/json")],
        json!({ "ids": ids }).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    filler.shutdown().await;
    let doc = snapshot(&mongo, &ids[7])
        .await
        .expect("a snapshot document");
    assert_eq!(doc.get_str("kind"), Ok("found"));
    assert!(doc.get_str("profile").unwrap().contains(&ids[7]));
    assert!(doc.get_datetime("expiresAt").is_ok() && doc.get_datetime("fetchedAt").is_ok());
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();

    let reader = start_proxy(&config).await;
    let calls = sim.stats().origin_calls();
    for id in &ids {
        assert_eq!(
            served(&c, reader.main_addr(), id).await,
            (1, "mongo".to_string()),
            "{id}"
        );
    }
    assert_eq!(sim.stats().origin_calls(), calls, "0 origin calls");
    for id in &ids {
        assert_eq!(served(&c, reader.main_addr(), id).await.1, "memory");
    }
    let keys: Vec<String> = ids.iter().map(|id| format!("pe:test:{id}")).collect();
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        values.iter().all(Option::is_some),
        "Redis filled from the snapshots"
    );
    let s = admin_stats(&c, reader.admin_addr()).await;
    assert_eq!(s["tiers"]["mongo"]["hits"], json!(100), "{s}");
    // The TTL index is created in the background.
    let coll = mongo
        .client()
        .await
        .database(mongo.database())
        .collection::<Document>("snapshots");
    wait_until("the TTL index exists", || {
        let coll = coll.clone();
        async move {
            coll.list_index_names()
                .await
                .is_ok_and(|names| names.iter().any(|n| n == "expiresAt_ttl"))
        }
    })
    .await;
    reader.shutdown().await;
}

/// The server dies mid-test: lookups are still answered (from the
/// origin), the breaker opens; when the server is back the tier is used
/// again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_is_skipped_and_used_again_when_back() {
    let mut mongo = MongoServer::start().await;
    if !mongo.0.is_local() {
        eprintln!("MONGODB_URI is set: this test needs a server it can stop; skipped");
        return;
    }
    let sim = sim_origin(200, Duration::ZERO).await;
    let config = profile_config(&sim.officer_url(), &mongo.tier_config_fast());
    let c = client();
    let filler = start_proxy(&config).await;
    for i in 0..50 {
        served(&c, filler.main_addr(), &user_id(i)).await;
    }
    filler.shutdown().await;
    let app = start_proxy(&config).await;
    mongo.0.kill();
    for i in 100..120 {
        assert_eq!(served(&c, app.main_addr(), &user_id(i)).await.1, "origin");
    }
    assert_eq!(
        admin_stats(&c, app.admin_addr()).await["tiers"]["mongo"]["breaker_open"],
        json!(true)
    );
    mongo.0.restart().await.unwrap();
    // Ids the snapshot collection holds and this instance never read.
    let mut next = 0;
    wait_until("the tier answers again", || {
        next += 1;
        let id = user_id(next % 50);
        let c = c.clone();
        let main = app.main_addr();
        async move { served(&c, main, &id).await.1 == "mongo" }
    })
    .await;
    assert_eq!(
        admin_stats(&c, app.admin_addr()).await["tiers"]["mongo"]["breaker_open"],
        json!(false)
    );
    app.shutdown().await;
}

/// An invalidation leaves a tombstone with the next version; the reload
/// after it writes the new value under that version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_is_a_versioned_tombstone() {
    let sim = sim_origin(10, Duration::ZERO).await;
    let mongo = MongoServer::start().await;
    let app = start_proxy(&profile_config(&sim.officer_url(), &mongo.tier_config())).await;
    let c = client();
    let id = user_id(3);
    served(&c, app.main_addr(), &id).await;
    assert_eq!(
        snapshot(&mongo, &id).await.unwrap().get_i64("version"),
        Ok(0)
    );
    assert!(sim.update_user(&id));
    purge(&c, app.admin_addr(), &id).await;
    let tomb = snapshot(&mongo, &id).await.unwrap();
    assert_eq!(
        (tomb.get_str("kind"), tomb.get_i64("version")),
        (Ok("tombstone"), Ok(1))
    );
    assert!(tomb.get("profile").is_none());
    assert_eq!(
        served(&c, app.main_addr(), &id).await,
        (2, "origin".to_string())
    );
    let doc = snapshot(&mongo, &id).await.unwrap();
    assert_eq!(
        (doc.get_str("kind"), doc.get_i64("version")),
        (Ok("found"), Ok(1))
    );
    assert!(doc.get_str("profile").unwrap().contains("\"version\":2"));
    app.shutdown().await;
}

/// Two instances over one snapshot collection (no Redis): a load on B is
/// held at the origin with the old version when the profile changes and A
/// invalidates it. B's write is refused by the document's version; B loads
/// again, and the collection ends with the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_load_on_another_instance_cannot_write_back() {
    let sim = sim_origin(10, Duration::ZERO).await;
    let mongo = MongoServer::start().await;
    let config = profile_config(&sim.officer_url(), &mongo.tier_config());
    let a = start_proxy(&config).await;
    let b = start_proxy(&config).await;
    let id = user_id(4);
    sim.hold_officer();
    let held = {
        let main = b.main_addr();
        let id = id.clone();
        tokio::spawn(async move { served(&client(), main, &id).await })
    };
    wait_until("B's load is at the origin", || async {
        sim.stats().held.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    assert!(sim.update_user(&id));
    let c = client();
    purge(&c, a.admin_addr(), &id).await;
    sim.release_officer();
    let (version, _) = held.await.unwrap();
    assert_eq!(version, 2, "B's waiter got the new value");
    let doc = snapshot(&mongo, &id).await.unwrap();
    assert!(
        doc.get_str("profile").unwrap().contains("\"version\":2"),
        "{doc}"
    );
    assert_eq!(doc.get_i64("version"), Ok(1));
    a.shutdown().await;
    b.shutdown().await;
}

/// `profile-edge check` names the Mongo keys without connecting, and never
/// prints the URI's password.
#[test]
fn check_names_mongo_keys_without_connecting() {
    let err = check_names(
        "[tiers.mongo]\nuri = \"mongo://user:hunter2@h\"\ndatabase = \"a.b\"\ncollection = \"system.x\"\ntimeout = \"0s\"\n",
        &[
            "tiers.mongo.uri",
            "tiers.mongo.database",
            "tiers.mongo.collection",
            "tiers.mongo.timeout",
        ],
    );
    assert!(!err.contains("hunter2"), "the password leaked:\n{err}");
    // A well-formed section passes with no server anywhere.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    std::fs::write(
        &path,
        config_text(
            "http://127.0.0.1:9",
            "[tiers.mongo]\nuri = \"mongodb://127.0.0.1:1/?directConnection=true\"\n",
        ),
    )
    .unwrap();
    check_ok(&path);
}

/// Start-up with no MongoDB server at all stops nothing: the proxy starts
/// and is ready, lookups are answered by the origin, the tier's breaker
/// opens, and a change stream on that server waits in `retrying`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_without_a_server_stops_nothing() {
    let sim = sim_origin(20, Duration::ZERO).await;
    let uri = format!("mongodb://127.0.0.1:{}/?directConnection=true", free_port());
    let config = profile_config(
        &sim.officer_url(),
        &format!(
            "[tiers.mongo]\nuri = \"{uri}\"\ntimeout = \"200ms\"\nconnect_timeout = \"200ms\"\nbreaker_failures = 2\n\n\
             [[change_streams]]\nname = \"users\"\ndatabase = \"officer\"\ncollection = \"users\"\nkind = \"profile-updates\"\nconnect_timeout = \"200ms\"\n"
        ),
    );
    let app = start_proxy(&config).await;
    let c = client();
    let (status, _, _) = get(&c, &format!("http://{}/readyz", app.admin_addr())).await;
    assert_eq!(status, StatusCode::OK);
    for i in 0..5 {
        assert_eq!(
            served(&c, app.main_addr(), &user_id(i)).await,
            (1, "origin".to_string())
        );
    }
    let s = admin_stats(&c, app.admin_addr()).await;
    assert_eq!(s["tiers"]["mongo"]["breaker_open"], json!(true), "{s}");
    wait_until("the stream waits for its server", || {
        let c = c.clone();
        let admin = app.admin_addr();
        async move { admin_stats(&c, admin).await["change_streams"][0]["role"] == "retrying" }
    })
    .await;
    app.shutdown().await;
}

//! The backplane across three real proxy instances sharing one real
//! `redis-server`: events on one instance reach the memory of the others,
//! a dropped subscription replays or clears, races between loads and
//! invalidations on different instances write no old value back, Redis
//! dying under load fails no request, and garbage on the log is counted.
//! Verdicts are counts (stale reads, failed requests, old values); the
//! waits are gates on the instances' own stats and on the log's state.
//! Time is used only to shape load: the gap test paces its appends so that
//! the log ages past `catch_up`, and the race test offsets its events by
//! random milliseconds to land them mid-load; no verdict depends on either.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use profile_edge::testkit::{user_id, SimOrigin};
use profile_edge::App;
use rand::Rng;
use serde_json::{json, Value};
use support::*;
use tokio::net::{TcpListener, TcpStream};

const CHANNEL: &str = "pe:test:bp";

/// Config for one instance: the sim as Officer, the shared Redis tier, the
/// backplane (on `backplane_url` when given) and `extra`.
fn instance_config(sim: &SimOrigin, redis: &RedisServer, backplane: &str, extra: &str) -> String {
    profile_config(
        &sim.officer_url(),
        &format!(
            "{}[backplane]\nchannel = \"{CHANNEL}\"\n{backplane}\n\n{extra}",
            redis.tier_config()
        ),
    )
}

struct Fleet {
    apps: Vec<App>,
    client: HttpClient,
}

impl Fleet {
    async fn start(configs: &[String]) -> Fleet {
        let mut apps = Vec::new();
        for c in configs {
            apps.push(start_proxy(c).await);
        }
        let fleet = Fleet {
            apps,
            client: client(),
        };
        for i in 0..fleet.apps.len() {
            fleet.wait_connected(i).await;
        }
        fleet
    }

    fn admin(&self, i: usize) -> SocketAddr {
        self.apps[i].admin_addr()
    }

    async fn backplane(&self, i: usize) -> Value {
        admin_stats(&self.client, self.admin(i)).await["backplane"].clone()
    }

    async fn stat(&self, i: usize, field: &str) -> u64 {
        self.backplane(i).await[field]
            .as_u64()
            .unwrap_or_else(|| panic!("backplane.{field} missing"))
    }

    async fn wait_connected(&self, i: usize) {
        wait_until(&format!("instance {i} backplane connected"), || async {
            self.backplane(i).await["connected"] == json!(true)
        })
        .await;
    }

    /// Waits until instance `i` has applied at least `n` messages.
    async fn wait_received(&self, i: usize, n: u64) {
        wait_until(&format!("instance {i} applies {n} messages"), || async {
            self.stat(i, "messages_received").await >= n
        })
        .await;
    }

    /// The profile version instance `i` serves for `id`, and its tier.
    async fn served(&self, i: usize, id: &str) -> (u64, String) {
        served(&self.client, self.apps[i].main_addr(), id).await
    }

    /// Sends a profile event to instance `i`.
    async fn event(&self, i: usize, id: &str) {
        let body = json!({"type": "profile-updated", "userId": id}).to_string();
        let (status, _, answer) = send(
            &self.client,
            Method::POST,
            &format!("http://{}/admin/events", self.admin(i)),
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    async fn shutdown(self) {
        for app in self.apps {
            app.shutdown().await;
        }
    }
}

/// Every profile update is followed by an event on one instance (taking
/// turns); once the two others have applied its message, none of the
/// three may serve an older version again. Readers loop on all three
/// through 200 updates and count stale reads: a read that started after
/// that point and got an older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_instance_serves_an_old_version_once_the_event_has_propagated() {
    let sim = sim_origin(100, Duration::ZERO).await;
    let redis = RedisServer::start().await;
    let config = instance_config(&sim, &redis, "", "");
    let fleet = Arc::new(Fleet::start(&[config.clone(), config.clone(), config]).await);
    let ids: Vec<String> = (0..10).map(user_id).collect();
    for i in 0..3 {
        for id in &ids {
            assert_eq!(fleet.served(i, id).await.0, 1);
        }
    }
    // The version no instance may serve below, per id, from the moment the
    // update's message has been applied everywhere.
    let floor: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let stale = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for r in 0..6 {
        let (fleet, ids, floor, stop, stale, reads) = (
            fleet.clone(),
            ids.clone(),
            floor.clone(),
            stop.clone(),
            stale.clone(),
            reads.clone(),
        );
        readers.push(tokio::spawn(async move {
            let c = client();
            let mut k = r;
            while !stop.load(Ordering::SeqCst) {
                let id = &ids[k % ids.len()];
                let instance = k % 3;
                k += 1;
                let want = floor.lock().unwrap().get(id).copied().unwrap_or(0);
                let (v, _) = served(&c, fleet.apps[instance].main_addr(), id).await;
                if v < want {
                    stale.fetch_add(1, Ordering::SeqCst);
                    eprintln!(
                        "stale: instance {instance} served {id} v{v} after v{want} propagated"
                    );
                }
                reads.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let mut expected = [0u64; 3];
    for u in 0..200 {
        let id = &ids[u % ids.len()];
        let sender = u % 3;
        assert!(sim.update_user(id));
        let version = sim.profile(id).unwrap().version;
        fleet.event(sender, id).await;
        for (i, e) in expected.iter_mut().enumerate() {
            if i != sender {
                *e += 1;
                fleet.wait_received(i, *e).await;
            }
        }
        floor.lock().unwrap().insert(id.clone(), version);
        // The others serve the new version on their next request.
        for i in (0..3).filter(|&i| i != sender) {
            assert_eq!(
                fleet.served(i, id).await.0,
                version,
                "instance {i}, update {u}"
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    assert!(reads.load(Ordering::SeqCst) > 0, "the readers ran");
    assert_eq!(
        stale.load(Ordering::SeqCst),
        0,
        "stale reads after propagation"
    );
    for i in 0..3 {
        let bp = fleet.backplane(i).await;
        assert_eq!(
            bp["messages_sent"].as_u64(),
            Some(200 / 3 + u64::from(i < 200 % 3))
        );
        assert_eq!(
            bp["messages_ignored"]["own"], bp["messages_sent"],
            "own messages skipped"
        );
        assert_eq!(bp["memory_clears"], json!(0));
        let admin = fleet.admin(i);
        assert_eq!(
            metric(&fleet.client, admin, "profile_edge_backplane_connected").await,
            1.0
        );
        assert_eq!(
            metric(
                &fleet.client,
                admin,
                "profile_edge_invalidation_propagation_seconds_count"
            )
            .await,
            expected[i] as f64
        );
    }
    Arc::try_unwrap(fleet)
        .ok()
        .expect("readers done")
        .shutdown()
        .await;
}

/// `refresh` (the invalidate-profile policy's answer to profile-updated)
/// warms the other instances too: they re-read the new value from Redis,
/// where the first instance wrote it, without a request and without an
/// origin call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_warms_every_instance_from_the_shared_tier() {
    let sim = sim_origin(10, Duration::ZERO).await;
    let redis = RedisServer::start().await;
    let wasm = repo_root().join("plugins/dist/invalidate_profile.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: run `bash plugins/build.sh`",
        wasm.display()
    );
    let extra = format!(
        "[plugins.inv]\npath = \"{}\"\ndeadline = \"1s\"\n\n[invalidation]\nplugin = \"inv\"\n",
        wasm.display()
    );
    let config = instance_config(&sim, &redis, "", &extra);
    let fleet = Fleet::start(&[config.clone(), config.clone(), config]).await;
    let id = user_id(3);
    for i in 0..3 {
        fleet.served(i, &id).await;
    }
    let calls = sim.stats().origin_calls();
    assert!(sim.update_user(&id));
    fleet.event(0, &id).await;
    assert_eq!(
        sim.stats().origin_calls(),
        calls + 1,
        "instance 0 reloaded it"
    );
    for i in 1..3 {
        fleet.wait_received(i, 1).await;
        // Warmed in the background: wait for memory to hold it, then read.
        wait_until("the refresh warms memory", || async {
            fleet.served(i, &id).await.1 == "memory"
        })
        .await;
        assert_eq!(fleet.served(i, &id).await, (2, "memory".to_string()));
    }
    assert_eq!(
        sim.stats().origin_calls(),
        calls + 1,
        "the others warmed from Redis"
    );
    fleet.shutdown().await;
}

/// The subscriber's connection killed in Redis while updates continue: it
/// reconnects, replays what it missed, and serves no stale value; its
/// memory is not cleared (the gap was within `catch_up`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_replays_what_it_missed() {
    let sim = sim_origin(100, Duration::ZERO).await;
    let redis = RedisServer::start().await;
    let config = instance_config(&sim, &redis, "catch_up = \"10m\"", "");
    let fleet = Fleet::start(&[config.clone(), config]).await;
    let ids: Vec<String> = (0..20).map(user_id).collect();
    for id in &ids {
        fleet.served(1, id).await;
    }
    let instance = fleet.backplane(1).await["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut conn = redis.conn().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    let client_id = list
        .lines()
        .find(|l| l.contains(&format!("name=pe-backplane:{instance}")))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .unwrap_or_else(|| panic!("no backplane connection of {instance} in:\n{list}"))
        .to_string();
    let reconnects = fleet.stat(1, "reconnects").await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&client_id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    // Updates go on while instance 1 reconnects, and after.
    let mut updated = 0;
    while fleet.stat(1, "reconnects").await == reconnects || updated < 5 {
        let id = &ids[updated % ids.len()];
        assert!(sim.update_user(id));
        fleet.event(0, id).await;
        updated += 1;
        assert!(updated < 10_000, "instance 1 never reconnected");
    }
    // Two events for one id may leave as one message (the newest wins in
    // the outbox), so count what instance 0 appended.
    wait_until("instance 0 has appended everything", || async {
        fleet.stat(0, "queued").await == 0
    })
    .await;
    let sent = fleet.stat(0, "messages_sent").await;
    fleet.wait_received(1, sent).await;
    for id in &ids {
        let want = sim.profile(id).unwrap().version;
        assert_eq!(
            fleet.served(1, id).await.0,
            want,
            "{id} after the reconnect"
        );
    }
    let bp = fleet.backplane(1).await;
    assert_eq!(bp["memory_clears"], json!(0), "{bp}");
    assert!(bp["replays"].as_u64().unwrap() >= 1, "{bp}");
    fleet.shutdown().await;
}

/// A TCP relay the test can cut: while cut, open connections are closed
/// and new ones refused; the network between an instance and Redis.
struct Relay {
    addr: SocketAddr,
    up: Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(tokio::sync::watch::channel(true).0);
        let u = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !*u.borrow() {
                    continue; // dropped: refused
                }
                let mut down = u.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Relay { addr, up, task }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The network between instance 1 and Redis is cut while instance 0 keeps
/// invalidating, until the log has trimmed messages instance 1 never read
/// (`catch_up` is short here). When the network is back, instance 1 cannot
/// replay them: it clears its memory (counted) and serves no stale value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_longer_than_catch_up_clears_memory() {
    let sim = sim_origin(100, Duration::ZERO).await;
    let redis = RedisServer::start().await;
    let relay = Relay::start(harness_addr(redis.port())).await;
    let fast = "catch_up = \"300ms\"";
    let a = instance_config(&sim, &redis, fast, "");
    let b = instance_config(
        &sim,
        &redis,
        &format!("{fast}\nurl = \"{}\"", relay.url()),
        "",
    );
    let fleet = Fleet::start(&[a, b]).await;
    let ids: Vec<String> = (0..20).map(user_id).collect();
    for id in &ids {
        fleet.served(1, id).await;
    }
    relay.cut();
    wait_until("instance 1 notices the cut", || async {
        fleet.backplane(1).await["connected"] == json!(false)
    })
    .await;
    let mut conn = redis.conn().await;
    // The first message instance 1 misses (published asynchronously: wait
    // for it on the log)...
    let added = |info: HashMap<String, String>| {
        info.get("entries-added")
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let before = added(xinfo(&mut conn).await);
    assert!(sim.update_user(&ids[0]));
    fleet.event(0, &ids[0]).await;
    wait_until("the message is on the log", || {
        let conn = conn.clone();
        async move {
            let mut conn = conn;
            added(xinfo(&mut conn).await) > before
        }
    })
    .await;
    let first_missed = parse_id(&xinfo(&mut conn).await["last-generated-id"]);
    // ...and more, paced so that time passes, until the log has trimmed it.
    let mut k = 1;
    loop {
        let first = xinfo(&mut conn)
            .await
            .get("first-entry-id")
            .map(|t| parse_id(t));
        if first.is_some_and(|f| f > first_missed) {
            break;
        }
        let id = &ids[k % ids.len()];
        assert!(sim.update_user(id));
        fleet.event(0, id).await;
        k += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.restore();
    fleet.wait_connected(1).await;
    let bp = fleet.backplane(1).await;
    assert_eq!(bp["memory_clears"], json!(1), "{bp}");
    assert_eq!(
        metric(
            &fleet.client,
            fleet.admin(1),
            "profile_edge_backplane_memory_clears_total"
        )
        .await,
        1.0
    );
    for id in &ids {
        let want = sim.profile(id).unwrap().version;
        assert_eq!(fleet.served(1, id).await.0, want, "{id} after the clear");
    }
    fleet.shutdown().await;
}

fn harness_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn log_key() -> String {
    format!("{CHANNEL}:log")
}

/// `XINFO STREAM` of the log as text fields; empty before the first append.
async fn xinfo(conn: &mut redis::aio::MultiplexedConnection) -> HashMap<String, String> {
    let v: redis::Value = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(log_key())
        .query_async(conn)
        .await
    {
        Ok(v) => v,
        Err(e) if e.to_string().contains("no such key") => return HashMap::new(),
        Err(e) => panic!("XINFO STREAM: {e}"),
    };
    let redis::Value::Array(items) = v else {
        panic!("XINFO STREAM: {v:?}")
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(n) => Some(n.to_string()),
        _ => None,
    };
    let mut out: HashMap<String, String> = items
        .chunks_exact(2)
        .filter_map(|kv| Some((text(&kv[0])?, text(&kv[1])?)))
        .collect();
    // `first-entry` is [id, fields]: keep its id.
    if let Some(first) = items.chunks_exact(2).find_map(|kv| match (&kv[0], &kv[1]) {
        (k, redis::Value::Array(e)) if text(k).as_deref() == Some("first-entry") => {
            e.first().and_then(text)
        }
        _ => None,
    }) {
        out.insert("first-entry-id".into(), first);
    }
    out
}

fn parse_id(text: &str) -> (u64, u64) {
    let (ms, seq) = text.split_once('-').expect("stream id");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// 10 000 races across three instances: a cold load of a fresh id on one
/// instance while the profile changes and an event for it lands on another
/// (random order and offsets, an origin slow enough that events land
/// mid-load). Once the messages are applied everywhere, no tier of any
/// instance, nor Redis, holds the old version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_races_write_no_old_value_back() {
    const RACES: usize = 10_000;
    const AT_ONCE: usize = 50;
    let sim = Arc::new(sim_origin(RACES, Duration::from_millis(3)).await);
    let redis = RedisServer::start().await;
    let config = instance_config(&sim, &redis, "", "");
    let fleet = Arc::new(Fleet::start(&[config.clone(), config.clone(), config]).await);
    let sent = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let mut rng = rand::rng();
    let plans: Vec<(usize, usize, u64, bool)> = (0..RACES)
        .map(|_| {
            let load_on = rng.random_range(0..3);
            let event_on = (load_on + rng.random_range(1..3)) % 3;
            (
                load_on,
                event_on,
                rng.random_range(0..5),
                rng.random_bool(0.8),
            )
        })
        .collect();
    for chunk in (0..RACES).collect::<Vec<_>>().chunks(AT_ONCE) {
        let mut races = Vec::new();
        for &n in chunk {
            let (load_on, event_on, offset_ms, load_first) = plans[n];
            let (fleet, sent, sim) = (fleet.clone(), sent.clone(), sim.clone());
            races.push(tokio::spawn(async move {
                let id = user_id(n);
                let c = client();
                let main = fleet.apps[load_on].main_addr();
                let load = async {
                    served(&c, main, &id).await;
                };
                // The sim reads its answer, then waits 3 ms: an update in
                // that time makes the load return the old version, and the
                // event lands while it is in flight.
                let event = async {
                    tokio::time::sleep(Duration::from_millis(offset_ms)).await;
                    assert!(sim.update_user(&id));
                    fleet.event(event_on, &id).await;
                    sent[event_on].fetch_add(1, Ordering::SeqCst);
                };
                if load_first {
                    tokio::join!(load, event);
                } else {
                    tokio::join!(event, load);
                }
            }));
        }
        for r in races {
            r.await.unwrap();
        }
    }
    // Every message applied on every other instance.
    let total: u64 = sent.iter().map(|s| s.load(Ordering::SeqCst)).sum();
    for i in 0..3 {
        fleet
            .wait_received(i, total - sent[i].load(Ordering::SeqCst))
            .await;
    }
    // No tier anywhere holds version 1 of an id: Redis directly...
    let mut conn = redis.conn().await;
    let mut old_in_redis = 0;
    for chunk in (0..RACES).collect::<Vec<_>>().chunks(500) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|&n| format!("pe:test:{}", user_id(n)))
            .collect();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
        for v in values.into_iter().flatten() {
            if let Some(body) = found_body(&v) {
                if json(body)["version"].as_u64() != Some(2) {
                    old_in_redis += 1;
                }
            }
        }
    }
    // ...and every instance's memory and tiers, through batch lookups.
    let mut old_served = 0;
    for i in 0..3 {
        for chunk in (0..RACES).collect::<Vec<_>>().chunks(500) {
            let ids: Vec<String> = chunk.iter().map(|&n| user_id(n)).collect();
            let (status, _, body) = send(
                &fleet.client,
                Method::POST,
                &format!("http://{}/api/users/batch", fleet.apps[i].main_addr()),
                &[("content-type", "application/json")],
                json!({ "ids": ids }).to_string(),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            for user in json(&body)["users"].as_array().expect("users") {
                if user["version"].as_u64() != Some(2) {
                    old_served += 1;
                }
            }
        }
    }
    assert_eq!(old_in_redis, 0, "old values written back to Redis");
    assert_eq!(old_served, 0, "old values served after propagation");
    Arc::try_unwrap(fleet)
        .ok()
        .expect("races done")
        .shutdown()
        .await;
}

/// The profile JSON of a stored PE2 value, when it holds one.
fn found_body(v: &[u8]) -> Option<&[u8]> {
    const HEADER: usize = 3 + 1 + 24 + 32;
    (v.len() > HEADER && &v[..3] == b"PE2" && v[3] == 1).then(|| &v[HEADER..])
}

/// Redis killed and restarted while clients loop on warm and cold ids on
/// all three instances: no request fails; when Redis is back every
/// subscriber reconnects (clearing memory, since Redis lost the log) and
/// invalidations propagate again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarting_under_load_fails_no_request() {
    let sim = sim_origin(2000, Duration::ZERO).await;
    let mut redis = RedisServer::start().await;
    let config = profile_config(
        &sim.officer_url(),
        &format!(
            "{}[backplane]\nchannel = \"{CHANNEL}\"\n",
            redis.tier_config_fast()
        ),
    );
    let fleet = Arc::new(Fleet::start(&[config.clone(), config.clone(), config]).await);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for w in 0..6usize {
        let (fleet, stop, failed, done) =
            (fleet.clone(), stop.clone(), failed.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut k = w;
            while !stop.load(Ordering::SeqCst) {
                // Even: a warm id; odd: a cold one.
                let id = if k % 2 == 0 {
                    user_id(k % 10)
                } else {
                    user_id(10 + k % 1990)
                };
                let url = format!("http://{}/api/users/{id}", fleet.apps[k % 3].main_addr());
                let (status, _, _) = get(&c, &url).await;
                if status != StatusCode::OK {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
                k += 7;
            }
        }));
    }
    let at = |n: u64| {
        let done = done.clone();
        async move {
            let target = done.load(Ordering::SeqCst) + n;
            wait_until("clients make progress", || async {
                done.load(Ordering::SeqCst) >= target
            })
            .await;
        }
    };
    at(300).await;
    redis.kill();
    for i in 0..3 {
        wait_until("backplane notices", || async {
            fleet.backplane(i).await["connected"] == json!(false)
        })
        .await;
    }
    at(300).await;
    redis.restart().await;
    for i in 0..3 {
        fleet.wait_connected(i).await;
    }
    at(300).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed client requests");
    // Propagation works again once every instance uses Redis again. Until
    // an instance's Redis breaker has closed, a removal it makes waits in
    // the tier's retry queue, and the others can still read the old value
    // from Redis (README "Cross-instance coherence"); lookups of ids not
    // in memory drive the breaker's probes.
    let next = AtomicU64::new(0);
    for i in 0..3 {
        wait_until(&format!("instance {i} uses Redis again"), || async {
            let n = next.fetch_add(1, Ordering::SeqCst) as usize;
            fleet.served(i, &user_id(10 + n % 1990)).await;
            admin_stats(&fleet.client, fleet.admin(i)).await["tiers"]["redis"]["breaker_open"]
                == json!(false)
        })
        .await;
    }
    let id = user_id(1);
    for i in 0..3 {
        fleet.served(i, &id).await;
    }
    let before: Vec<u64> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(fleet.stat(i, "messages_received").await);
        }
        v
    };
    assert!(sim.update_user(&id));
    let version = sim.profile(&id).unwrap().version;
    fleet.event(0, &id).await;
    for i in 1..3 {
        fleet.wait_received(i, before[i] + 1).await;
        assert_eq!(fleet.served(i, &id).await.0, version);
    }
    for i in 0..3 {
        let clears = fleet.stat(i, "memory_clears").await;
        assert!(
            clears >= 1,
            "instance {i}: Redis lost the log, memory must be cleared"
        );
    }
    Arc::try_unwrap(fleet)
        .ok()
        .expect("clients done")
        .shutdown()
        .await;
}

/// Entries on the log that are not ours, or ours but malformed, are
/// counted and ignored; the next real message still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_log_is_counted_and_ignored() {
    let sim = sim_origin(10, Duration::ZERO).await;
    let redis = RedisServer::start().await;
    let config = instance_config(&sim, &redis, "", "");
    let fleet = Fleet::start(&[config.clone(), config]).await;
    let mut conn = redis.conn().await;
    let garbage: [&[(&str, &[u8])]; 4] = [
        &[("hello", b"world")],
        &[("pe", b"1"), ("kind", b"explode"), ("id", b"x")],
        &[
            ("pe", b"1"),
            ("from", b"x"),
            ("kind", b"invalidate"),
            ("id", &[0xff, 0x00]),
            ("version", b"1"),
            ("at", b"1"),
        ],
        &[
            ("pe", b"1"),
            ("from", b"x"),
            ("kind", b"invalidate"),
            ("id", b"../../etc"),
            ("version", b"1"),
            ("at", b"1"),
        ],
    ];
    for fields in garbage {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(log_key()).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        let _: String = cmd.query_async(&mut conn).await.unwrap();
    }
    wait_until("garbage counted", || async {
        let bp = fleet.backplane(1).await;
        bp["messages_ignored"]["malformed"] == json!(3)
            && bp["messages_ignored"]["foreign"] == json!(1)
    })
    .await;
    assert_eq!(
        metric(
            &fleet.client,
            fleet.admin(1),
            "profile_edge_backplane_messages_total{direction=\"received\",outcome=\"malformed\"}"
        )
        .await,
        3.0
    );
    let id = user_id(2);
    fleet.served(1, &id).await;
    assert!(sim.update_user(&id));
    fleet.event(0, &id).await;
    fleet.wait_received(1, 1).await;
    assert_eq!(fleet.served(1, &id).await.0, 2);
    assert_eq!(fleet.backplane(1).await["connected"], json!(true));
    fleet.shutdown().await;
}

/// The network between instance 0's backplane and Redis is cut (its Redis
/// tier is not): its events still tombstone Redis and clear its own
/// memory, and their messages wait in the outbox, the newest per id. When
/// the network is back they are sent, once per id, and instance 1 (which
/// never lost its connection) applies them without clearing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_redis_is_unreachable_are_sent_later() {
    let sim = sim_origin(10, Duration::ZERO).await;
    let redis = RedisServer::start().await;
    let relay = Relay::start(harness_addr(redis.port())).await;
    let a = instance_config(&sim, &redis, &format!("url = \"{}\"", relay.url()), "");
    let b = instance_config(&sim, &redis, "", "");
    let fleet = Fleet::start(&[a, b]).await;
    let (x, y) = (user_id(1), user_id(2));
    for id in [&x, &y] {
        fleet.served(1, id).await;
    }
    relay.cut();
    // x changes twice, y once: three events, two ids.
    for id in [&x, &x, &y] {
        assert!(sim.update_user(id));
        fleet.event(0, id).await;
    }
    wait_until("instance 0 has tried and failed to publish", || async {
        fleet.stat(0, "send_failures").await >= 1
    })
    .await;
    // Newest per id: three events, two messages waiting (a send in progress
    // holds them too, so the count settles at 2 between attempts and during).
    wait_until("two messages queued", || async {
        fleet.stat(0, "queued").await == 2
    })
    .await;
    assert_eq!(
        fleet.served(1, &x).await.0,
        1,
        "instance 1 has not heard yet"
    );
    relay.restore();
    fleet.wait_received(1, 2).await;
    assert_eq!(fleet.served(1, &x).await.0, 3);
    assert_eq!(fleet.served(1, &y).await.0, 2);
    let (a, b) = (fleet.backplane(0).await, fleet.backplane(1).await);
    assert_eq!(
        (a["messages_sent"].as_u64(), a["queued"].as_u64()),
        (Some(2), Some(0)),
        "{a}"
    );
    assert_eq!(b["memory_clears"], json!(0), "{b}");
    assert_eq!(b["messages_received"], json!(2), "{b}");
    fleet.shutdown().await;
}

/// With `profiles.version_field`, the Redis tier's write script refuses a
/// value of a lower origin order than the one it holds; without it, the
/// write goes through. The held value is planted stale, so that the proxy
/// goes to the origin (version 1) and tries to write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keeps_a_newer_origin_value_over_an_older_fill() {
    use profile_edge::tier::codec::{decode, encode, Record};
    use profile_edge::tier::Entry;
    let sim = sim_origin(10, Duration::ZERO).await;
    let redis = RedisServer::start().await;
    let mut conn = redis.conn().await;
    for (field, kept) in [("version_field = \"version\"\n", true), ("", false)] {
        let app = start_proxy(&profile_config(
            &sim.officer_url(),
            &format!(
                "[profiles]\nid_pattern = \"^[0-9a-f-]{{1,64}}$\"\n{field}\n{}",
                redis.tier_config()
            ),
        ))
        .await;
        let id = user_id(5);
        let key = format!("pe:test:{id}");
        let now = profile_edge::tier::now_ms();
        let planted = Entry {
            body: Some(bytes::Bytes::from(format!(
                "{{\"id\":\"{id}\",\"version\":9}}"
            ))),
            fetched_at: now - 120_000,
            fresh_until: now - 60_000,
            stale_until: now + 3_600_000,
            version: 0,
            order: 9,
        };
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(encode(&planted))
            .query_async(&mut conn)
            .await
            .unwrap();
        let (v, tier) = served(&client(), app.main_addr(), &id).await;
        assert_eq!(
            (v, tier.as_str()),
            (1, "origin"),
            "the origin's answer is served"
        );
        let raw: Vec<u8> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let Some(Record::Value(held)) = decode(&raw) else {
            panic!("not a value: {raw:?}")
        };
        let held_version = json(held.body.as_deref().unwrap())["version"].as_u64();
        if kept {
            assert_eq!(
                (held_version, held.order),
                (Some(9), 9),
                "the newer value stays"
            );
        } else {
            assert_eq!(held_version, Some(1), "no order: the fill replaces it");
        }
        app.shutdown().await;
    }
}

/// `[backplane]` added by a reload starts it (tasks running, connected),
/// and removed by a reload stops it (tasks gone, stats say disabled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_the_backplane_on_and_off() {
    let sim = sim_origin(10, Duration::ZERO).await;
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profile-edge.toml");
    let without = profile_config(&sim.officer_url(), &redis.tier_config());
    let with = instance_config(&sim, &redis, "", "");
    std::fs::write(&path, &without).unwrap();
    let app = start_proxy_from_file(&path).await;
    let fleet = Fleet {
        apps: vec![app],
        client: client(),
    };
    let backplane_tasks = |app: &App| {
        app.state()
            .tasks
            .running_names()
            .into_iter()
            .filter(|n| n.starts_with("backplane"))
            .count()
    };
    assert_eq!(fleet.backplane(0).await["enabled"], json!(false));
    assert_eq!(backplane_tasks(&fleet.apps[0]), 0);
    let reload = format!("http://{}/admin/reload", fleet.admin(0));
    for (text, on) in [(&with, true), (&without, false)] {
        std::fs::write(&path, text).unwrap();
        let (status, _, body) = send(&fleet.client, Method::POST, &reload, &[], "").await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        if on {
            fleet.wait_connected(0).await;
            assert_eq!(backplane_tasks(&fleet.apps[0]), 2);
        } else {
            wait_until("the backplane tasks stop", || async {
                backplane_tasks(&fleet.apps[0]) == 0
            })
            .await;
            assert_eq!(fleet.backplane(0).await["enabled"], json!(false));
            assert_eq!(
                metric(
                    &fleet.client,
                    fleet.admin(0),
                    "profile_edge_backplane_connected"
                )
                .await,
                0.0
            );
        }
    }
    fleet.shutdown().await;
}

/// `profile-edge check` names the backplane's keys in its errors.
#[test]
fn check_names_backplane_keys() {
    check_names(
        "[backplane]\ncatch_up = \"0s\"\nchannel = \"\"\n",
        &["backplane.url", "backplane.catch_up", "backplane.channel"],
    );
}

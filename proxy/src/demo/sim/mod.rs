//! Simulated origins: an in-process Officer API and Posts API served over
//! real loopback HTTP (HTTP/1.1 and h2c).
//!
//! This module is not part of the proxy's request path. It exists so that
//! `profile-edge demo`, the integration tests and the benchmarks have an
//! origin to talk to that is deterministic, has configurable latency, can be
//! switched into failure modes at runtime, and counts every call it receives
//! (tests assert on those counters to prove caching and batching work).
//! The Posts API also streams new posts (`GET /api/posts/stream`, Server-Sent
//! Events) that tests and the demo push through [`SimOrigin`].

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Request bodies larger than this are refused; the only body we parse is a
/// batch of ids, which is far smaller.
const MAX_BODY_BYTES: usize = 1024 * 1024;
const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;
const MAX_FOLLOWERS: usize = 10;
const USER_POSTS_LIMIT: usize = 20;
/// Prime multiplier so that consecutive posts have distinct authors, which
/// is what makes a feed page fan out into many profile lookups.
const AUTHOR_STRIDE: u128 = 7919;
/// Long enough that any client under test times out first.
const HANG_FOR: Duration = Duration::from_secs(3600);
/// Frames of `/api/posts/stream` a slow reader may be behind before it
/// skips ahead; tests read each event before sending the next.
const STREAM_BUFFER: usize = 64;

/// Every answer's body: in memory, or the post stream.
type SimBody = UnsyncBoxBody<Bytes, Infallible>;

const LOCATIONS: [&str; 8] = [
    "Lisbon, Portugal",
    "Nairobi, Kenya",
    "Montreal, Canada",
    "Osaka, Japan",
    "Valparaiso, Chile",
    "Tallinn, Estonia",
    "Perth, Australia",
    "Accra, Ghana",
];

/// Settings for [`SimOrigin::start`].
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of synthetic users (ids from [`user_id`]`(0..users)`).
    pub users: usize,
    /// Number of synthetic posts (ids from [`post_id`]`(0..posts)`).
    pub posts: usize,
    /// Delay added to every request on both APIs.
    pub latency: Duration,
    pub officer_addr: SocketAddr,
    pub posts_addr: SocketAddr,
    /// What the posts of `GET /api/posts` carry in `userSnapshot`.
    pub post_snapshots: PostSnapshots,
}

/// The `userSnapshot` field of the posts a feed page serves. Real posts
/// often carry one already (stale, or `null`), which an enrichment policy
/// must replace; the default leaves the field out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PostSnapshots {
    #[default]
    Absent,
    /// `null`.
    Null,
    /// The author's snapshot as of version 0 (an older avatar URL).
    Stale,
}

impl Default for SimConfig {
    fn default() -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            users: 5000,
            posts: 2000,
            latency: Duration::from_millis(20),
            officer_addr: loopback,
            posts_addr: loopback,
            post_snapshots: PostSnapshots::Absent,
        }
    }
}

/// How the simulated Officer answers right now (switchable at runtime, for fail-safe tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimMode {
    Healthy,
    Error500,
    Hang,
}

impl SimMode {
    fn to_u8(self) -> u8 {
        match self {
            SimMode::Healthy => 0,
            SimMode::Error500 => 1,
            SimMode::Hang => 2,
        }
    }

    fn from_u8(v: u8) -> SimMode {
        match v {
            1 => SimMode::Error500,
            2 => SimMode::Hang,
            _ => SimMode::Healthy,
        }
    }
}

/// Call counters of the simulated origins.
#[derive(Default, Debug)]
pub struct SimStats {
    /// `GET /api/users/{id}`
    pub single_calls: AtomicU64,
    /// `POST /api/users/batch`
    pub batch_calls: AtomicU64,
    /// Total ids asked for in well-formed batch calls.
    pub batch_ids: AtomicU64,
    /// Largest batch seen.
    pub max_batch: AtomicU64,
    /// Any other Officer route (followers, health, unknown paths).
    pub other_officer_calls: AtomicU64,
    pub posts_calls: AtomicU64,
    /// Officer requests currently being served.
    pub in_flight: AtomicU64,
    /// High-water mark of `in_flight`, to check concurrency limits and
    /// request coalescing.
    pub max_in_flight: AtomicU64,
    /// Officer requests waiting at the gate ([`SimOrigin::hold_officer`]).
    pub held: AtomicU64,
    batch_sizes: Mutex<Vec<usize>>,
    /// Per id, the profile calls (single, or batch naming it) that asked
    /// for it; bounded by the distinct ids asked for.
    asked: Mutex<HashMap<String, u64>>,
}

impl SimStats {
    /// Profile lookups that reached the origin (single + batch).
    pub fn origin_calls(&self) -> u64 {
        self.single_calls.load(Ordering::SeqCst) + self.batch_calls.load(Ordering::SeqCst)
    }

    /// Zeroes the counters. `in_flight` is left alone because requests still
    /// being served will decrement it; `max_in_flight` restarts from it.
    pub fn reset(&self) {
        self.single_calls.store(0, Ordering::SeqCst);
        self.batch_calls.store(0, Ordering::SeqCst);
        self.batch_ids.store(0, Ordering::SeqCst);
        self.max_batch.store(0, Ordering::SeqCst);
        self.other_officer_calls.store(0, Ordering::SeqCst);
        self.posts_calls.store(0, Ordering::SeqCst);
        self.max_in_flight
            .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
        self.batch_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// How many profile calls (single, or a batch naming it) asked for `id`
    /// since start or the last reset.
    pub fn times_asked(&self, id: &str) -> u64 {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    fn record_asked<'a>(&self, ids: impl IntoIterator<Item = &'a String>) {
        let mut asked = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            *asked.entry(id.clone()).or_default() += 1;
        }
    }

    /// Every batch size seen since start or the last reset, in arrival order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batch_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record_batch(&self, size: usize) {
        let size64 = u64::try_from(size).unwrap_or(u64::MAX);
        self.batch_calls.fetch_add(1, Ordering::SeqCst);
        self.batch_ids.fetch_add(size64, Ordering::SeqCst);
        self.max_batch.fetch_max(size64, Ordering::SeqCst);
        self.batch_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(size);
    }
}

/// Decrements `in_flight` on drop, so requests cancelled mid-way (client
/// timeouts against `Hang`, shutdown) are still accounted for.
struct InFlight<'a>(&'a SimStats);

impl<'a> InFlight<'a> {
    fn enter(stats: &'a SimStats) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decrements `held` on drop, also for requests cancelled at the gate.
struct Held<'a>(&'a SimStats);

impl<'a> Held<'a> {
    fn enter(stats: &'a SimStats) -> Self {
        stats.held.fetch_add(1, Ordering::SeqCst);
        Held(stats)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A user profile as the Officer serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub id: String,
    pub display_name: String,
    pub avatar_url: String,
    pub bio: String,
    pub location: String,
    pub updated_at: String,
    pub version: u64,
}

impl Profile {
    fn synthetic(i: usize) -> Profile {
        let id = user_id(i);
        Profile {
            display_name: format!("User {i}"),
            avatar_url: avatar_url(&id, 1),
            bio: format!(
                "Synthetic profile #{i} from the profile-edge simulator. \
                 Enjoys warm caches and short tail latencies."
            ),
            location: LOCATIONS[i % LOCATIONS.len()].to_string(),
            updated_at: updated_at(1),
            version: 1,
            id,
        }
    }
}

fn avatar_url(id: &str, version: u64) -> String {
    format!("https://cdn.example.com/avatars/{id}.png?v={version}")
}

/// One minute per version keeps timestamps deterministic and increasing.
fn updated_at(version: u64) -> String {
    let minutes = version.saturating_sub(1);
    let day = 1 + (minutes / 1440) % 28;
    let hour = (minutes / 60) % 24;
    let minute = minutes % 60;
    format!("2026-01-{day:02}T{hour:02}:{minute:02}:00Z")
}

/// Deterministic synthetic user id for index `i` (0-based), shaped like a UUID.
pub fn user_id(i: usize) -> String {
    format!("{i:08x}-0000-4000-8000-{i:012x}")
}

/// Deterministic synthetic post id for index `i` (0-based).
pub fn post_id(i: usize) -> String {
    format!("p{i:06}")
}

/// Inverse of [`user_id`]; `None` for anything it did not produce.
fn user_index(id: &str) -> Option<usize> {
    let (head, _) = id.split_once('-')?;
    let i = usize::from_str_radix(head, 16).ok()?;
    (user_id(i) == id).then_some(i)
}

fn post_index(id: &str, posts: usize) -> Option<usize> {
    let digits = id.strip_prefix('p')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let i: usize = digits.parse().ok()?;
    (i < posts && post_id(i) == id).then_some(i)
}

/// Widened arithmetic so large configs cannot overflow.
fn author_index(post: usize, users: usize) -> usize {
    let users = users.max(1) as u128;
    let idx = (post as u128 * AUTHOR_STRIDE) % users;
    usize::try_from(idx).unwrap_or(0)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Post {
    id: String,
    user_id: String,
    text: String,
    created_at: String,
    likes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_snapshot: Option<serde_json::Value>,
}

impl Post {
    fn synthetic(i: usize, users: usize) -> Post {
        let day = 1 + (i / 1440) % 28;
        let hour = (i / 60) % 24;
        let minute = i % 60;
        Post {
            id: post_id(i),
            user_id: user_id(author_index(i, users)),
            text: format!("Post number {i}: hello from the simulated feed."),
            created_at: format!("2026-02-{day:02}T{hour:02}:{minute:02}:00Z"),
            likes: (i as u64).wrapping_mul(37) % 1000,
            user_snapshot: None,
        }
    }

    /// Gives the post the `userSnapshot` that `kind` asks for.
    fn with_snapshot(mut self, kind: PostSnapshots) -> Post {
        self.user_snapshot = match kind {
            PostSnapshots::Absent => None,
            PostSnapshots::Null => Some(serde_json::Value::Null),
            PostSnapshots::Stale => {
                let i = user_index(&self.user_id).unwrap_or(0);
                Some(serde_json::json!({
                    "id": self.user_id,
                    "displayName": format!("User {i} (old name)"),
                    "avatarUrl": avatar_url(&self.user_id, 0),
                }))
            }
        };
        self
    }
}

#[derive(Debug, Deserialize)]
struct BatchRequest {
    ids: Vec<String>,
}

#[derive(Serialize)]
struct BatchResponse<'a> {
    users: Vec<&'a Profile>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Followers {
    user_id: String,
    followers: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostPage {
    posts: Vec<Post>,
    next_offset: usize,
}

#[derive(Serialize)]
struct PostList {
    posts: Vec<Post>,
}

#[derive(Serialize)]
struct Notification {
    #[serde(rename = "type")]
    kind: &'static str,
    post: Post,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    detail: &'a str,
}

/// State shared by both servers and the [`SimOrigin`] handle.
struct Shared {
    users: RwLock<HashMap<String, Profile>>,
    /// The configured user count, not the live table size: post authorship
    /// must stay stable when users are deleted.
    user_count: usize,
    post_count: usize,
    post_snapshots: PostSnapshots,
    latency_us: AtomicU64,
    mode: AtomicU8,
    next_notification: AtomicU64,
    stats: SimStats,
    /// Open (`true`) unless a test holds Officer answers back; see
    /// [`SimOrigin::hold_officer`].
    gate: watch::Sender<bool>,
    /// Raw frames for `GET /api/posts/stream`: each connected stream holds
    /// a receiver and writes every frame sent after it connected.
    stream: broadcast::Sender<Bytes>,
    next_stream_post: AtomicU64,
    /// `true` once the origin stops: streams end.
    stop: watch::Receiver<bool>,
}

impl Shared {
    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::SeqCst))
    }

    fn mode(&self) -> SimMode {
        SimMode::from_u8(self.mode.load(Ordering::SeqCst))
    }

    async fn delay(&self) {
        let latency = self.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// Waits while the gate is closed.
    async fn pass_gate(&self) {
        let mut open = self.gate.subscribe();
        if *open.borrow_and_update() {
            return;
        }
        let _held = Held::enter(&self.stats);
        // An error means the sender is gone, i.e. the origin is stopping.
        let _ = open.wait_for(|open| *open).await;
    }

    /// Sends the next post to the stream; returns its author's id.
    fn push_stream_post(&self) -> String {
        let seq = self.next_stream_post.fetch_add(1, Ordering::SeqCst);
        let i = usize::try_from(seq % self.post_count.max(1) as u64).unwrap_or(0);
        let post = Post::synthetic(i, self.user_count);
        let author = post.user_id.clone();
        let data = serde_json::to_string(&Notification {
            kind: "new-post",
            post,
        })
        .unwrap_or_default();
        // No stream connected is no error: a live feed goes on regardless.
        let _ = self.stream.send(Bytes::from(format!(
            "id: {}\nevent: post\ndata: {data}\n\n",
            seq + 1
        )));
        author
    }
}

fn duration_to_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[derive(Clone, Copy, Debug)]
enum Api {
    Officer,
    Posts,
}

/// Handle to the running simulated Officer and Posts servers.
///
/// Dropping it stops both servers too; [`SimOrigin::shutdown`] additionally
/// waits until they are gone.
pub struct SimOrigin {
    shared: Arc<Shared>,
    officer_addr: SocketAddr,
    posts_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimOrigin {
    /// Binds both listeners and starts serving.
    pub async fn start(cfg: SimConfig) -> std::io::Result<SimOrigin> {
        let officer_listener = TcpListener::bind(cfg.officer_addr).await?;
        let posts_listener = TcpListener::bind(cfg.posts_addr).await?;
        let officer_addr = officer_listener.local_addr()?;
        let posts_addr = posts_listener.local_addr()?;

        let (stop, stop_rx) = watch::channel(false);
        let users = (0..cfg.users)
            .map(|i| {
                let p = Profile::synthetic(i);
                (p.id.clone(), p)
            })
            .collect::<HashMap<_, _>>();
        let shared = Arc::new(Shared {
            users: RwLock::new(users),
            user_count: cfg.users,
            post_count: cfg.posts,
            post_snapshots: cfg.post_snapshots,
            latency_us: AtomicU64::new(duration_to_micros(cfg.latency)),
            mode: AtomicU8::new(SimMode::Healthy.to_u8()),
            next_notification: AtomicU64::new(0),
            stats: SimStats::default(),
            gate: watch::channel(true).0,
            stream: broadcast::channel(STREAM_BUFFER).0,
            next_stream_post: AtomicU64::new(0),
            stop: stop_rx.clone(),
        });

        let tasks = vec![
            tokio::spawn(accept_loop(
                officer_listener,
                Api::Officer,
                Arc::clone(&shared),
                stop_rx.clone(),
            )),
            tokio::spawn(accept_loop(
                posts_listener,
                Api::Posts,
                Arc::clone(&shared),
                stop_rx,
            )),
        ];
        tracing::info!(%officer_addr, %posts_addr, users = cfg.users, posts = cfg.posts, "simulated origins listening");

        Ok(SimOrigin {
            shared,
            officer_addr,
            posts_addr,
            stop,
            tasks,
        })
    }

    pub fn officer_addr(&self) -> SocketAddr {
        self.officer_addr
    }

    pub fn posts_addr(&self) -> SocketAddr {
        self.posts_addr
    }

    /// Base URL of the Officer API, e.g. `http://127.0.0.1:PORT`.
    pub fn officer_url(&self) -> String {
        format!("http://{}", self.officer_addr)
    }

    /// Base URL of the Posts API, e.g. `http://127.0.0.1:PORT`.
    pub fn posts_url(&self) -> String {
        format!("http://{}", self.posts_addr)
    }

    pub fn stats(&self) -> &SimStats {
        &self.shared.stats
    }

    pub fn set_mode(&self, mode: SimMode) {
        self.shared.mode.store(mode.to_u8(), Ordering::SeqCst);
    }

    pub fn mode(&self) -> SimMode {
        self.shared.mode()
    }

    /// Takes effect for requests that start after the call.
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_us
            .store(duration_to_micros(latency), Ordering::SeqCst);
    }

    pub fn latency(&self) -> Duration {
        self.shared.latency()
    }

    /// Test hook: from now on, Officer requests are answered only once
    /// [`SimOrigin::release_officer`] is called. Each request reads its
    /// answer first (a profile changed while it waits is not in it), then
    /// waits at the gate, counted in [`SimStats::held`], so that a test can
    /// order events without sleeping: hold, start a load, wait for
    /// `held == 1`, act, release.
    pub fn hold_officer(&self) {
        self.shared.gate.send_replace(false);
    }

    /// Opens the gate: held Officer requests are answered, new ones pass.
    pub fn release_officer(&self) {
        self.shared.gate.send_replace(true);
    }

    /// `GET /api/posts/stream` requests connected now. Tests wait for this
    /// before sending, instead of sleeping.
    pub fn stream_subscribers(&self) -> usize {
        self.shared.stream.receiver_count()
    }

    /// Sends `frame` as it is to every connected stream (for malformed
    /// events and comments); returns how many streams it went to.
    pub fn push_stream_raw(&self, frame: &str) -> usize {
        self.shared
            .stream
            .send(Bytes::copy_from_slice(frame.as_bytes()))
            .unwrap_or(0)
    }

    /// Sends the next post to every connected stream as `id: N`, `event:
    /// post`, `data: {"type": "new-post", "post": {...}}` (the shape of
    /// `/api/posts/notifications/new`); returns the post's author id.
    pub fn push_stream_post(&self) -> String {
        self.shared.push_stream_post()
    }

    /// From now on, a post to the stream every `every` (the demo's live
    /// feed), until the origin stops.
    pub fn start_stream_ticker(&mut self, every: Duration) {
        let shared = Arc::clone(&self.shared);
        let mut stop = shared.stop.clone();
        // `interval` refuses zero.
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stopped(&mut stop) => break,
                    _ = tick.tick() => {
                        shared.push_stream_post();
                    }
                }
            }
        }));
    }

    /// Current origin copy of a profile, for tests to compare against what
    /// the proxy serves.
    pub fn profile(&self, id: &str) -> Option<Profile> {
        self.shared
            .users
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Change a user's profile (bumps its version, changes displayName and avatarUrl); returns false if unknown.
    pub fn update_user(&self, id: &str) -> bool {
        let mut users = self
            .shared
            .users
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(p) = users.get_mut(id) else {
            return false;
        };
        p.version += 1;
        p.display_name = match user_index(id) {
            Some(i) => format!("User {i} (v{})", p.version),
            None => format!("{} (v{})", p.id, p.version),
        };
        p.avatar_url = avatar_url(&p.id, p.version);
        p.updated_at = updated_at(p.version);
        true
    }

    /// Delete a user so that it becomes 404/absent.
    pub fn delete_user(&self, id: &str) -> bool {
        self.shared
            .users
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
            .is_some()
    }

    /// Stops both servers: accept loops end, open connections (including
    /// requests hanging in [`SimMode::Hang`]) are dropped without waiting.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        for task in std::mem::take(&mut self.tasks) {
            if let Err(e) = task.await {
                tracing::debug!(error = %e, "simulated origin task ended abnormally");
            }
        }
    }
}

impl Drop for SimOrigin {
    fn drop(&mut self) {
        // A test that panics or forgets shutdown() must not leave servers
        // running for the rest of the process.
        self.stop.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    api: Api,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    // Owning the connection tasks lets shutdown abort them instead of
    // waiting for keep-alive clients or hanging requests.
    let mut conns = JoinSet::new();
    // `stop` is mutably borrowed by the select below; hand out clones of this.
    let conn_stop = stop.clone();
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    conns.spawn(serve_conn(stream, api, builder.clone(), Arc::clone(&shared), conn_stop.clone()));
                }
                Err(e) => {
                    // Typically fd exhaustion under load; back off instead of spinning.
                    tracing::warn!(error = %e, ?api, "simulated origin accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// Resolves once shutdown is requested or the [`SimOrigin`] is gone. The
/// `watch::Ref` is dropped here because it is not `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped, which is also a stop.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn serve_conn(
    stream: TcpStream,
    api: Api,
    builder: Builder<TokioExecutor>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = Arc::clone(&shared);
        let mut stop = stop.clone();
        async move {
            // h2 streams run on their own executor tasks, outside the
            // connection's JoinSet, so each request also watches for shutdown.
            let resp = tokio::select! {
                resp = handle(api, &shared, req) => resp,
                () = stopped(&mut stop) => error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "simulated origin is shutting down",
                ),
            };
            Ok::<_, Infallible>(resp)
        }
    });
    if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
        tracing::debug!(error = %e, ?api, "simulated origin connection ended with error");
    }
}

async fn handle(api: Api, shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    match api {
        Api::Officer => officer(shared, req).await,
        Api::Posts => posts(shared, req).await,
    }
}

enum OfficerRoute {
    Single(String),
    Batch,
    Followers(String),
    Health,
    Unknown,
}

impl OfficerRoute {
    fn parse(method: &Method, path: &str) -> OfficerRoute {
        if path == "/health" && method == Method::GET {
            return OfficerRoute::Health;
        }
        let Some(rest) = path.strip_prefix("/api/users/") else {
            return OfficerRoute::Unknown;
        };
        if rest == "batch" && method == Method::POST {
            return OfficerRoute::Batch;
        }
        if method != Method::GET {
            return OfficerRoute::Unknown;
        }
        if let Some(id) = rest.strip_suffix("/followers") {
            if !id.is_empty() && !id.contains('/') {
                return OfficerRoute::Followers(id.to_string());
            }
            return OfficerRoute::Unknown;
        }
        if !rest.is_empty() && !rest.contains('/') {
            return OfficerRoute::Single(rest.to_string());
        }
        OfficerRoute::Unknown
    }
}

async fn officer(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    let stats = &shared.stats;
    let _in_flight = InFlight::enter(stats);
    let route = OfficerRoute::parse(req.method(), req.uri().path());

    // The batch body is read before counting so that the recorded size is
    // the one the proxy actually sent.
    let batch = match route {
        OfficerRoute::Batch => Some(read_batch(req.into_body()).await),
        _ => None,
    };
    match (&route, &batch) {
        (OfficerRoute::Single(id), _) => {
            stats.single_calls.fetch_add(1, Ordering::SeqCst);
            stats.record_asked([id]);
        }
        (OfficerRoute::Batch, Some(Ok(ids))) => {
            stats.record_batch(ids.len());
            // A batch naming an id twice asked for it once.
            let distinct: HashSet<&String> = ids.iter().collect();
            stats.record_asked(distinct);
        }
        (OfficerRoute::Batch, _) => {
            stats.batch_calls.fetch_add(1, Ordering::SeqCst);
        }
        _ => {
            stats.other_officer_calls.fetch_add(1, Ordering::SeqCst);
        }
    }

    // The answer is read before the latency, as a real service reads its
    // database and then spends time on the network: a profile changed
    // while a call is in flight is not in that call's answer.
    let answer = match route {
        OfficerRoute::Single(id) => get_user(shared, &id),
        OfficerRoute::Batch => match batch {
            Some(Ok(ids)) => batch_users(shared, &ids),
            Some(Err(resp)) => resp,
            None => error_response(StatusCode::BAD_REQUEST, "bad_request", "missing body"),
        },
        OfficerRoute::Followers(id) => followers(shared, &id),
        OfficerRoute::Health => json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        OfficerRoute::Unknown => {
            error_response(StatusCode::NOT_FOUND, "not_found", "no such route")
        }
    };
    shared.delay().await;
    shared.pass_gate().await;
    match shared.mode() {
        SimMode::Healthy => answer,
        SimMode::Error500 => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "simulated Officer failure",
        ),
        SimMode::Hang => {
            tokio::time::sleep(HANG_FOR).await;
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "simulated Officer hang elapsed",
            )
        }
    }
}

async fn read_batch(body: Incoming) -> Result<Vec<String>, Response<SimBody>> {
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body exceeds 1 MiB",
            ))
        }
        Err(_) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "could not read request body",
            ))
        }
    };
    match serde_json::from_slice::<BatchRequest>(&bytes) {
        Ok(req) => Ok(req.ids),
        Err(e) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("expected {{\"ids\": [...]}}: {e}"),
        )),
    }
}

fn get_user(shared: &Shared, id: &str) -> Response<SimBody> {
    let users = shared.users.read().unwrap_or_else(PoisonError::into_inner);
    match users.get(id) {
        Some(p) => json_response(StatusCode::OK, p),
        None => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("user {id} does not exist"),
        ),
    }
}

fn batch_users(shared: &Shared, ids: &[String]) -> Response<SimBody> {
    let users = shared.users.read().unwrap_or_else(PoisonError::into_inner);
    let mut seen = HashSet::with_capacity(ids.len());
    let found = ids
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .filter_map(|id| users.get(id))
        .collect();
    json_response(StatusCode::OK, &BatchResponse { users: found })
}

fn followers(shared: &Shared, id: &str) -> Response<SimBody> {
    let users = shared.users.read().unwrap_or_else(PoisonError::into_inner);
    if !users.contains_key(id) {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("user {id} does not exist"),
        );
    }
    let mut list: Vec<String> = Vec::with_capacity(MAX_FOLLOWERS);
    if let Some(idx) = user_index(id) {
        let n = shared.user_count.max(1);
        for k in 1..=MAX_FOLLOWERS {
            let follower = user_id((idx + k * 97) % n);
            if follower != id && users.contains_key(&follower) && !list.contains(&follower) {
                list.push(follower);
            }
        }
    }
    json_response(
        StatusCode::OK,
        &Followers {
            user_id: id.to_string(),
            followers: list,
        },
    )
}

async fn posts(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    shared.stats.posts_calls.fetch_add(1, Ordering::SeqCst);
    shared.delay().await;

    if req.method() != Method::GET {
        return error_response(StatusCode::NOT_FOUND, "not_found", "no such route");
    }
    let path = req.uri().path();
    let n_posts = shared.post_count;
    let n_users = shared.user_count;

    if path == "/api/posts" {
        let (limit, offset) = match page_params(req.uri().query()) {
            Ok(v) => v,
            Err(detail) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &detail),
        };
        let end = offset.saturating_add(limit).min(n_posts);
        let posts = (offset.min(end)..end)
            .map(|i| Post::synthetic(i, n_users).with_snapshot(shared.post_snapshots))
            .collect();
        return json_response(
            StatusCode::OK,
            &PostPage {
                posts,
                next_offset: offset.saturating_add(limit),
            },
        );
    }
    let Some(rest) = path.strip_prefix("/api/posts/") else {
        return error_response(StatusCode::NOT_FOUND, "not_found", "no such route");
    };
    if rest == "stream" {
        return post_stream(shared);
    }
    if rest == "notifications/new" {
        if n_posts == 0 {
            return error_response(StatusCode::NOT_FOUND, "not_found", "no posts");
        }
        // Cycling through posts keeps notifications deterministic for tests.
        let seq = shared.next_notification.fetch_add(1, Ordering::SeqCst);
        let i = usize::try_from(seq % n_posts as u64).unwrap_or(0);
        return json_response(
            StatusCode::OK,
            &Notification {
                kind: "new-post",
                post: Post::synthetic(i, n_users),
            },
        );
    }
    if let Some(author) = rest.strip_prefix("user/") {
        let posts = match user_index(author) {
            Some(a) if a < n_users => (0..n_posts)
                .filter(|&i| author_index(i, n_users) == a)
                .take(USER_POSTS_LIMIT)
                .map(|i| Post::synthetic(i, n_users))
                .collect(),
            _ => Vec::new(),
        };
        return json_response(StatusCode::OK, &PostList { posts });
    }
    match post_index(rest, n_posts) {
        Some(i) => json_response(StatusCode::OK, &Post::synthetic(i, n_users)),
        None => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("post {rest} does not exist"),
        ),
    }
}

/// `GET /api/posts/stream`: Server-Sent Events, every frame sent through
/// `Shared::stream` after the request connected, until the origin stops.
fn post_stream(shared: &Shared) -> Response<SimBody> {
    let state = (shared.stream.subscribe(), shared.stop.clone());
    let frames = futures_util::stream::unfold(state, |(mut rx, mut stop)| async move {
        loop {
            tokio::select! {
                () = stopped(&mut stop) => return None,
                frame = rx.recv() => match frame {
                    Ok(frame) => return Some((Ok(Frame::data(frame)), (rx, stop))),
                    // A reader too slow for the buffer skips ahead, as it
                    // would on a real feed.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Parses `limit` and `offset`; `limit` is clamped to `1..=MAX_PAGE`.
fn page_params(query: Option<&str>) -> Result<(usize, usize), String> {
    let mut limit = DEFAULT_PAGE;
    let mut offset = 0;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let target = match key {
            "limit" => &mut limit,
            "offset" => &mut offset,
            _ => continue,
        };
        match value.parse::<usize>() {
            Ok(v) => *target = v,
            Err(_) => return Err(format!("{key} must be a non-negative integer")),
        }
    }
    Ok((limit.clamp(1, MAX_PAGE), offset))
}

fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<SimBody> {
    match serde_json::to_vec(value) {
        Ok(body) => with_body(status, Bytes::from(body)),
        Err(e) => {
            tracing::error!(error = %e, "simulated origin failed to serialize a response");
            with_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(br#"{"error":"internal","detail":"serialization failed"}"#),
            )
        }
    }
}

fn error_response(status: StatusCode, error: &str, detail: &str) -> Response<SimBody> {
    json_response(status, &ErrorBody { error, detail })
}

fn with_body(status: StatusCode, body: Bytes) -> Response<SimBody> {
    let mut resp = Response::new(Full::new(body).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_roundtrip_and_match_the_proxy_id_pattern() {
        for i in [0, 1, 42, 4999, 1 << 20] {
            let id = user_id(i);
            assert!(id.len() <= 64);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
            assert_eq!(user_index(&id), Some(i));
        }
        assert_eq!(user_index("nope"), None);
        assert_eq!(user_index("0000002a-0000-4000-8000-000000000000"), None);
    }

    #[test]
    fn profile_is_about_300_bytes() {
        let len = serde_json::to_vec(&Profile::synthetic(42)).map_or(0, |v| v.len());
        assert!((250..=400).contains(&len), "profile is {len} bytes");
    }

    #[test]
    fn a_page_has_distinct_authors() {
        let authors: HashSet<usize> = (0..20).map(|i| author_index(i, 5000)).collect();
        assert_eq!(authors.len(), 20);
    }

    #[test]
    fn page_params_defaults_and_clamps() {
        assert_eq!(page_params(None).ok(), Some((20, 0)));
        assert_eq!(
            page_params(Some("limit=500&offset=40")).ok(),
            Some((100, 40))
        );
        assert!(page_params(Some("limit=abc")).is_err());
    }

    #[test]
    fn posts_carry_the_snapshot_asked_for() {
        let json = |kind| {
            serde_json::to_value(Post::synthetic(7, 5000).with_snapshot(kind))
                .expect("a post serializes")
        };
        assert!(json(PostSnapshots::Absent).get("userSnapshot").is_none());
        assert_eq!(
            json(PostSnapshots::Null)["userSnapshot"],
            serde_json::Value::Null
        );
        let stale = json(PostSnapshots::Stale);
        assert_eq!(stale["userSnapshot"]["id"], stale["userId"]);
        let author = stale["userId"].as_str().expect("userId is a string");
        assert_eq!(stale["userSnapshot"]["avatarUrl"], avatar_url(author, 0));
        assert_ne!(
            avatar_url(author, 0),
            Profile::synthetic(user_index(author).expect("a sim id")).avatar_url
        );
    }
}

//! Scenario 10: notification fan-out (issue 12), over the real pipeline:
//! the bench inserts posts into a MongoDB collection that a `new-posts`
//! change stream watches; the proxy reads each insert, enriches it once
//! with the shipped `enrich_posts.wasm` (the author's profile from a warm
//! memory tier in front of the simulated Officer) and writes it to every
//! open `GET /api/notifications/stream`.
//!
//! (a) Fan-out at three subscriber counts (1, 1 000 and 10 000; quick: 1,
//! 100 and 1 000), a fresh proxy each, posts inserted at 100/s: every
//! subscriber is a plain `TcpStream` in the bench that decodes the chunked
//! body far enough to count `event: post` and `event: resync`; every
//! `SAMPLE_EVERY`-th one also parses each event's JSON for the insert time
//! the document carries (`sentUs`, unix microseconds taken just before the
//! insert) and its sequence number. Reported: insert-to-receipt latency,
//! events expected vs received, resyncs, proxy RSS before and after the
//! subscribers connect and after the run, proxy CPU (utime + stime) per
//! 1 000 deliveries; the small counts are the baseline the large one is
//! compared with. (b) Stuck subscribers: connections that open the stream
//! and never read, and a few that read only after a pause, beside one that
//! reads, posts at the same rate (with filler, so that the stuck sockets
//! fill within the phase), against that reader alone on a proxy of its
//! own: whether the reader gets every post on time, what happens to the
//! stuck ones (closed by `server.write_timeout`) and the paused ones
//! (`event: resync`), and the proxy's RSS and the kernel's TCP memory over
//! the phase.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use mongodb::bson::{doc, Document};
use mongodb::Collection;
use profile_edge::testkit::{user_id, SimOrigin};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use super::{note_proxy_log, ratio, start_sim, warm_batch, Ctx};
use crate::load::{self, fmt_us, Dist};
use crate::procs::{toml_str, Mongo, Proxy, ProxyOpts};
use crate::report::{Section, Table, Target};

const PATH: &str = "/api/notifications/stream";
/// Posts per second inserted into the watched collection.
const RATE: f64 = 100.0;
/// Distinct authors of the posts, their profiles warmed into the proxy's
/// memory tier before a phase (the fan-out is measured, not cold lookups).
const AUTHORS: usize = 1_000;
/// Every this many subscribers, one parses each event (latency, order).
const SAMPLE_EVERY: usize = 100;
/// Streams opened at once while connecting.
const CONNECT_CONCURRENCY: usize = 64;
/// `notifications.max_streams` in the bench's config (default 10 000).
const MAX_STREAMS: usize = 20_000;
/// After the last insert, wait for deliveries until none came for this
/// long, or `DRAIN_LIMIT` passed.
const DRAIN_QUIET: Duration = Duration::from_secs(5);
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// The proxy's `server.write_timeout` (its default; the bench config does
/// not set it): a stuck stream is closed this long after a write blocks.
const WRITE_TIMEOUT_S: u64 = 30;
/// Bytes one subscriber reads at a time.
const READ_BUF: usize = 8 * 1024;
/// Filler in each post's `text` in phase (b). With loopback's 64 KiB
/// segments the kernel grows the proxy's send buffer of a connection that
/// reads nothing to megabytes (in a trial, 20 s of plain posts all
/// fitted), so with plain posts the writes would block only after
/// minutes; at about 2.5 KiB a post they block within seconds.
const STUCK_PAD: usize = 2 * 1024;
/// SO_RCVBUF of a stuck subscriber's socket: its window stays small.
const STUCK_RCVBUF: u32 = 4 * 1024;
/// How long the paused subscribers of (b) read nothing: past the time
/// their writes block (about 12 s at the padded rate) plus the 256 events
/// of `client_queue`, short of the write timeout after that.
const PAUSE: Duration = Duration::from_secs(20);
/// Paused subscribers in (b).
const PAUSED: usize = 10;

pub async fn run(ctx: &Ctx, sec: &mut Section) -> Result<()> {
    let (levels, secs): (&[usize], &[u64]) = if ctx.quick {
        (&[1, 100, 1_000], &[10, 10, 10])
    } else {
        (&[1, 1_000, 10_000], &[30, 30, 60])
    };
    // Each stuck connection ends up holding megabytes of kernel buffers
    // (the proxy's send buffer), so their number is kept where the
    // machine's TCP memory stays far from `net.ipv4.tcp_mem`'s pressure
    // mark (the machine is shared with whatever else runs here).
    let (stuck_n, stuck_secs) = if ctx.quick { (100, 40) } else { (200, 60) };
    let largest = levels.iter().copied().max().unwrap_or(1);
    let nofile = raise_nofile(largest.max(stuck_n) + 500)?;
    println!("  {nofile}");
    sec.client = format!(
        "posts inserted one document at a time into a MongoDB collection watched by a `new-posts` change stream, {RATE:.0}/s (a post late on the schedule goes with the next in one `insert_many`); subscribers are raw HTTP/1.1 `TcpStream`s in the bench (one task each, {} KiB reads, the chunked body decoded far enough to count events), every {SAMPLE_EVERY}th parsing each event's JSON for the latency; (a) {} subscribers for {} s of posting each, a fresh proxy per count; (b) posts with {} KiB of filler: 1 reader beside {stuck_n} subscribers that never read (SO_RCVBUF {} KiB) and {PAUSED} that start reading after {} s, between two runs of the reader alone, {stuck_secs} s of posting each",
        READ_BUF / 1024,
        levels
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        secs.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        STUCK_PAD / 1024,
        STUCK_RCVBUF / 1024,
        PAUSE.as_secs(),
    );
    let load_at_start = loadavg();
    let tmp = ctx.tempdir("fanout")?;
    // A fresh server for every run: SecantusDB's change streams slow down
    // as its collections and log grow (measured: insert-to-event p50 from
    // 2.5 ms on a fresh server to 11 ms after one (b) run), which would
    // tilt every comparison towards whatever ran first.
    let mut server = String::new();
    let sim = start_sim(AUTHORS, Duration::from_millis(20)).await?;

    let mut phases = Vec::new();
    let mut errors = Vec::new();
    for (&n, &s) in levels.iter().zip(secs) {
        let mongo = Mongo::start().await?;
        server = mongo.describe();
        match fanout_phase(ctx, sec, tmp.path(), &sim, &mongo, n, s).await {
            Ok(p) => phases.push(p),
            Err(e) => errors.push(format!("(a) {n} subscribers: {e:#}")),
        }
    }
    report_fanout(sec, &phases, largest);
    let mut bases: [Option<Stuck>; 2] = [None, None];
    let mut main = None;
    for (step, (stuck, paused, secs)) in [
        (0, 0, stuck_secs),
        (stuck_n, PAUSED, stuck_secs),
        (0, 0, stuck_secs),
    ]
    .into_iter()
    .enumerate()
    {
        let mongo = Mongo::start().await?;
        server = mongo.describe();
        match stuck_phase(
            ctx,
            sec,
            tmp.path(),
            &sim,
            &mongo,
            stuck,
            paused,
            secs,
            step,
        )
        .await
        {
            Ok(r) if step == 1 => main = Some(r),
            Ok(r) => bases[step / 2] = Some(r),
            Err(e) => errors.push(format!("(b) step {} of 3: {e:#}", step + 1)),
        }
    }
    if let Some(m) = &main {
        report_stuck(sec, [bases[0].as_ref(), bases[1].as_ref()], m);
    }
    sec.notes.push(format!(
        "MongoDB server: {server}, a fresh one for each run. {nofile}. Load average (1, 5, 15 min) {load_at_start} at the start of the scenario, {} at the end.",
        loadavg()
    ));
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

// ------------------------------------------------------------ process facts

/// Raises this process's open-files soft limit to its hard limit (the
/// proxy, started afterwards, inherits it) with util-linux `prlimit`, as
/// the crate forbids `unsafe` and so `setrlimit` itself; answers what the
/// limits are. Fails when the soft limit stays below `need`.
fn raise_nofile(need: usize) -> Result<String> {
    let (soft0, hard) = nofile_limits()?;
    let mut how = "already at the hard limit".to_string();
    if soft0 < hard {
        let status = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
        how = match status {
            Ok(s) if s.success() => format!("raised from {soft0} with `prlimit`"),
            Ok(s) => format!("`prlimit` failed ({s}), left at {soft0}"),
            Err(e) => format!("`prlimit` could not run ({e}), left at {soft0}"),
        };
    }
    let (soft, hard) = nofile_limits()?;
    if soft < need as u64 {
        bail!("open files limit {soft} (hard {hard}) is below the {need} this scenario needs; raise it (ulimit -n) and rerun");
    }
    Ok(format!(
        "Open files limit of the bench and the proxy (RLIMIT_NOFILE): soft {soft}, hard {hard} ({how})"
    ))
}

fn nofile_limits() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").context("read /proc/self/limits")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no `Max open files` in /proc/self/limits")?;
    let nums: Vec<u64> = line
        .split_whitespace()
        .skip(3)
        .take(2)
        .map(|v| v.parse().unwrap_or(u64::MAX))
        .collect();
    match nums[..] {
        [soft, hard] => Ok((soft, hard)),
        _ => bail!("cannot read `{line}`"),
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_secs(pid: &str) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // Fields after the command name (which may hold spaces) start at 3.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no command name"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("{path}: field {}", i + 3))
    };
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 here.
    Ok((tick(11)? + tick(12)?) / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
}

// ------------------------------------------------------------ subscribers

/// Counts every subscriber of a phase adds to as it reads.
#[derive(Default)]
struct Shared {
    /// Streams whose head and `: connected` arrived.
    connected: AtomicUsize,
    /// Streams that could not be opened.
    failed: AtomicUsize,
    posts: AtomicU64,
    resyncs: AtomicU64,
    /// Streams that ended (EOF, reset, a final chunk) before the bench
    /// stopped reading.
    ended: AtomicUsize,
}

/// What one sampling subscriber saw of each post.
#[derive(Default)]
struct Samples {
    lat_us: Vec<u64>,
    seqs: Vec<i64>,
    enriched: u64,
    bad_json: u64,
}

/// One subscriber's totals when it stops.
#[derive(Default)]
struct SubEnd {
    posts: u64,
    resyncs: u64,
    /// Why the stream ended before the bench stopped reading, if it did.
    ended: Option<String>,
    samples: Option<Samples>,
}

#[derive(Clone, Copy, PartialEq)]
enum St {
    Head,
    Size,
    /// Inside a chunk's data (and its CRLF): bytes left to skip.
    Skip(usize),
    Done,
}

/// Just enough of HTTP/1.1 chunked framing and SSE to count events: the
/// proxy writes each SSE frame as one chunk, so a chunk's first bytes say
/// what it is; a sampling reader holds the whole chunk and parses its
/// `data:` line.
struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    st: St,
    connected: bool,
    posts: u64,
    resyncs: u64,
    samples: Option<Samples>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Reader {
    fn new(sample: bool) -> Reader {
        Reader {
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            st: St::Head,
            connected: false,
            posts: 0,
            resyncs: 0,
            samples: sample.then(Samples::default),
        }
    }

    /// Room to read into, compacting or growing the buffer as needed.
    fn space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // One chunk larger than the buffer (a sampling reader).
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Processes what was read, all of it received at `now_us`.
    fn feed(&mut self, n: usize, now_us: i64) -> Result<()> {
        self.end += n;
        loop {
            let avail = &self.buf[self.start..self.end];
            match self.st {
                St::Done => return Ok(()),
                St::Skip(left) => {
                    let k = left.min(avail.len());
                    self.start += k;
                    if k < left {
                        self.st = St::Skip(left - k);
                        return Ok(());
                    }
                    self.st = St::Size;
                }
                St::Head => {
                    let Some(i) = find(avail, b"\r\n\r\n") else {
                        if avail.len() > 16 * 1024 {
                            bail!("response head over 16 KiB");
                        }
                        return Ok(());
                    };
                    let head = String::from_utf8_lossy(&avail[..i]).to_ascii_lowercase();
                    if !head.starts_with("http/1.1 200") {
                        let line = head.lines().next().unwrap_or("").to_string();
                        bail!("the stream answered `{line}`");
                    }
                    if !head.contains("transfer-encoding: chunked") {
                        bail!("the stream is not chunked: {head}");
                    }
                    self.start += i + 4;
                    self.st = St::Size;
                }
                St::Size => {
                    let Some(i) = find(avail, b"\r\n") else {
                        return Ok(());
                    };
                    let line = std::str::from_utf8(&avail[..i]).unwrap_or("");
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .map_err(|_| anyhow!("bad chunk size line {line:?}"))?;
                    if size == 0 {
                        self.st = St::Done;
                        return Ok(());
                    }
                    // What the chunk is shows in its first bytes; a
                    // sampling reader needs all of it (and the CRLF).
                    let need = if self.samples.is_some() {
                        size + 2
                    } else {
                        size.min(64)
                    };
                    if avail.len() < i + 2 + need {
                        return Ok(());
                    }
                    let body = &avail[i + 2..i + 2 + size.min(avail.len() - i - 2)];
                    let head = &body[..body.len().min(64)];
                    if head.starts_with(b"id: ") && find(head, b"\nevent: post\n").is_some() {
                        self.posts += 1;
                        if let Some(s) = self.samples.as_mut() {
                            sample(s, body, now_us);
                        }
                    } else if head.starts_with(b"event: resync") {
                        self.resyncs += 1;
                    } else if head.starts_with(b": connected") {
                        self.connected = true;
                    }
                    self.start += i + 2;
                    self.st = St::Skip(size + 2);
                }
            }
        }
    }
}

/// Latency, sequence number and enrichment of one post frame.
fn sample(s: &mut Samples, frame: &[u8], now_us: i64) {
    let data = find(frame, b"\ndata: ").map(|i| {
        let rest = &frame[i + 7..];
        &rest[..find(rest, b"\n").unwrap_or(rest.len())]
    });
    let Some(v) = data.and_then(|d| serde_json::from_slice::<Value>(d).ok()) else {
        s.bad_json += 1;
        return;
    };
    let post = &v["post"];
    let num = |f: &str| {
        post[f]
            .as_i64()
            .or_else(|| post[f].as_f64().map(|x| x as i64))
    };
    match (num("sentUs"), num("seq")) {
        (Some(sent), Some(seq)) => {
            s.lat_us
                .push(u64::try_from(now_us.saturating_sub(sent)).unwrap_or(0));
            s.seqs.push(seq);
        }
        _ => s.bad_json += 1,
    }
    if post["userSnapshot"].is_object() {
        s.enriched += 1;
    }
}

/// Opens a stream: connects (with `rcvbuf` as the socket's receive
/// buffer, when given) and sends the request.
async fn open(addr: SocketAddr, rcvbuf: Option<u32>) -> Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().context("socket")?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).context("set SO_RCVBUF")?;
    }
    let mut stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .map_err(|_| anyhow!("connect timed out"))?
        .context("connect")?;
    stream.set_nodelay(true)?;
    stream
        .write_all(
            format!(
                "GET {PATH} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .context("send the request")?;
    Ok(stream)
}

/// A subscriber that reads until `stop`: opens the stream (holding a
/// `gate` permit until `: connected` arrived), then counts.
async fn subscriber(
    addr: SocketAddr,
    sample: bool,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> SubEnd {
    let mut r = Reader::new(sample);
    let mut end = SubEnd::default();
    let mut permit = gate.acquire_owned().await.ok();
    let mut stream = match open(addr, None).await {
        Ok(s) => s,
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            end.ended = Some(format!("{e:#}"));
            return end;
        }
    };
    let why = loop {
        let n = tokio::select! {
            biased;
            _ = stop.changed() => break None,
            n = stream.read(r.space()) => n,
        };
        let n = match n {
            Ok(0) => break Some("closed by the proxy".to_string()),
            Ok(n) => n,
            Err(e) => break Some(format!("read: {e}")),
        };
        let (posts, resyncs) = (r.posts, r.resyncs);
        if let Err(e) = r.feed(n, unix_us()) {
            break Some(format!("{e:#}"));
        }
        if permit.is_some() && r.connected {
            permit = None;
            shared.connected.fetch_add(1, Ordering::Relaxed);
        }
        shared.posts.fetch_add(r.posts - posts, Ordering::Relaxed);
        shared
            .resyncs
            .fetch_add(r.resyncs - resyncs, Ordering::Relaxed);
        if r.st == St::Done {
            break Some("the stream ended".to_string());
        }
    };
    if why.is_some() {
        if permit.is_some() {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.ended.fetch_add(1, Ordering::Relaxed);
        }
    }
    end.posts = r.posts;
    end.resyncs = r.resyncs;
    end.ended = why;
    end.samples = r.samples.take();
    end
}

struct Subscribers {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<SubEnd>,
    n: usize,
}

impl Subscribers {
    /// Opens `n` streams, every `SAMPLE_EVERY`-th (and the first) a
    /// sampling one; waits until all are connected or failed.
    async fn open(addr: SocketAddr, n: usize) -> Result<Subscribers> {
        let shared = Arc::new(Shared::default());
        let (stop, stop_rx) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            tasks.spawn(subscriber(
                addr,
                i % SAMPLE_EVERY == 0,
                Arc::clone(&shared),
                Arc::clone(&gate),
                stop_rx.clone(),
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let (c, f) = (
                shared.connected.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed),
            );
            if c + f >= n {
                if f > 0 {
                    bail!("{f} of {n} streams could not be opened ({c} did)");
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("{c} of {n} streams open after 300 s ({f} failed)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Subscribers {
            shared,
            stop,
            tasks,
            n,
        })
    }

    fn posts(&self) -> u64 {
        self.shared.posts.load(Ordering::Relaxed)
    }

    async fn finish(mut self) -> Result<Vec<SubEnd>> {
        let _ = self.stop.send(true);
        let mut out = Vec::with_capacity(self.n);
        while let Some(r) = self.tasks.join_next().await {
            out.push(r.context("subscriber task panicked")?);
        }
        Ok(out)
    }
}

// ------------------------------------------------------------ posting

struct Posting {
    inserted: u64,
    secs: f64,
    /// `insert_one` / `insert_many` calls and their latency.
    calls: u64,
    insert: Dist,
    /// Most posts one call carried (1 when the schedule was kept).
    largest_batch: usize,
}

/// Inserts posts `seq0..` at `RATE` per second for `secs`, each stamped
/// with `sentUs` just before its insert, `pad` bytes of filler in `text`.
async fn post_at_rate(
    coll: &Collection<Document>,
    seq0: i64,
    secs: u64,
    pad: usize,
) -> Result<Posting> {
    let filler = "x".repeat(pad);
    let total = (RATE * secs as f64).round() as u64;
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut lat = Vec::new();
    let mut largest = 0;
    while sent < total {
        let due = ((t0.elapsed().as_secs_f64() * RATE) as u64 + 1).min(total);
        if due <= sent {
            let next = t0 + Duration::from_secs_f64(sent as f64 / RATE);
            tokio::time::sleep_until(next.into()).await;
            continue;
        }
        let batch = (due - sent).min(100) as usize;
        let now = unix_us();
        let docs: Vec<Document> = (0..batch)
            .map(|k| {
                let seq = seq0 + (sent as usize + k) as i64;
                doc! {
                    "userId": user_id(seq as usize % AUTHORS),
                    "text": format!("post {seq} of the fan-out bench{filler}"),
                    "seq": seq,
                    "sentUs": now,
                }
            })
            .collect();
        let t = Instant::now();
        if batch == 1 {
            coll.insert_one(&docs[0]).await.context("insert a post")?;
        } else {
            coll.insert_many(docs).await.context("insert posts")?;
        }
        lat.push(load::micros(t.elapsed()));
        largest = largest.max(batch);
        sent += batch as u64;
    }
    Ok(Posting {
        inserted: sent,
        secs: t0.elapsed().as_secs_f64(),
        calls: lat.len() as u64,
        insert: Dist::of(lat),
        largest_batch: largest,
    })
}

/// Waits until `got()` reaches `want`, or stops growing for `DRAIN_QUIET`,
/// or `DRAIN_LIMIT` passed; answers the seconds waited.
async fn drain(got: impl Fn() -> u64, want: u64) -> f64 {
    let t0 = Instant::now();
    let mut last = got();
    let mut changed = Instant::now();
    while last < want && changed.elapsed() < DRAIN_QUIET && t0.elapsed() < DRAIN_LIMIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = got();
        if now != last {
            last = now;
            changed = Instant::now();
        }
    }
    t0.elapsed().as_secs_f64()
}

/// The MongoDB server's share of the latency: the bench's own change
/// stream on the collection (opened before the first insert), from the
/// insert to the bench reading the event. Runs until `stop`.
struct ServerShare {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<Vec<u64>>>,
}

impl ServerShare {
    async fn start(coll: &Collection<Document>) -> Result<ServerShare> {
        let mut cs = coll
            .watch()
            .await
            .context("open the bench's own change stream")?;
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let ev = tokio::select! {
                    biased;
                    _ = rx.changed() => return Ok(lat),
                    ev = cs.next_if_any() => ev.context("the bench's own change stream")?,
                };
                let now = unix_us();
                let Some(d) = ev.and_then(|e| e.full_document) else {
                    continue;
                };
                if let (Ok(sent), Ok(seq)) = (d.get_i64("sentUs"), d.get_i64("seq")) {
                    if seq >= 0 {
                        lat.push(u64::try_from(now.saturating_sub(sent)).unwrap_or(0));
                    }
                }
            }
        });
        Ok(ServerShare { stop, task })
    }

    async fn finish(self) -> Result<Dist> {
        let _ = self.stop.send(true);
        let lat = self
            .task
            .await
            .context("the bench's change stream task panicked")??;
        Ok(Dist::of(lat))
    }
}

// ------------------------------------------------------------ the proxy

fn proxy_opts(ctx: &Ctx, sim: &SimOrigin, mongo: &Mongo, stream: &str) -> ProxyOpts {
    let db = toml_str(mongo.database());
    let mut o = ProxyOpts::profiles(sim.officer_url());
    o.memory_capacity = 10_000;
    o.extra = format!(
        "[plugins.enrich-posts]\npath = {}\n\n\
         [notifications]\nplugin = \"enrich-posts\"\nmax_streams = {MAX_STREAMS}\n\n\
         [[change_streams]]\nname = \"{stream}\"\nuri = {}\ndatabase = {db}\ncollection = \"{stream}\"\n\
         kind = \"new-posts\"\nstate_database = {db}\n",
        toml_str(&ctx.plugin("enrich_posts.wasm").display().to_string()),
        toml_str(mongo.uri()),
    );
    o
}

/// Starts a proxy watching `stream`, warms the authors' profiles, and
/// checks the whole path with one post to one subscriber.
async fn start_proxy(
    ctx: &Ctx,
    dir: &Path,
    sim: &SimOrigin,
    mongo: &Mongo,
    stream: &str,
) -> Result<Proxy> {
    let plugin = ctx.plugin("enrich_posts.wasm");
    if !plugin.exists() {
        bail!(
            "{} is missing: run `bash plugins/build.sh`",
            plugin.display()
        );
    }
    let proxy = Proxy::start(
        &ctx.proxy_bin,
        &dir.join(stream),
        proxy_opts(ctx, sim, mongo, stream),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = load::get_json(proxy.admin, "/admin/stats").await?;
        if s["change_streams"][0]["role"] == "watching" {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the {stream} change stream is not watched after 60 s: {}",
                s["change_streams"]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    warm_batch(proxy.addr, (0..AUTHORS).collect(), 500).await?;
    // One post through the whole path before any figure is taken (the
    // stream is open, the policy loaded).
    let probe = Subscribers::open(proxy.addr, 1).await?;
    let coll: Collection<Document> = mongo.db().collection(stream);
    coll.insert_one(
        doc! {"userId": user_id(0), "text": "probe", "seq": -1_i64, "sentUs": unix_us()},
    )
    .await
    .context("insert the probe post")?;
    drain(|| probe.posts(), 1).await;
    if probe.posts() < 1 {
        bail!("the probe post did not reach a subscriber within {DRAIN_QUIET:?}");
    }
    probe.finish().await?;
    Ok(proxy)
}

async fn metric(admin: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    match load::metrics_text(admin).await {
        Ok(t) => load::metric(&t, name, labels),
        Err(_) => f64::NAN,
    }
}

async fn subscribers_now(admin: SocketAddr) -> f64 {
    load::get_json(admin, "/admin/stats")
        .await
        .ok()
        .and_then(|s| {
            s.pointer("/notifications/subscribers")
                .and_then(Value::as_f64)
        })
        .unwrap_or(f64::NAN)
}

// ------------------------------------------------------------ (a)

struct Phase {
    subs: usize,
    posting: Posting,
    expected: u64,
    received: u64,
    resyncs: u64,
    ended: usize,
    /// Subscribers that got fewer posts than inserted.
    short: usize,
    min_per_sub: u64,
    samples: Samples,
    /// The bench's own change stream: the server's share of the latency.
    server: Dist,
    sampled_subs: usize,
    /// Sampled events out of order or seen twice.
    disorder: u64,
    drain_secs: f64,
    rss_before: f64,
    rss_connected: f64,
    rss_after: f64,
    hwm: f64,
    proxy_cpu: f64,
    bench_cpu: f64,
    published: f64,
    sent_metric: f64,
    lagged_metric: f64,
    unenriched: f64,
}

async fn fanout_phase(
    ctx: &Ctx,
    sec: &mut Section,
    dir: &Path,
    sim: &SimOrigin,
    mongo: &Mongo,
    n: usize,
    secs: u64,
) -> Result<Phase> {
    let stream = format!("posts_{n}");
    let proxy = start_proxy(ctx, dir, sim, mongo, &stream).await?;
    let pid = proxy.guard.pid().to_string();
    let rss_before = proxy.rss()? as f64;
    let t = Instant::now();
    let subs = Subscribers::open(proxy.addr, n).await?;
    let open_secs = t.elapsed().as_secs_f64();
    // Let the connection burst's allocations settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = proxy.rss()? as f64;
    let gauge = subscribers_now(proxy.admin).await;
    println!(
        "  (a) {n} subscribers open in {open_secs:.1} s (proxy says {gauge}); RSS {} -> {}",
        mib(rss_before),
        mib(rss_connected)
    );
    let sent0 = metric(proxy.admin, "profile_edge_notifications_sent_total", &[]).await;
    let cpu0 = cpu_secs(&pid)?;
    let bench0 = cpu_secs("self")?;
    let coll: Collection<Document> = mongo.db().collection(&stream);
    let share = ServerShare::start(&coll).await?;
    let posting = post_at_rate(&coll, 0, secs, 0).await?;
    let expected = posting.inserted * n as u64;
    let drain_secs = drain(|| subs.posts(), expected).await;
    let proxy_cpu = cpu_secs(&pid)? - cpu0;
    let server = share.finish().await?;
    let bench_cpu = cpu_secs("self")? - bench0;
    let rss_after = proxy.rss()? as f64;
    let hwm = proxy.hwm()? as f64;
    let text = load::metrics_text(proxy.admin).await?;
    let sent_metric = load::metric(&text, "profile_edge_notifications_sent_total", &[]) - sent0;
    let lagged_metric = load::metric(
        &text,
        "profile_edge_notifications_dropped_total",
        &["reason=\"lagged\""],
    );
    let unenriched: f64 = ["deadline", "failed"]
        .iter()
        .map(|r| {
            load::metric(
                &text,
                "profile_edge_notifications_unenriched_total",
                &[&format!("reason=\"{r}\"")],
            )
        })
        .sum();
    let stats = load::get_json(proxy.admin, "/admin/stats").await?;
    // The probe post is the first one published.
    let published = stats["change_streams"][0]["posts_published"]
        .as_f64()
        .unwrap_or(f64::NAN)
        - 1.0;
    let ends = subs.finish().await?;
    note_proxy_log(sec, &format!("{n} subscribers"), &proxy);
    drop(proxy);

    let mut samples = Samples::default();
    let mut disorder = 0;
    let mut sampled_subs = 0;
    for s in ends.iter().filter_map(|e| e.samples.as_ref()) {
        sampled_subs += 1;
        disorder += s.seqs.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        samples.lat_us.extend(&s.lat_us);
        samples.seqs.extend(&s.seqs);
        samples.enriched += s.enriched;
        samples.bad_json += s.bad_json;
    }
    let received: u64 = ends.iter().map(|e| e.posts).sum();
    let p = Phase {
        subs: n,
        expected,
        received,
        resyncs: ends.iter().map(|e| e.resyncs).sum(),
        ended: ends.iter().filter(|e| e.ended.is_some()).count(),
        short: ends.iter().filter(|e| e.posts < posting.inserted).count(),
        min_per_sub: ends.iter().map(|e| e.posts).min().unwrap_or(0),
        samples,
        server,
        sampled_subs,
        disorder,
        drain_secs,
        rss_before,
        rss_connected,
        rss_after,
        hwm,
        proxy_cpu,
        bench_cpu,
        published,
        sent_metric,
        lagged_metric,
        unenriched,
        posting,
    };
    let d = Dist::of(p.samples.lat_us.iter().copied());
    println!(
        "  (a) {n} subscribers: {} posts in {:.1} s, {} of {} events received, {} resyncs; latency p50 {} p99 {} max {}; proxy CPU {:.1} s",
        p.posting.inserted,
        p.posting.secs,
        p.received,
        p.expected,
        p.resyncs,
        fmt_us(d.p50 as f64),
        fmt_us(d.p99 as f64),
        fmt_us(d.max as f64),
        p.proxy_cpu
    );
    Ok(p)
}

fn cpu_per_1000(p: &Phase) -> f64 {
    p.proxy_cpu * 1000.0 * 1000.0 / (p.received.max(1) as f64)
}

fn rss_per_1000(p: &Phase) -> f64 {
    (p.rss_connected - p.rss_before) * 1000.0 / p.subs as f64
}

fn report_fanout(sec: &mut Section, phases: &[Phase], largest: usize) {
    if phases.is_empty() {
        return;
    }
    let mut t = Table::new(
        format!("(a) Delivery: posts inserted at {RATE:.0}/s into the watched collection, each to every subscriber (a fresh proxy per row); latency from just before the insert to the read that returned the event, on every {SAMPLE_EVERY}th subscriber"),
        &[
            "subscribers",
            "posts inserted (rate)",
            "events expected",
            "received",
            "lost",
            "resyncs",
            "deliveries/s",
            "subscribers short / min posts one got",
            "latency p50",
            "p99",
            "max",
            "sampled (subscribers, events)",
            "MongoDB's share: the bench's own change stream, p50 / p99",
        ],
    );
    for p in phases {
        let d = Dist::of(p.samples.lat_us.iter().copied());
        t.row(vec![
            p.subs.to_string(),
            format!(
                "{} in {:.1} s ({:.1}/s)",
                p.posting.inserted,
                p.posting.secs,
                p.posting.inserted as f64 / p.posting.secs.max(1e-9)
            ),
            p.expected.to_string(),
            p.received.to_string(),
            p.expected.saturating_sub(p.received).to_string(),
            p.resyncs.to_string(),
            format!(
                "{:.0}",
                p.received as f64 / (p.posting.secs + p.drain_secs).max(1e-9)
            ),
            format!("{} / {}", p.short, p.min_per_sub),
            fmt_us(d.p50 as f64),
            fmt_us(d.p99 as f64),
            fmt_us(d.max as f64),
            format!("{}, {}", p.sampled_subs, d.n),
            format!(
                "{} / {}",
                fmt_us(p.server.p50 as f64),
                fmt_us(p.server.p99 as f64)
            ),
        ]);
    }
    sec.tables.push(t);

    let mut c = Table::new(
        "(a) Cost: proxy RSS (VmRSS) before the subscribers connect, once all are connected, and after the run; proxy CPU (utime + stime) from the first insert until the last delivery; the marginal cost is what a delivery adds over the per-post work of the 1-subscriber run",
        &[
            "subscribers",
            "RSS before",
            "all connected",
            "after the run (peak)",
            "RSS per 1 000 subscribers",
            "proxy CPU (share of one core)",
            "CPU per post",
            "CPU per 1 000 deliveries",
            "marginal CPU per 1 000 deliveries",
            "bench process CPU",
        ],
    );
    let per_post = |p: &Phase| p.proxy_cpu * 1000.0 / p.posting.inserted.max(1) as f64;
    let single = phases.iter().find(|p| p.subs == 1);
    let marginal = |p: &Phase| {
        single
            .filter(|_| p.subs > 1)
            .map(|one| (per_post(p) - per_post(one)) / (p.subs - 1) as f64 * 1000.0)
    };
    for p in phases {
        c.row(vec![
            p.subs.to_string(),
            mib(p.rss_before),
            mib(p.rss_connected),
            format!("{} ({})", mib(p.rss_after), mib(p.hwm)),
            if p.subs > 1 {
                mib(rss_per_1000(p))
            } else {
                "-".into()
            },
            format!(
                "{:.2} s ({:.0} %)",
                p.proxy_cpu,
                100.0 * p.proxy_cpu / (p.posting.secs + p.drain_secs).max(1e-9)
            ),
            format!("{:.2} ms", per_post(p)),
            format!("{:.2} ms", cpu_per_1000(p)),
            marginal(p).map_or_else(|| "-".into(), |m| format!("{m:.2} ms")),
            format!("{:.2} s", p.bench_cpu),
        ]);
    }
    // The largest count against the next (same posting rate, fewer
    // subscribers), run minutes apart on one machine.
    let mut sizes: Vec<usize> = phases.iter().map(|p| p.subs).filter(|&n| n > 1).collect();
    sizes.sort_unstable();
    if let [.., small, big] = sizes[..] {
        if let (Some(b), Some(a)) = (
            phases.iter().find(|p| p.subs == big),
            phases.iter().find(|p| p.subs == small),
        ) {
            c.row(vec![
                format!("{big} / {small}"),
                String::new(),
                String::new(),
                String::new(),
                ratio(rss_per_1000(b) / rss_per_1000(a)),
                ratio(b.proxy_cpu / a.proxy_cpu),
                ratio(per_post(b) / per_post(a)),
                ratio(cpu_per_1000(b) / cpu_per_1000(a)),
                match (marginal(b), marginal(a)) {
                    (Some(x), Some(y)) => ratio(x / y),
                    _ => String::new(),
                },
                ratio(b.bench_cpu / a.bench_cpu),
            ]);
        }
    }
    sec.tables.push(c);

    if let Some(big) = phases.iter().find(|p| p.subs == largest) {
        let lost = big.expected.saturating_sub(big.received);
        sec.targets.push(Target::check(
            format!("events lost with {} subscribers at {RATE:.0} posts/s (goal 0)", big.subs),
            format!("{lost} of {}", big.expected),
            lost == 0,
            format!(
                "{} subscribers got fewer than the {} posts inserted; {} resyncs ({} lagged in the proxy's metric)",
                big.short, big.posting.inserted, big.resyncs, big.lagged_metric
            ),
        ));
    }
    for p in phases {
        let d = Dist::of(p.samples.lat_us.iter().copied());
        sec.notes.push(format!(
            "(a) {} subscriber(s): inserts took p50 {} / p99 {} ({} calls, at most {} posts in one); deliveries finished {:.1} s after the last insert; the proxy counted {:.0} posts published by the change stream, {:.0} events written (`profile_edge_notifications_sent_total`), {:.0} lagged, {:.0} posts sent unenriched; the sampled events: {} of {} enriched (userSnapshot present), {} out of order or repeated, {} unreadable; {} stream(s) ended early.",
            p.subs,
            fmt_us(p.posting.insert.p50 as f64),
            fmt_us(p.posting.insert.p99 as f64),
            p.posting.calls,
            p.posting.largest_batch,
            p.drain_secs,
            p.published,
            p.sent_metric,
            p.lagged_metric,
            p.unenriched,
            p.samples.enriched,
            d.n,
            p.disorder,
            p.samples.bad_json,
            p.ended
        ));
    }
    sec.notes.push(format!(
        "(a) Every post is one document insert (`userId` among {AUTHORS} authors, warmed into the proxy's memory tier first, `text`, `seq`, `sentUs`), one change-stream event, one run of `enrich_posts.wasm`, one broadcast; \"lost\" is expected (posts inserted x subscribers) minus what the subscribers counted. RSS per 1 000 subscribers is (all connected - before) / subscribers x 1 000; CPU per 1 000 deliveries is the proxy's CPU over the posting and the drain / events received x 1 000 (with few subscribers it is mostly the per-post work: change stream, policy, JSON); the marginal figure is (CPU per post - CPU per post with 1 subscriber) / (subscribers - 1) x 1 000. The likely reason a delivery costs less with more subscribers: a busier proxy finds several events ready when it gets to a stream and writes them together (fewer wake-ups and writes per event), which is also why latency grows instead of events being lost. The bench's own subscribers and SecantusDB share the 2 cores with the proxy: the bench process CPU column is what the readers cost."
    ));
}

// ------------------------------------------------------------ (b)

/// One run of the (b) phase: a reader, `stuck` connections that never
/// read, `paused` ones that read only after `PAUSE`.
struct Stuck {
    stuck: usize,
    paused: usize,
    posting: Posting,
    reader: SubEnd,
    /// The bench's own change stream: the server's share of the latency.
    server: Dist,
    paused_ends: Vec<SubEnd>,
    rss_before: f64,
    rss_connected: f64,
    timeline: Timeline,
    /// The kernel's TCP buffer memory (all sockets), pages.
    tcp_connected: Option<u64>,
    rss_end: f64,
    hwm: f64,
    gauge_connected: f64,
    gauge_end: f64,
    write_timeouts: f64,
    lagged: f64,
    /// The stuck connections, read at the end.
    drained: Vec<Drained>,
    proxy_cpu: f64,
}

/// What the phase saw while posting, sampled every 250 ms.
#[derive(Default)]
struct Timeline {
    rss_peak: f64,
    tcp_peak: Option<u64>,
    /// Seconds after the first insert when the proxy's stream count first
    /// fell below all connected, and when only the readers were left.
    first_closed: Option<f64>,
    all_closed: Option<f64>,
}

#[derive(Default)]
struct Drained {
    posts: u64,
    resyncs: u64,
    closed: bool,
    error: Option<String>,
}

/// `mem` of the `TCP:` line of `/proc/net/sockstat`: pages the kernel's
/// TCP buffers hold, all sockets of the machine.
fn tcp_mem_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let i = f.iter().position(|w| *w == "mem")?;
    f.get(i + 1)?.parse().ok()
}

fn fmt_pages(p: Option<u64>) -> String {
    p.map_or_else(|| "n/a".into(), |p| mib(p as f64 * 4096.0))
}

/// Samples the proxy's RSS, the machine's TCP memory and the proxy's
/// stream count until `done`; `all` streams were open, `readers` of them
/// keep reading.
async fn watch_phase(
    pid: u32,
    admin: SocketAddr,
    all: usize,
    readers: usize,
    t0: Instant,
    mut done: watch::Receiver<bool>,
) -> Timeline {
    let mut tl = Timeline::default();
    loop {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
            {
                tl.rss_peak = tl.rss_peak.max(kib * 1024.0);
            }
        }
        if let Some(p) = tcp_mem_pages() {
            tl.tcp_peak = Some(tl.tcp_peak.map_or(p, |q| q.max(p)));
        }
        let open = subscribers_now(admin).await;
        let at = t0.elapsed().as_secs_f64();
        if open < all as f64 && tl.first_closed.is_none() {
            tl.first_closed = Some(at);
        }
        if open <= readers as f64 && all > readers && tl.all_closed.is_none() {
            tl.all_closed = Some(at);
        }
        tokio::select! {
            _ = done.changed() => return tl,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Reads a stuck connection at last: what its socket holds, until the
/// proxy closes it or nothing comes for `quiet`.
async fn drain_stuck(mut stream: TcpStream, quiet: Duration) -> Drained {
    let mut r = Reader::new(false);
    let mut out = Drained::default();
    let limit = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout(quiet, stream.read(r.space())).await {
            Err(_) => break,
            Ok(Ok(0)) => {
                out.closed = true;
                break;
            }
            Ok(Ok(n)) => {
                if let Err(e) = r.feed(n, 0) {
                    out.error = Some(format!("{e:#}"));
                    break;
                }
                if r.st == St::Done {
                    out.closed = true;
                    break;
                }
            }
            Ok(Err(e)) => {
                out.closed = true;
                if e.kind() != std::io::ErrorKind::ConnectionReset {
                    out.error = Some(e.to_string());
                }
                break;
            }
        }
        if Instant::now() > limit {
            break;
        }
    }
    out.posts = r.posts;
    out.resyncs = r.resyncs;
    out
}

/// A subscriber that reads nothing for `pause`, then everything until
/// `stop`.
async fn paused_reader(
    mut stream: TcpStream,
    pause: Duration,
    mut stop: watch::Receiver<bool>,
) -> SubEnd {
    let mut r = Reader::new(false);
    let mut end = SubEnd::default();
    tokio::time::sleep(pause).await;
    end.ended = loop {
        let n = tokio::select! {
            biased;
            _ = stop.changed() => break None,
            n = stream.read(r.space()) => n,
        };
        match n {
            Ok(0) => break Some("closed by the proxy".to_string()),
            Ok(n) => {
                if let Err(e) = r.feed(n, 0) {
                    break Some(format!("{e:#}"));
                }
                if r.st == St::Done {
                    break Some("the stream ended".to_string());
                }
            }
            Err(e) => break Some(format!("read: {e}")),
        }
    };
    end.posts = r.posts;
    end.resyncs = r.resyncs;
    end
}

#[allow(clippy::too_many_arguments)]
async fn stuck_phase(
    ctx: &Ctx,
    sec: &mut Section,
    dir: &Path,
    sim: &SimOrigin,
    mongo: &Mongo,
    stuck_n: usize,
    paused_n: usize,
    secs: u64,
    step: usize,
) -> Result<Stuck> {
    let stream = format!("posts_stuck_{step}");
    let proxy = start_proxy(ctx, dir, sim, mongo, &stream).await?;
    let pid = proxy.guard.pid().to_string();
    let rss_before = proxy.rss()? as f64;
    let reader = Subscribers::open(proxy.addr, 1).await?;
    // Open, send the request, never read (or not before PAUSE).
    let mut stuck = Vec::with_capacity(stuck_n);
    for _ in 0..stuck_n {
        stuck.push(open(proxy.addr, Some(STUCK_RCVBUF)).await?);
    }
    let mut paused = Vec::with_capacity(paused_n);
    for _ in 0..paused_n {
        paused.push(open(proxy.addr, Some(STUCK_RCVBUF)).await?);
    }
    let all = 1 + stuck_n + paused_n;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut gauge_connected = subscribers_now(proxy.admin).await;
    while gauge_connected < all as f64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        gauge_connected = subscribers_now(proxy.admin).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = proxy.rss()? as f64;
    let tcp_connected = tcp_mem_pages();
    println!(
        "  (b) {stuck_n} stuck and {paused_n} paused subscribers and 1 reader open (proxy says {gauge_connected}); RSS {} -> {}",
        mib(rss_before),
        mib(rss_connected)
    );
    let cpu0 = cpu_secs(&pid)?;
    let (done_tx, done_rx) = watch::channel(false);
    let watcher = tokio::spawn(watch_phase(
        proxy.guard.pid(),
        proxy.admin,
        all,
        1 + paused_n,
        Instant::now(),
        done_rx.clone(),
    ));
    let mut paused_tasks = tokio::task::JoinSet::new();
    for s in paused {
        paused_tasks.spawn(paused_reader(s, PAUSE, done_rx.clone()));
    }
    let coll: Collection<Document> = mongo.db().collection(&stream);
    let share = ServerShare::start(&coll).await?;
    let posting = post_at_rate(&coll, 0, secs, STUCK_PAD).await?;
    drain(|| reader.posts(), posting.inserted).await;
    let proxy_cpu = cpu_secs(&pid)? - cpu0;
    let server = share.finish().await?;
    let _ = done_tx.send(true);
    let timeline = watcher.await.unwrap_or_default();
    let mut paused_ends = Vec::with_capacity(paused_n);
    while let Some(e) = paused_tasks.join_next().await {
        paused_ends.push(e.context("paused reader panicked")?);
    }
    let rss_end = proxy.rss()? as f64;
    let hwm = proxy.hwm()? as f64;
    let gauge_end = subscribers_now(proxy.admin).await;
    let write_timeouts = metric(
        proxy.admin,
        "profile_edge_client_timeouts_total",
        &["kind=\"write\""],
    )
    .await;
    let mut ends = reader.finish().await?;
    let reader = ends.pop().unwrap_or_default();
    println!(
        "  (b) reader got {} of {} posts, {} resyncs; {gauge_end} streams open at the end; {write_timeouts} write timeouts; RSS peak {}",
        reader.posts,
        posting.inserted,
        reader.resyncs,
        mib(timeline.rss_peak)
    );
    // Now the stuck ones read what they were sent.
    let mut set = tokio::task::JoinSet::new();
    let gate = Arc::new(Semaphore::new(256));
    for s in stuck {
        let gate = Arc::clone(&gate);
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            drain_stuck(s, Duration::from_secs(2)).await
        });
    }
    let mut drained = Vec::with_capacity(stuck_n);
    while let Some(d) = set.join_next().await {
        drained.push(d.context("drain task panicked")?);
    }
    let lagged = metric(
        proxy.admin,
        "profile_edge_notifications_dropped_total",
        &["reason=\"lagged\""],
    )
    .await;
    note_proxy_log(sec, &format!("{stuck_n} stuck subscribers"), &proxy);
    Ok(Stuck {
        stuck: stuck_n,
        paused: paused_n,
        posting,
        reader,
        server,
        paused_ends,
        rss_before,
        rss_connected,
        timeline,
        tcp_connected,
        rss_end,
        hwm,
        gauge_connected,
        gauge_end,
        write_timeouts,
        lagged,
        drained,
        proxy_cpu,
    })
}

fn min_med_max(mut v: Vec<u64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_unstable();
    format!("{} / {} / {}", v[0], v[v.len() / 2], v[v.len() - 1])
}

fn reader_lat(x: &Stuck) -> Dist {
    Dist::of(
        x.reader
            .samples
            .as_ref()
            .map(|m| m.lat_us.clone())
            .unwrap_or_default(),
    )
}

/// The (b) table: the reader alone before, beside the stuck and paused
/// streams, and alone again after (`bases` = before, after).
fn report_stuck(sec: &mut Section, bases: [Option<&Stuck>; 2], s: &Stuck) {
    type Cell<'a> = Box<dyn Fn(&Stuck) -> String + 'a>;
    let cols: [(String, Option<&Stuck>); 3] = [
        ("1 reader alone, before".into(), bases[0]),
        (
            format!("1 reader + {} stuck + {} paused", s.stuck, s.paused),
            Some(s),
        ),
        ("1 reader alone, after".into(), bases[1]),
    ];
    // Rows shown for every run, and rows only the main run has.
    let every: Vec<(String, Cell)> = vec![
        (
            "posts inserted".into(),
            Box::new(|x: &Stuck| {
                format!(
                    "{} ({:.1}/s)",
                    x.posting.inserted,
                    x.posting.inserted as f64 / x.posting.secs.max(1e-9)
                )
            }),
        ),
        (
            "the reader: posts received".into(),
            Box::new(|x: &Stuck| {
                let in_order = x
                    .reader
                    .samples
                    .as_ref()
                    .is_some_and(|m| m.seqs.windows(2).all(|w| w[1] == w[0] + 1));
                format!(
                    "{} of {}, {} resyncs, {}{}",
                    x.reader.posts,
                    x.posting.inserted,
                    x.reader.resyncs,
                    if in_order {
                        "in order, none twice"
                    } else {
                        "NOT in order"
                    },
                    x.reader
                        .ended
                        .as_ref()
                        .map(|w| format!("; its stream ended: {w}"))
                        .unwrap_or_default()
                )
            }),
        ),
        (
            "the reader: insert-to-receipt p50 / p99 / max".into(),
            Box::new(|x: &Stuck| {
                let d = reader_lat(x);
                format!(
                    "{} / {} / {}",
                    fmt_us(d.p50 as f64),
                    fmt_us(d.p99 as f64),
                    fmt_us(d.max as f64)
                )
            }),
        ),
        (
            "MongoDB's share: the bench's own change stream on the collection, insert to event, p50 / p99 / max".into(),
            Box::new(|x: &Stuck| {
                format!(
                    "{} / {} / {}",
                    fmt_us(x.server.p50 as f64),
                    fmt_us(x.server.p99 as f64),
                    fmt_us(x.server.max as f64)
                )
            }),
        ),
        (
            "the reader beside the stuck streams: its p50 / p99 as a multiple of this run's".into(),
            Box::new(|x: &Stuck| {
                if std::ptr::eq(x, s) {
                    return "-".into();
                }
                let (with, alone) = (reader_lat(s), reader_lat(x));
                format!(
                    "{} / {}",
                    ratio(with.p50 as f64 / alone.p50.max(1) as f64),
                    ratio(with.p99 as f64 / alone.p99.max(1) as f64)
                )
            }),
        ),
        (
            "streams open (proxy's count): all connected / once the posting ended and the bench closed its paused streams".into(),
            Box::new(|x: &Stuck| format!("{} / {}", x.gauge_connected, x.gauge_end)),
        ),
        (
            "streams closed by `server.write_timeout` (`profile_edge_client_timeouts_total{kind=\"write\"}`)".into(),
            Box::new(|x: &Stuck| format!("{:.0}", x.write_timeouts)),
        ),
        (
            "`profile_edge_notifications_dropped_total{reason=\"lagged\"}`".into(),
            Box::new(|x: &Stuck| format!("{:.0}", x.lagged)),
        ),
        (
            "proxy RSS: before / all connected / peak while posting (every 250 ms) / end".into(),
            Box::new(|x: &Stuck| {
                format!(
                    "{} / {} / {} / {}",
                    mib(x.rss_before),
                    mib(x.rss_connected),
                    mib(x.timeline.rss_peak),
                    mib(x.rss_end)
                )
            }),
        ),
        (
            "kernel TCP buffers, whole machine (`/proc/net/sockstat`): all connected / peak".into(),
            Box::new(|x: &Stuck| {
                format!(
                    "{} / {}",
                    fmt_pages(x.tcp_connected),
                    fmt_pages(x.timeline.tcp_peak)
                )
            }),
        ),
        (
            "proxy CPU over the posting".into(),
            Box::new(|x: &Stuck| {
                format!(
                    "{:.2} s ({:.1} ms per post)",
                    x.proxy_cpu,
                    x.proxy_cpu * 1000.0 / x.posting.inserted.max(1) as f64
                )
            }),
        ),
    ];
    let main_only: Vec<(String, String)> = vec![
        (
            "stuck streams closed: first / last, seconds after the first insert".into(),
            format!(
                "{} / {}",
                s.timeline
                    .first_closed
                    .map_or_else(|| "none".into(), |t| format!("{t:.1} s")),
                s.timeline
                    .all_closed
                    .map_or_else(|| "not all".into(), |t| format!("{t:.1} s")),
            ),
        ),
        (
            "stuck streams read at the end: posts they had been sent (min / median / max)".into(),
            min_med_max(s.drained.iter().map(|x| x.posts).collect()),
        ),
        (
            "stuck streams read at the end: closed by the proxy / got `event: resync`".into(),
            format!(
                "{} / {} of {}",
                s.drained.iter().filter(|x| x.closed).count(),
                s.drained.iter().filter(|x| x.resyncs > 0).count(),
                s.stuck
            ),
        ),
        (
            format!(
                "paused streams (reading from {} s): posts received (min / median / max)",
                PAUSE.as_secs()
            ),
            min_med_max(s.paused_ends.iter().map(|x| x.posts).collect()),
        ),
        (
            "paused streams: got `event: resync` / ended early".into(),
            format!(
                "{} / {} of {}",
                s.paused_ends.iter().filter(|x| x.resyncs > 0).count(),
                s.paused_ends.iter().filter(|x| x.ended.is_some()).count(),
                s.paused
            ),
        ),
        (
            "proxy peak RSS over the reader-alone runs' peak (their mean): in all / per stuck or paused stream".into(),
            {
                let peak = |x: &Stuck| x.timeline.rss_peak.max(x.hwm);
                let alone: Vec<f64> = bases.iter().flatten().map(|x| peak(x)).collect();
                if alone.is_empty() {
                    "-".into()
                } else {
                    let over = peak(s) - alone.iter().sum::<f64>() / alone.len() as f64;
                    format!(
                        "{} / {:.1} KiB",
                        mib(over),
                        over / (s.stuck + s.paused).max(1) as f64 / 1024.0
                    )
                }
            },
        ),
    ];
    let mut header = vec!["figure"];
    header.extend(cols.iter().map(|(name, _)| name.as_str()));
    let mut t = Table::new(
        format!(
            "(b) Stuck subscribers: {} connections that open the stream and never read and {} that read nothing for the first {} s, beside 1 that reads; posts ({} KiB of filler each) inserted at {RATE:.0}/s for {:.0} s; the reader alone on a proxy of its own before and after, same posts, is the baseline",
            s.stuck,
            s.paused,
            PAUSE.as_secs(),
            STUCK_PAD / 1024,
            s.posting.secs
        ),
        &header,
    );
    for (name, f) in &every {
        let mut row = vec![name.clone()];
        row.extend(cols.iter().map(|(_, x)| x.map_or_else(|| "-".into(), f)));
        t.row(row);
    }
    for (name, v) in main_only {
        t.row(vec![name, "-".into(), v, "-".into()]);
    }
    sec.tables.push(t);
    let errors: Vec<&String> = s.drained.iter().filter_map(|x| x.error.as_ref()).collect();
    sec.targets.push(Target::check(
        format!(
            "with {} stuck and {} paused subscribers, a reading subscriber gets every post",
            s.stuck, s.paused
        ),
        format!("{} of {}", s.reader.posts, s.posting.inserted),
        s.reader.posts == s.posting.inserted && s.reader.resyncs == 0,
        format!("{} resyncs", s.reader.resyncs),
    ));
    sec.notes.push(format!(
        "(b) A stuck subscriber fills the socket buffers between it and the proxy (the kernel's), then its stream's writes block; the proxy closes it {WRITE_TIMEOUT_S} s later (`server.write_timeout`, default). It holds no event back for the others: every stream reads one shared broadcast buffer of `client_queue` (256) events, and a stream further behind than that gets `event: resync` when it next reads it, which is what the paused streams show. Posts in this phase carry {} KiB of filler in `text` and the stuck sockets have SO_RCVBUF {} KiB: loopback's 64 KiB segments let the kernel grow the proxy's send buffer of a connection that reads nothing to megabytes (2 000 plain posts, 20 s of them, fitted in a trial), so with plain posts the writes would block only after minutes. Those megabytes per stuck connection (see the sockstat row) are also why this phase has {} of them and not 1 000, on a machine shared with other work. The proxy's own memory stays bounded: what grows while posting, in the reader-alone runs too, is the replay buffer (`replay` = 10 000 events, here about 2.5 KiB each); beyond that, the stuck and paused streams added what the row above says (their connections included; RSS is too coarse to split it finer), and a stuck stream's share ends with the write timeout.{}",
        STUCK_PAD / 1024,
        STUCK_RCVBUF / 1024,
        s.stuck,
        if errors.is_empty() {
            String::new()
        } else {
            format!(
                " {} stuck connection(s) failed while read at the end, e.g. {}",
                errors.len(),
                errors[0]
            )
        }
    ));
}

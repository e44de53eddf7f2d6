//! Load generation: a small hyper-based HTTP/1.1 and h2c client, a
//! closed-loop runner with bounded concurrency that records one sample per
//! request, percentiles, Prometheus text parsing, and the `wrk` runner.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

pub type Body = Full<Bytes>;

/// Time allowed for one request (head and body) before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A complete response.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What one request of a load run sends.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub body: Option<Bytes>,
}

impl Req {
    pub fn get(path: impl Into<String>) -> Req {
        Req {
            method: Method::GET,
            path: path.into(),
            body: None,
        }
    }

    pub fn post_json(path: impl Into<String>, body: Vec<u8>) -> Req {
        Req {
            method: Method::POST,
            path: path.into(),
            body: Some(Bytes::from(body)),
        }
    }
}

async fn tcp(addr: SocketAddr) -> Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true).context("set_nodelay")?;
    Ok(stream)
}

/// `host` is set for HTTP/1.1; HTTP/2 carries the authority in the URI.
fn build(req: &Req, uri: String, host: Option<&str>) -> Result<Request<Body>> {
    let mut b = Request::builder().method(req.method.clone()).uri(uri);
    if let Some(host) = host {
        b = b.header(http::header::HOST, host);
    }
    if req.body.is_some() {
        b = b.header(http::header::CONTENT_TYPE, "application/json");
    }
    b.body(Full::new(req.body.clone().unwrap_or_default()))
        .context("build request")
}

async fn finish(resp: http::Response<hyper::body::Incoming>) -> Result<Reply> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.context("read body")?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// One keep-alive HTTP/1.1 connection.
pub struct H1 {
    addr: SocketAddr,
    host: String,
    sender: http1::SendRequest<Body>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> Result<H1> {
        let io = TokioIo::new(tcp(addr).await?);
        let (sender, conn) = http1::handshake(io)
            .await
            .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
        tokio::spawn(async move {
            // The connection ends when the sender is dropped or the peer closes.
            let _ = conn.await;
        });
        Ok(H1 {
            addr,
            host: addr.to_string(),
            sender,
        })
    }

    pub async fn send(&mut self, req: &Req) -> Result<Reply> {
        self.send_within(req, REQUEST_TIMEOUT).await
    }

    /// `send` with a time limit of the caller's (a slow admin operation).
    pub async fn send_within(&mut self, req: &Req, limit: Duration) -> Result<Reply> {
        let request = build(req, req.path.clone(), Some(&self.host))?;
        let fut = async {
            self.sender
                .ready()
                .await
                .with_context(|| format!("connection to {} not ready", self.addr))?;
            let resp = self
                .sender
                .send_request(request)
                .await
                .with_context(|| format!("{} {}", req.method, req.path))?;
            finish(resp).await
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| anyhow!("{} {} timed out after {limit:?}", req.method, req.path))?
    }
}

/// One h2c (prior knowledge) connection; clones share it and each request is
/// one stream.
#[derive(Clone)]
pub struct H2 {
    base: String,
    sender: http2::SendRequest<Body>,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> Result<H2> {
        let io = TokioIo::new(tcp(addr).await?);
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .with_context(|| format!("h2c handshake with {addr}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2 {
            base: format!("http://{addr}"),
            sender,
        })
    }

    pub async fn send(&mut self, req: &Req) -> Result<Reply> {
        let request = build(req, format!("{}{}", self.base, req.path), None)?;
        let fut = async {
            let resp = self
                .sender
                .send_request(request)
                .await
                .with_context(|| format!("{} {}", req.method, req.path))?;
            finish(resp).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("{} {} timed out", req.method, req.path))?
    }
}

/// One request on a fresh connection.
pub async fn once(addr: SocketAddr, req: &Req) -> Result<Reply> {
    H1::connect(addr).await?.send(req).await
}

pub async fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let reply = once(addr, &Req::get(path)).await?;
    if !reply.ok() {
        bail!("GET {path} answered {}", reply.status);
    }
    serde_json::from_slice(&reply.body).with_context(|| format!("GET {path}: not JSON"))
}

pub async fn metrics_text(admin: SocketAddr) -> Result<String> {
    let reply = once(admin, &Req::get("/metrics")).await?;
    if !reply.ok() {
        bail!("GET /metrics answered {}", reply.status);
    }
    String::from_utf8(reply.body.to_vec()).context("metrics are not UTF-8")
}

/// The value of the first series named `name` whose label set contains every
/// `labels` fragment (e.g. `plugin="enrich-posts"`); 0 when absent.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, label_part) = match series.split_once('{') {
            Some((n, rest)) => (n, rest),
            None => (series, ""),
        };
        if series_name == name && labels.iter().all(|l| label_part.contains(l)) {
            return value.trim().parse().unwrap_or(0.0);
        }
    }
    0.0
}

/// One request of a load run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Start, microseconds after the run's `t0`.
    pub at_us: u64,
    pub lat_us: u64,
    /// 2xx and fully read.
    pub ok: bool,
    /// What the run's check said about the reply (false on errors).
    pub flag: bool,
    /// Which request stream this was (caller-defined).
    pub tag: u8,
}

/// Bounds of a closed-loop run: `concurrency` workers, each on its own
/// keep-alive connection, take request numbers from a shared counter until
/// `max_requests` are taken or `max_time` has passed.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub concurrency: usize,
    pub max_requests: usize,
    pub max_time: Duration,
}

pub type MakeReq = Arc<dyn Fn(usize) -> (Req, u8) + Send + Sync>;
pub type Check = fn(&Reply) -> bool;

pub fn no_check(_: &Reply) -> bool {
    true
}

/// Runs a closed loop and returns the samples in completion order.
pub async fn closed_loop(
    addr: SocketAddr,
    spec: Spec,
    t0: Instant,
    make: MakeReq,
    check: Check,
) -> Result<Vec<Sample>> {
    closed_loop_until(
        addr,
        spec,
        t0,
        make,
        check,
        Arc::new(AtomicBool::new(false)),
    )
    .await
}

/// [`closed_loop`] that also ends (each worker after its request in
/// flight) once `stop` is set.
pub async fn closed_loop_until(
    addr: SocketAddr,
    spec: Spec,
    t0: Instant,
    make: MakeReq,
    check: Check,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Sample>> {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + spec.max_time;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..spec.concurrency.max(1) {
        let next = Arc::clone(&next);
        let make = Arc::clone(&make);
        let stop = Arc::clone(&stop);
        set.spawn(async move {
            let mut out = Vec::new();
            let mut conn: Option<H1> = None;
            let mut connect_failures = 0u32;
            loop {
                if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= spec.max_requests {
                    break;
                }
                let (req, tag) = make(i);
                let start = Instant::now();
                let at_us = micros(start.saturating_duration_since(t0));
                if conn.is_none() {
                    match H1::connect(addr).await {
                        Ok(c) => conn = Some(c),
                        Err(_) => {
                            connect_failures += 1;
                            out.push(Sample {
                                at_us,
                                lat_us: micros(start.elapsed()),
                                ok: false,
                                flag: false,
                                tag,
                            });
                            if connect_failures > 1000 {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let result = c.send(&req).await;
                let lat_us = micros(start.elapsed());
                let (ok, flag) = match &result {
                    Ok(reply) => (reply.ok(), check(reply)),
                    Err(_) => (false, false),
                };
                if result.is_err() {
                    conn = None;
                }
                out.push(Sample {
                    at_us,
                    lat_us,
                    ok,
                    flag,
                    tag,
                });
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = set.join_next().await {
        all.extend(joined.context("load worker panicked")?);
    }
    Ok(all)
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Latency summary in microseconds (nearest-rank percentiles).
#[derive(Clone, Copy, Debug, Default)]
pub struct Dist {
    pub n: usize,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

impl Dist {
    pub fn of(values: impl IntoIterator<Item = u64>) -> Dist {
        let mut v: Vec<u64> = values.into_iter().collect();
        if v.is_empty() {
            return Dist::default();
        }
        v.sort_unstable();
        let n = v.len();
        let rank = |p: f64| {
            let idx = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            v[idx]
        };
        Dist {
            n,
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[n - 1],
            mean: v.iter().map(|&x| x as f64).sum::<f64>() / n as f64,
        }
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `1.23 ms` / `456 us` style.
pub fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        "n/a".into()
    } else if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1_000_000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} us")
    }
}

/// Result of one `wrk` run.
#[derive(Clone, Debug, Default)]
pub struct Wrk {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    pub non2xx: u64,
    pub socket_errors: u64,
}

pub const WRK: &str = "/usr/bin/wrk";

/// `wrk -t2 -c{conns} -d{secs}s --latency URL`.
pub async fn wrk(url: &str, conns: usize, secs: u64) -> Result<Wrk> {
    wrk_with(url, conns, secs, &WrkOpts::default()).await
}

/// How `wrk` runs beyond connections and duration.
#[derive(Clone, Debug)]
pub struct WrkOpts {
    pub threads: usize,
    /// Run it under `taskset -c CPU`.
    pub cpu: Option<usize>,
    /// A Lua script (`-s`), e.g. one that picks a path per request.
    pub script: Option<std::path::PathBuf>,
}

impl Default for WrkOpts {
    fn default() -> Self {
        WrkOpts {
            threads: 2,
            cpu: None,
            script: None,
        }
    }
}

pub async fn wrk_with(url: &str, conns: usize, secs: u64, opts: &WrkOpts) -> Result<Wrk> {
    let mut cmd = match opts.cpu {
        Some(cpu) => {
            let mut c = tokio::process::Command::new(crate::pin::TASKSET);
            c.args(["-c", &cpu.to_string(), WRK]);
            c
        }
        None => tokio::process::Command::new(WRK),
    };
    cmd.args([
        format!("-t{}", opts.threads),
        format!("-c{conns}"),
        format!("-d{secs}s"),
        "--latency".to_string(),
    ]);
    if let Some(script) = &opts.script {
        cmd.arg("-s").arg(script);
    }
    cmd.arg(url)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    // A script may build a large request table before the clock starts.
    let out = tokio::time::timeout(Duration::from_secs(secs + 120), cmd.output())
        .await
        .map_err(|_| anyhow!("wrk did not finish"))?
        .with_context(|| format!("run {WRK}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

fn parse_wrk_latency(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1000.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1_000_000.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60_000_000.0)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|x| x * mult)
}

pub fn parse_wrk(text: &str) -> Result<Wrk> {
    let mut w = Wrk::default();
    let mut have_rps = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().context("Requests/sec")?;
            have_rps = true;
        } else if let Some(v) = t.strip_prefix("50%") {
            w.p50_us = parse_wrk_latency(v).context("50% latency")?;
        } else if let Some(v) = t.strip_prefix("99%") {
            w.p99_us = parse_wrk_latency(v).context("99% latency")?;
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            w.non2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            w.socket_errors = v
                .split(',')
                .filter_map(|part| part.split_whitespace().last())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum();
        } else if t.contains("requests in") {
            w.requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    if !have_rps {
        bail!("no Requests/sec line");
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:1/x
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   512.00us  100.00us   5.00ms   90.00%
  Latency Distribution
     50%  480.00us
     75%  600.00us
     90%  700.00us
     99%    1.20ms
  123456 requests in 10.00s, 50.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  12345.60
Transfer/sec:      5.00MB
";
        let w = parse_wrk(text).expect("parses");
        assert!((w.rps - 12345.6).abs() < 1e-6);
        assert!((w.p50_us - 480.0).abs() < 1e-6);
        assert!((w.p99_us - 1200.0).abs() < 1e-6);
        assert_eq!(w.requests, 123456);
        assert_eq!(w.non2xx, 7);
        assert_eq!(w.socket_errors, 3);
    }

    #[test]
    fn percentiles_and_median() {
        let d = Dist::of(1..=100);
        assert_eq!(d.p50, 50);
        assert_eq!(d.p99, 99);
        assert_eq!(d.max, 100);
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
    }

    #[test]
    fn metric_lookup() {
        let text = "# HELP x y\nprofile_edge_plugin_duration_seconds_sum{plugin=\"enrich-posts\"} 0.5\nprofile_edge_plugin_duration_seconds_count{plugin=\"enrich-posts\"} 10\n";
        assert!(
            (metric(
                text,
                "profile_edge_plugin_duration_seconds_count",
                &["plugin=\"enrich-posts\""]
            ) - 10.0)
                .abs()
                < 1e-9
        );
        assert_eq!(metric(text, "nope", &[]), 0.0);
    }
}

//! Reads the log and applies other instances' messages to this one's
//! memory, with blocking `XREAD`s on a connection of its own (named
//! `pe-backplane:INSTANCE` in `CLIENT LIST`). When the connection drops it
//! reconnects with backoff and asks `gap::decide` whether it can replay
//! what it missed or must clear memory. Bad entries are counted and
//! skipped; nothing read from Redis can stop the loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

use super::gap::{decide, Position, Resume, StreamId};
use super::message::{BadMessage, Kind, Message};
use super::reply::{entries_of, observe};
use super::stats::{bump, Stats};
use crate::lifecycle::Drain;
use crate::lookup::Profiles;
use crate::metrics::Metrics;
use crate::redis_link::{Link, Target};
use crate::tier::now_ms;

/// How long one `XREAD` blocks in Redis. The connection's response timeout
/// is this plus `READ_SLACK` (or the connect budget, if longer), so a silent
/// network is noticed within seconds, and a busy machine answering a
/// finished block late is not mistaken for one.
pub const BLOCK: Duration = Duration::from_secs(2);
const READ_SLACK: Duration = Duration::from_secs(2);
/// Entries per read.
const COUNT: usize = 512;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub struct Subscriber {
    pub target: Target,
    pub connect_timeout: Duration,
    pub log_key: String,
    pub catch_up: Duration,
    pub instance: Arc<str>,
    pub profiles: Arc<Profiles>,
    pub stats: Arc<Stats>,
    pub metrics: Arc<Metrics>,
}

/// Why a session ended.
enum End {
    Drained,
    Lost(String),
}

impl Subscriber {
    pub async fn run(self, drain: Drain) {
        let mut position: Option<Position> = None;
        let mut down_since = Instant::now();
        let mut backoff = BACKOFF_MIN;
        // One warning per outage; the retries in between are debug.
        let mut warned = false;
        loop {
            match self.session(&mut position, down_since, &drain).await {
                End::Drained => break,
                End::Lost(why) => {
                    if self.stats.connected.load(Ordering::Relaxed) {
                        // It was reading: a new outage, and a fresh backoff.
                        self.set_connected(false);
                        down_since = Instant::now();
                        backoff = BACKOFF_MIN;
                        warned = false;
                    }
                    if !warned {
                        tracing::warn!(error = %why, "backplane subscription is down; reconnecting");
                        warned = true;
                    } else {
                        tracing::debug!(error = %why, "backplane subscription still down");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = drain.wait() => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        // Stopped: the gauge is left to whoever replaces this backplane (a
        // new one sets it; `Invalidations` zeroes it when turned off).
        self.stats.connected.store(false, Ordering::Relaxed);
    }

    fn set_connected(&self, on: bool) {
        self.stats.connected.store(on, Ordering::Relaxed);
        self.metrics.backplane_connected.set(i64::from(on));
    }

    /// One connection: resume (replay or clear), then read until it fails.
    async fn session(
        &self,
        position: &mut Option<Position>,
        down_since: Instant,
        drain: &Drain,
    ) -> End {
        let mut conn = match self.connect().await {
            Ok(c) => c,
            Err(e) => return End::Lost(e),
        };
        let observed = match observe(&mut conn, &self.log_key).await {
            Ok(o) => o,
            Err(e) => return End::Lost(e),
        };
        let resume = decide(
            position.as_ref(),
            &observed,
            down_since.elapsed(),
            self.catch_up,
        );
        if position.is_some() {
            bump(&self.stats.reconnects);
        }
        let replay_until = match &resume {
            Resume::Start { .. } => {
                // Anything cached before the first connection was never
                // covered by the log: drop it (nothing, in the usual start).
                if self.profiles.memory_entries() > 0 {
                    self.clear("started without a backplane connection");
                } else {
                    self.profiles.forget_all();
                }
                StreamId::ZERO
            }
            Resume::Clear { reason, .. } => {
                self.clear(reason);
                StreamId::ZERO
            }
            Resume::Replay { from } => {
                bump(&self.stats.replays);
                tracing::info!(from = %from, "backplane reconnected; replaying missed invalidations");
                observed.log.map_or(StreamId::ZERO, |l| l.last_generated)
            }
        };
        let (mut last, mut added) = match resume {
            Resume::Replay { from } => (from, position.as_ref().and_then(|p| p.added)),
            Resume::Start { from } | Resume::Clear { from, .. } => (
                from,
                Some(observed.log.and_then(|l| l.entries_added).unwrap_or(0)),
            ),
        };
        *position = Some(Position {
            run_id: observed.run_id.clone(),
            last,
            added,
        });
        self.set_connected(true);
        tracing::info!(from = %last, "backplane subscription reading");
        loop {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.log_key)
                .arg(last.to_string());
            let read = cmd.query_async::<Value>(&mut conn);
            let reply = tokio::select! {
                r = read => r,
                _ = drain.wait() => return End::Drained,
            };
            let entries = match reply {
                Ok(v) => entries_of(v),
                Err(e) => return End::Lost(e.to_string()),
            };
            for (id, fields) in entries {
                if id <= last {
                    continue;
                }
                last = id;
                added = added.map(|n| n + 1);
                self.apply(&fields, id <= replay_until);
            }
            if let Some(p) = position.as_mut() {
                p.last = last;
                p.added = added;
            }
        }
    }

    async fn connect(&self) -> Result<Link, String> {
        connect_reader(
            &self.target,
            self.connect_timeout,
            &format!("pe-backplane:{}", self.instance),
            &self.log_key,
        )
        .await
    }

    fn clear(&self, reason: &str) {
        tracing::warn!(
            reason,
            "backplane cannot tell which invalidations were missed; clearing the memory tier"
        );
        self.profiles.forget_all();
        bump(&self.stats.memory_clears);
        self.metrics.backplane_memory_clears.inc();
    }

    fn apply(&self, fields: &[(Vec<u8>, Vec<u8>)], replayed: bool) {
        let ids = self.profiles.ids();
        let m = match Message::parse(fields, &ids) {
            Ok(m) => m,
            Err(BadMessage::Foreign(format)) => {
                bump(&self.stats.foreign);
                self.metrics.backplane("received", "foreign");
                tracing::debug!(%format, "foreign entry in the backplane log ignored");
                return;
            }
            Err(e) => {
                bump(&self.stats.malformed);
                self.metrics.backplane("received", "malformed");
                tracing::warn!(error = %e, "malformed backplane message ignored");
                return;
            }
        };
        if *m.from == *self.instance {
            bump(&self.stats.own);
            self.metrics.backplane("received", "own");
            return;
        }
        match m.kind {
            Kind::Clear => {
                tracing::warn!(from = %m.from,
                    "another instance cleared every tier (a change stream lost its history); clearing the memory tier");
                self.profiles.forget_all();
            }
            Kind::Invalidate | Kind::Refresh => {
                let held = self.profiles.forget(&m.id);
                if m.kind == Kind::Refresh && held.is_some() {
                    self.profiles.warm(&m.id, m.version);
                }
            }
        }
        let now_us = now_ms().saturating_mul(1000);
        self.metrics
            .invalidation_propagation
            .observe(now_us.saturating_sub(m.at_us) as f64 / 1e6);
        bump(&self.stats.received);
        if replayed {
            bump(&self.stats.replayed);
        }
        self.stats
            .last_message_ms
            .store(now_ms(), Ordering::Relaxed);
        self.metrics.backplane("received", "applied");
    }
}

/// A connection for blocking `XREAD`s of `BLOCK` on `key`, named `name` in
/// `CLIENT LIST` of the node holding it: its response timeout covers a
/// whole block plus slack. On a cluster it is a cluster connection of its
/// own, so the read follows the key through a failover or a slot move.
pub async fn connect_reader(
    target: &Target,
    connect_timeout: Duration,
    name: &str,
    key: &str,
) -> Result<Link, String> {
    let mut conn = target
        .dedicated(connect_timeout, BLOCK + READ_SLACK.max(connect_timeout))
        .await?;
    let mut setname = redis::cmd("CLIENT");
    setname.arg("SETNAME").arg(name);
    conn.on_node_of::<()>(&setname, key)
        .await
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

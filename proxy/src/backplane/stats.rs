//! The backplane's counters for `/admin/stats` (the metrics carry the
//! same numbers for Prometheus).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::{json, Value};

use crate::tier::now_ms;

#[derive(Default)]
pub struct Stats {
    pub connected: AtomicBool,
    pub sent: AtomicU64,
    pub send_failures: AtomicU64,
    pub dropped: AtomicU64,
    pub received: AtomicU64,
    pub own: AtomicU64,
    pub malformed: AtomicU64,
    pub foreign: AtomicU64,
    /// Reconnections that replayed the log.
    pub replays: AtomicU64,
    /// Messages applied from a replay.
    pub replayed: AtomicU64,
    pub memory_clears: AtomicU64,
    pub reconnects: AtomicU64,
    /// Unix ms of the last message applied from another instance; 0: none.
    pub last_message_ms: AtomicU64,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

pub fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub fn json(&self, instance: &str, channel: &str, queued: usize) -> Value {
        let last = get(&self.last_message_ms);
        let age = (last > 0).then(|| now_ms().saturating_sub(last) as f64 / 1000.0);
        json!({
            "enabled": true,
            "connected": self.connected.load(Ordering::Relaxed),
            "instance_id": instance,
            "channel": channel,
            "messages_sent": get(&self.sent),
            "messages_received": get(&self.received),
            "messages_ignored": {
                "own": get(&self.own),
                "malformed": get(&self.malformed),
                "foreign": get(&self.foreign),
            },
            "last_message_age_seconds": age,
            "replays": get(&self.replays),
            "replayed_messages": get(&self.replayed),
            "memory_clears": get(&self.memory_clears),
            "reconnects": get(&self.reconnects),
            "queued": queued,
            "send_failures": get(&self.send_failures),
            "dropped": get(&self.dropped),
        })
    }
}

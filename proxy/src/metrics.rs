//! Prometheus metrics. The names and labels in README "Metrics" are a contract;
//! every one is registered at start-up (with its known label values set to
//! zero) so that dashboards and alerts see them before the first event.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Latency buckets from 50 us to 10 s: warm hits live at the low end.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Plugin calls are micro-seconds when healthy and bounded by their deadline.
const PLUGIN_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
];
/// Values of the `route` label of `profile_edge_request_duration_seconds`.
/// The deadlines a client can run into (`profile_edge_client_timeouts_total`).
pub const CLIENT_TIMEOUTS: [&str; 4] = ["head", "idle", "write", "body"];
pub const ROUTES: [&str; 5] = ["profile", "batch", "enrich", "passthrough", "notifications"];
/// Propagation across instances: under a millisecond on loopback, seconds
/// when a subscriber replays after a reconnect.
const PROPAGATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];
/// `profile_edge_backplane_messages_total` label values, registered at start.
pub const BACKPLANE_OUTCOMES: [(&str, &[&str]); 2] = [
    ("sent", &["ok", "failed", "dropped"]),
    ("received", &["applied", "own", "malformed", "foreign"]),
];
/// `source` label values of the warm-up metrics: `POST /admin/warm` and the
/// periodic `[warm_up]` runs.
pub const WARM_UP_SOURCES: [&str; 2] = ["admin", "periodic"];
/// `outcome` label values of `profile_edge_warm_up_ids_total`.
pub const WARM_UP_OUTCOMES: [&str; 4] = ["cached", "loaded", "not_found", "failed"];
/// `outcome` label values of `profile_edge_sse_events_total`: events of an
/// `[[enrich]]` route's upstream event stream.
pub const SSE_EVENT_OUTCOMES: [&str; 4] = ["enriched", "passed", "failed", "oversize"];
/// `outcome` label values of `profile_edge_enriched_responses_total`, also
/// the values of the `x-enrichment` response header.
pub const ENRICH_OUTCOMES: [&str; 3] = ["ok", "failed", "skipped"];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 250.0];

pub struct Metrics {
    registry: Registry,
    pub lookups: IntCounterVec,
    pub origin_requests: IntCounterVec,
    pub origin_batch_size: Histogram,
    pub coalesced: IntCounter,
    pub stale_served: IntCounter,
    pub request_duration: HistogramVec,
    pub plugin_calls: IntCounterVec,
    pub plugin_duration: HistogramVec,
    pub reloads: IntCounterVec,
    pub invalidations: IntCounterVec,
    /// Beyond the original contract: open client connections on the main listener(s).
    pub connections: IntGauge,
    /// Beyond the original contract: client connections or requests cut off
    /// by a deadline, by kind (head|idle|write|body).
    pub client_timeouts: IntCounterVec,
    /// Beyond the original contract: debounced bursts of file events the
    /// config watcher handled (each re-reads the file; most change nothing).
    pub config_watch_events: IntCounter,
    /// Backplane messages by direction (sent|received) and outcome.
    pub backplane_messages: IntCounterVec,
    pub backplane_connected: IntGauge,
    /// From an invalidation on its first instance to memory removed here.
    pub invalidation_propagation: Histogram,
    /// Beyond the contract: memory tiers cleared because the backplane
    /// could not tell what this instance missed.
    pub backplane_memory_clears: IntCounter,
    /// Change-stream events by stream and operation (insert, update,
    /// replace, delete, drop, rename, dropDatabase, invalidate, or
    /// bad-document for one whose id could not be used).
    pub change_stream_events: IntCounterVec,
    /// Beyond the contract: change streams started over from now, by stream
    /// and reason (history-lost, invalidate); each cleared every tier.
    pub change_stream_restarts: IntCounterVec,
    /// Stored posts whose author snapshot was rewritten.
    pub post_snapshots_refreshed: IntCounter,
    /// Ids a warm-up looked up, by source (admin|periodic) and outcome.
    pub warm_up_ids: IntCounterVec,
    /// Warm-ups by source: accepted `POST /admin/warm` requests, periodic
    /// runs that had ids to load.
    pub warm_up_runs: IntCounterVec,
    /// Client lookups not counted for the periodic warm-up because
    /// `warm_up.max_tracked` distinct ids were already counted that interval.
    pub warm_up_untracked: IntCounter,
    /// Open notification streams on this instance.
    pub notification_subscribers: IntGauge,
    /// Post events written to notification streams.
    pub notifications_sent: IntCounter,
    /// Events a stream skipped, by reason: lagged (the client fell more
    /// than `client_queue` behind), unknown-last-event-id (a resume the
    /// buffer no longer held); each is an `event: resync` to the client.
    pub notifications_dropped: IntCounterVec,
    /// Beyond the contract: posts sent unenriched, by reason (failed, deadline).
    pub notifications_unenriched: IntCounterVec,
    /// Beyond the contract: posts relayed to the rest of the fleet through
    /// the backplane's Redis, by direction (sent|received) and outcome.
    pub notifications_relayed: IntCounterVec,
    /// Beyond the contract: events of `[[enrich]]` routes' upstream event
    /// streams, by outcome: enriched, passed (nothing to enrich: no data,
    /// data not JSON, a comment, an event cut off by the stream's end),
    /// failed (the policy failed; sent as it came), oversize (over the
    /// route's `max_body_size`; forwarded untouched).
    pub sse_events: IntCounterVec,
    /// Beyond the contract: answers of `[[enrich]]` routes by what happened
    /// to them (`ENRICH_OUTCOMES`; event streams are counted per event in
    /// `sse_events`).
    pub enriched_responses: IntCounterVec,
    /// `request_duration` per route, resolved once (same order as `ROUTES`).
    route_durations: Vec<Histogram>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let lookups = counter_vec(
            "profile_edge_lookups_total",
            "Profile lookups per tier and result (hit|miss).",
            &["tier", "result"],
        );
        let origin_requests = counter_vec(
            "profile_edge_origin_requests_total",
            "Requests sent to the Officer origin, by kind (single|batch|passthrough) and status.",
            &["kind", "status"],
        );
        let origin_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "profile_edge_origin_batch_size",
                "Ids per origin batch call.",
            )
            .buckets(BATCH_BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let coalesced = IntCounter::new(
            "profile_edge_coalesced_total",
            "Lookups that joined a load already in flight instead of starting one.",
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let stale_served = IntCounter::new(
            "profile_edge_stale_served_total",
            "Stale profiles served because the origin failed (fail-safe).",
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let request_duration = histogram_vec(
            "profile_edge_request_duration_seconds",
            "Time to the response head, per route.",
            &["route"],
            LATENCY_BUCKETS,
        );
        let plugin_calls = counter_vec(
            "profile_edge_plugin_calls_total",
            "Plugin calls by outcome (ok|error|trap|timeout).",
            &["plugin", "outcome"],
        );
        let plugin_duration = histogram_vec(
            "profile_edge_plugin_duration_seconds",
            "Time spent inside a plugin call.",
            &["plugin"],
            PLUGIN_BUCKETS,
        );
        let reloads = counter_vec(
            "profile_edge_reloads_total",
            "Config and plugin reloads by outcome (ok|rejected).",
            &["kind", "outcome"],
        );
        let invalidations = counter_vec(
            "profile_edge_invalidations_total",
            "Profile invalidations by source.",
            &["source"],
        );
        let connections = IntGauge::new(
            "profile_edge_connections",
            "Open client connections on the main listener(s).",
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let client_timeouts = counter_vec(
            "profile_edge_client_timeouts_total",
            "Client connections closed or requests answered 408 by a deadline, by kind (head|idle|write|body).",
            &["kind"],
        );
        let config_watch_events = IntCounter::new(
            "profile_edge_config_watch_events_total",
            "Debounced bursts of file events in the config file's directory; each re-reads the file.",
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        for kind in CLIENT_TIMEOUTS {
            client_timeouts.with_label_values(&[kind]);
        }
        let backplane_messages = counter_vec(
            "profile_edge_backplane_messages_total",
            "Backplane messages by direction (sent|received) and outcome (sent: ok|failed|dropped; received: applied|own|malformed|foreign).",
            &["direction", "outcome"],
        );
        for (direction, outcomes) in BACKPLANE_OUTCOMES {
            for outcome in outcomes {
                backplane_messages.with_label_values(&[direction, outcome]);
            }
        }
        let backplane_connected = IntGauge::new(
            "profile_edge_backplane_connected",
            "1 while the backplane subscription is reading, else 0.",
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let invalidation_propagation = Histogram::with_opts(
            HistogramOpts::new(
                "profile_edge_invalidation_propagation_seconds",
                "From an invalidation on its first instance to memory removed on this one (sender's wall clock).",
            )
            .buckets(PROPAGATION_BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let backplane_memory_clears = IntCounter::new(
            "profile_edge_backplane_memory_clears_total",
            "Memory tiers cleared because the backplane could not tell which invalidations were missed.",
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let warm_up_ids = counter_vec(
            "profile_edge_warm_up_ids_total",
            "Ids looked up by a warm-up, by source (admin|periodic) and outcome (cached|loaded|not_found|failed).",
            &["source", "outcome"],
        );
        let warm_up_runs = counter_vec(
            "profile_edge_warm_up_runs_total",
            "Warm-ups by source (admin: accepted POST /admin/warm requests; periodic: runs with ids to load).",
            &["source"],
        );
        for source in WARM_UP_SOURCES {
            warm_up_runs.with_label_values(&[source]);
            for outcome in WARM_UP_OUTCOMES {
                warm_up_ids.with_label_values(&[source, outcome]);
            }
        }
        let warm_up_untracked = IntCounter::new(
            "profile_edge_warm_up_untracked_total",
            "Client lookups not counted for the periodic warm-up: warm_up.max_tracked distinct ids were already counted in that interval.",
        )
        .unwrap_or_else(|e| unreachable_metric(e));

        let change_stream_events = counter_vec(
            "profile_edge_change_stream_events_total",
            "Change-stream events by stream and operation (bad-document: skipped, its id unusable).",
            &["stream", "operation"],
        );
        let change_stream_restarts = counter_vec(
            "profile_edge_change_stream_restarts_total",
            "Change streams started over from now (profile-updates streams clear every tier first), by stream and reason (history-lost|invalidate).",
            &["stream", "reason"],
        );
        let post_snapshots_refreshed = IntCounter::new(
            "profile_edge_post_snapshots_refreshed_total",
            "Stored posts whose author snapshot was rewritten by refresh-post-snapshots.",
        )
        .unwrap_or_else(|e| unreachable_metric(e));

        let notification_subscribers = IntGauge::new(
            "profile_edge_notification_subscribers",
            "Open notification streams (SSE) on this instance.",
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let notifications_sent = IntCounter::new(
            "profile_edge_notifications_sent_total",
            "Post events written to notification streams.",
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let notifications_dropped = counter_vec(
            "profile_edge_notifications_dropped_total",
            "Events a notification stream skipped, by reason (lagged|unknown-last-event-id); each became an `event: resync`.",
            &["reason"],
        );
        let notifications_unenriched = counter_vec(
            "profile_edge_notifications_unenriched_total",
            "New posts sent without enrichment, by reason (failed|deadline).",
            &["reason"],
        );
        let notifications_relayed = counter_vec(
            "profile_edge_notifications_relayed_total",
            "New posts relayed across the fleet, by direction (sent|received) and outcome (sent: ok|failed|dropped; received: delivered|own|malformed).",
            &["direction", "outcome"],
        );
        for (direction, outcome) in [
            ("sent", "ok"),
            ("sent", "failed"),
            ("sent", "dropped"),
            ("received", "delivered"),
            ("received", "own"),
            ("received", "malformed"),
        ] {
            notifications_relayed.with_label_values(&[direction, outcome]);
        }
        let sse_events = counter_vec(
            "profile_edge_sse_events_total",
            "Events of [[enrich]] routes' upstream event streams, by outcome (enriched|passed|failed|oversize).",
            &["outcome"],
        );
        for outcome in SSE_EVENT_OUTCOMES {
            sse_events.with_label_values(&[outcome]);
        }
        let enriched_responses = counter_vec(
            "profile_edge_enriched_responses_total",
            "Answers of [[enrich]] routes, by outcome: ok (enriched), failed (the policy failed; served per on_error), skipped (not enrichable: non-2xx, not JSON, compressed or over max_body_size).",
            &["outcome"],
        );
        for outcome in ENRICH_OUTCOMES {
            enriched_responses.with_label_values(&[outcome]);
        }
        for reason in ["lagged", "unknown-last-event-id"] {
            notifications_dropped.with_label_values(&[reason]);
        }
        for reason in ["failed", "deadline"] {
            notifications_unenriched.with_label_values(&[reason]);
        }

        for tier in ["memory", "redis", "mongo", "origin"] {
            for result in ["hit", "miss"] {
                lookups.with_label_values(&[tier, result]);
            }
        }
        for kind in ["config", "plugin"] {
            for outcome in ["ok", "rejected"] {
                reloads.with_label_values(&[kind, outcome]);
            }
        }
        for source in ["admin", "event", "change-stream"] {
            invalidations.with_label_values(&[source]);
        }
        for kind in ["single", "batch", "passthrough"] {
            origin_requests.with_label_values(&[kind, "200"]);
        }
        let route_durations = ROUTES
            .iter()
            .map(|r| request_duration.with_label_values(&[r]))
            .collect();

        let m = Metrics {
            registry,
            lookups,
            origin_requests,
            origin_batch_size,
            coalesced,
            stale_served,
            request_duration,
            plugin_calls,
            plugin_duration,
            reloads,
            invalidations,
            connections,
            client_timeouts,
            config_watch_events,
            backplane_messages,
            backplane_connected,
            invalidation_propagation,
            backplane_memory_clears,
            change_stream_events,
            change_stream_restarts,
            post_snapshots_refreshed,
            warm_up_ids,
            warm_up_runs,
            warm_up_untracked,
            notification_subscribers,
            notifications_sent,
            notifications_dropped,
            notifications_unenriched,
            notifications_relayed,
            sse_events,
            enriched_responses,
            route_durations,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.lookups.clone()),
            Box::new(m.origin_requests.clone()),
            Box::new(m.origin_batch_size.clone()),
            Box::new(m.coalesced.clone()),
            Box::new(m.stale_served.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.plugin_calls.clone()),
            Box::new(m.plugin_duration.clone()),
            Box::new(m.reloads.clone()),
            Box::new(m.invalidations.clone()),
            Box::new(m.connections.clone()),
            Box::new(m.client_timeouts.clone()),
            Box::new(m.config_watch_events.clone()),
            Box::new(m.backplane_messages.clone()),
            Box::new(m.backplane_connected.clone()),
            Box::new(m.invalidation_propagation.clone()),
            Box::new(m.backplane_memory_clears.clone()),
            Box::new(m.change_stream_events.clone()),
            Box::new(m.change_stream_restarts.clone()),
            Box::new(m.post_snapshots_refreshed.clone()),
            Box::new(m.notification_subscribers.clone()),
            Box::new(m.notifications_sent.clone()),
            Box::new(m.notifications_dropped.clone()),
            Box::new(m.notifications_unenriched.clone()),
            Box::new(m.notifications_relayed.clone()),
            Box::new(m.sse_events.clone()),
            Box::new(m.enriched_responses.clone()),
            Box::new(m.warm_up_ids.clone()),
            Box::new(m.warm_up_runs.clone()),
            Box::new(m.warm_up_untracked.clone()),
        ];
        for c in collectors {
            m.registry
                .register(c)
                .unwrap_or_else(|e| unreachable_metric(e));
        }
        m
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn client_timeout(&self, kind: &str) {
        self.client_timeouts.with_label_values(&[kind]).inc();
    }

    /// Records a request's time on its route without a label lookup.
    pub fn observe_route(&self, route_index: usize, seconds: f64) {
        if let Some(h) = self.route_durations.get(route_index) {
            h.observe(seconds);
        }
    }

    pub fn backplane(&self, direction: &str, outcome: &str) {
        self.backplane_messages
            .with_label_values(&[direction, outcome])
            .inc();
    }

    pub fn reload(&self, kind: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "rejected" };
        self.reloads.with_label_values(&[kind, outcome]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable_metric(e))
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| unreachable_metric(e))
}

/// Metric construction only fails on malformed names or duplicate
/// registration, both fixed at compile time here; a test below builds them.
fn unreachable_metric(e: prometheus::Error) -> ! {
    panic!("metric definition is invalid: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_metric_is_exported_from_the_start() {
        let m = Metrics::new();
        // Plugin series are created per plugin name when plugins load.
        m.plugin_duration.with_label_values(&["p"]);
        m.plugin_calls.with_label_values(&["p", "ok"]);
        let text = m.render();
        for name in [
            "profile_edge_lookups_total",
            "profile_edge_origin_requests_total",
            "profile_edge_origin_batch_size",
            "profile_edge_coalesced_total",
            "profile_edge_stale_served_total",
            "profile_edge_request_duration_seconds",
            "profile_edge_plugin_calls_total",
            "profile_edge_plugin_duration_seconds",
            "profile_edge_reloads_total",
            "profile_edge_invalidations_total",
            "profile_edge_backplane_messages_total",
            "profile_edge_backplane_connected",
            "profile_edge_invalidation_propagation_seconds",
            "profile_edge_warm_up_ids_total",
            "profile_edge_warm_up_runs_total",
            "profile_edge_warm_up_untracked_total",
            "profile_edge_sse_events_total{outcome=\"oversize\"} 0",
            "profile_edge_enriched_responses_total{outcome=\"skipped\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}

//! What a (re)connecting subscriber does about the messages it may have
//! missed: replay them from the log, or, when it cannot know it saw them
//! all, clear its memory tier. A pure function of what it remembers and
//! what Redis reports, so every case is a unit test.

use std::fmt;
use std::time::Duration;

/// A stream entry id, `MS-SEQ`; ordered like Redis orders them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    pub fn parse(text: &str) -> Option<StreamId> {
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// What a subscriber remembers of the session that ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The Redis server's `run_id` (a restart changes it).
    pub run_id: String,
    /// The last entry read (or the log's end when reading began).
    pub last: StreamId,
    /// The log's `entries-added` as of `last`: every append up to and
    /// including it. `None` when not known.
    pub added: Option<u64>,
}

/// The log as Redis reports it on connecting (`XINFO STREAM`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub run_id: String,
    /// `None` when the stream does not exist.
    pub log: Option<LogInfo>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogInfo {
    pub last_generated: StreamId,
    /// Entries appended over the log's life (`entries-added`, Redis 7);
    /// `None` from an older server.
    pub entries_added: Option<u64>,
    /// Entries in the log now.
    pub length: u64,
    pub first: Option<StreamId>,
}

/// What to do on connecting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// The first session: read from `from`.
    Start { from: StreamId },
    /// Every message since `from` is still in the log: replay them.
    Replay { from: StreamId },
    /// What was missed cannot be known: clear memory, read from `from`
    /// (the log's end).
    Clear {
        reason: &'static str,
        from: StreamId,
    },
}

/// Decides how to resume. `prev` is `None` on the first connection;
/// `down_for` is how long no session was reading; `catch_up` the history
/// a subscriber may replay.
///
/// Trimming removes the oldest entries, so nothing after our position was
/// lost if the log still starts at or before it. If it starts after, the
/// entries appended since our position (`entries-added` now minus then)
/// must all still be there (the log's length); any fewer were trimmed
/// unread.
pub fn decide(
    prev: Option<&Position>,
    now: &Observed,
    down_for: Duration,
    catch_up: Duration,
) -> Resume {
    let end = now.log.map_or(StreamId::ZERO, |l| l.last_generated);
    let Some(prev) = prev else {
        return Resume::Start { from: end };
    };
    let clear = |reason| Resume::Clear { reason, from: end };
    if prev.run_id != now.run_id {
        return clear(
            "Redis restarted or failed over: the messages sent meanwhile cannot be known",
        );
    }
    if down_for > catch_up {
        return clear("disconnected for longer than backplane.catch_up");
    }
    let Some(log) = now.log else {
        return if prev.last == StreamId::ZERO {
            Resume::Replay { from: prev.last }
        } else {
            clear("the invalidation log is gone")
        };
    };
    if log.last_generated < prev.last {
        return clear("the invalidation log was reset");
    }
    if log.first.is_some_and(|first| first <= prev.last) {
        return Resume::Replay { from: prev.last };
    }
    match (log.entries_added, prev.added) {
        (Some(now_added), Some(then)) if now_added.saturating_sub(then) <= log.length => {
            Resume::Replay { from: prev.last }
        }
        (Some(_), Some(_)) => clear(
            "messages missed were trimmed from the log (a gap longer than backplane.catch_up)",
        ),
        _ => clear("the log does not say whether messages missed were trimmed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    /// A log whose entries are `first..=last` (one per ms), after
    /// `added` appends.
    fn observed(run: &str, first: u64, last: u64, added: u64) -> Observed {
        Observed {
            run_id: run.into(),
            log: Some(LogInfo {
                last_generated: id(last),
                entries_added: Some(added),
                length: last + 1 - first,
                first: Some(id(first)),
            }),
        }
    }

    fn at(last: u64, added: u64) -> Position {
        Position {
            run_id: "r".into(),
            last: id(last),
            added: Some(added),
        }
    }

    const MIN: Duration = Duration::from_secs(60);
    const CATCH_UP: Duration = Duration::from_secs(600);

    #[test]
    fn stream_ids_parse_and_order() {
        assert_eq!(StreamId::parse("12-3"), Some(StreamId { ms: 12, seq: 3 }));
        assert_eq!(StreamId::parse("12"), None);
        assert_eq!(StreamId::parse("a-1"), None);
        assert!(StreamId { ms: 2, seq: 0 } > StreamId { ms: 1, seq: 9 });
        assert_eq!(StreamId { ms: 5, seq: 7 }.to_string(), "5-7");
    }

    #[test]
    fn first_connection_starts_at_the_end() {
        let r = decide(None, &observed("r", 10, 50, 50), MIN, CATCH_UP);
        assert_eq!(r, Resume::Start { from: id(50) });
        let empty = Observed {
            run_id: "r".into(),
            log: None,
        };
        assert_eq!(
            decide(None, &empty, MIN, CATCH_UP),
            Resume::Start {
                from: StreamId::ZERO
            }
        );
    }

    #[test]
    fn a_gap_still_in_the_log_is_replayed() {
        // Our last entry is still there.
        assert_eq!(
            decide(Some(&at(40, 40)), &observed("r", 30, 50, 50), MIN, CATCH_UP),
            Resume::Replay { from: id(40) }
        );
        // Trimmed up to ours, but every entry after it is there.
        assert_eq!(
            decide(Some(&at(40, 40)), &observed("r", 41, 50, 50), MIN, CATCH_UP),
            Resume::Replay { from: id(40) }
        );
        // A quiet log: ours trimmed by age, nothing appended since.
        let quiet = Observed {
            run_id: "r".into(),
            log: Some(LogInfo {
                last_generated: id(40),
                entries_added: Some(40),
                length: 0,
                first: None,
            }),
        };
        assert_eq!(
            decide(Some(&at(40, 40)), &quiet, MIN, CATCH_UP),
            Resume::Replay { from: id(40) }
        );
    }

    #[test]
    fn every_unknowable_gap_clears() {
        let cleared = |r: Resume| matches!(r, Resume::Clear { from, .. } if from == id(50));
        let prev = at(40, 40);
        assert!(
            cleared(decide(
                Some(&prev),
                &observed("other", 30, 50, 50),
                MIN,
                CATCH_UP
            )),
            "restart"
        );
        assert!(
            cleared(decide(
                Some(&prev),
                &observed("r", 42, 50, 50),
                MIN,
                CATCH_UP
            )),
            "41 trimmed unread"
        );
        assert!(
            cleared(decide(
                Some(&prev),
                &observed("r", 30, 50, 50),
                CATCH_UP * 2,
                CATCH_UP
            )),
            "too long"
        );
        let gone = Observed {
            run_id: "r".into(),
            log: None,
        };
        assert!(
            matches!(
                decide(Some(&prev), &gone, MIN, CATCH_UP),
                Resume::Clear { .. }
            ),
            "log gone"
        );
        assert!(
            matches!(
                decide(Some(&prev), &observed("r", 0, 30, 30), MIN, CATCH_UP),
                Resume::Clear { .. }
            ),
            "log reset"
        );
        let unknown = Position {
            added: None,
            ..prev
        };
        assert!(
            cleared(decide(
                Some(&unknown),
                &observed("r", 45, 50, 50),
                MIN,
                CATCH_UP
            )),
            "no count"
        );
    }
}

//! Which primary serves which slot, as `CLUSTER SLOTS` reports it. The
//! client library keeps its own map for routing (and follows MOVED/ASK);
//! this one is the proxy's: it groups a batch by node, so that each node
//! gets its own breaker and timeout, and lists the primaries a full scan
//! must visit. A stale map costs at most a wrong breaker for a moment:
//! commands still go where the library sends them.

use std::sync::Arc;

use redis::Value;

/// A node as `host:port`.
pub type Node = Arc<str>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Slot ranges (first, last, primary), sorted by first slot.
    ranges: Vec<(u16, u16, Node)>,
    /// Primaries that have at least one replica.
    replicated: Vec<Node>,
}

impl Topology {
    /// Reads a `CLUSTER SLOTS` reply; `None` when it has no usable range.
    /// An empty host (a node that does not know its own address) means
    /// the one that answered, `fallback_host`.
    pub fn parse(reply: &Value, fallback_host: &str) -> Option<Topology> {
        let Value::Array(items) = reply else {
            return None;
        };
        let mut ranges = Vec::with_capacity(items.len());
        let mut replicated = Vec::new();
        for item in items {
            let Value::Array(fields) = item else { continue };
            let (Some(first), Some(last), Some(Value::Array(primary))) = (
                fields.first().and_then(int),
                fields.get(1).and_then(int),
                fields.get(2),
            ) else {
                continue;
            };
            let (Some(host), Some(port)) =
                (primary.first().and_then(text), primary.get(1).and_then(int))
            else {
                continue;
            };
            let host = if host.is_empty() || host == "?" {
                fallback_host.to_string()
            } else {
                host
            };
            let (Ok(first), Ok(last)) = (u16::try_from(first), u16::try_from(last)) else {
                continue;
            };
            let node = Node::from(format!("{host}:{port}"));
            // Entries after the primary are its replicas.
            if fields.len() > 3 && !replicated.contains(&node) {
                replicated.push(node.clone());
            }
            ranges.push((first, last, node));
        }
        if ranges.is_empty() {
            return None;
        }
        ranges.sort_by_key(|r| r.0);
        Some(Topology { ranges, replicated })
    }

    /// The primary serving `slot`, if the map covers it.
    pub fn node_of(&self, slot: u16) -> Option<&Node> {
        let i = self.ranges.partition_point(|r| r.0 <= slot);
        let (first, last, node) = self.ranges.get(i.checked_sub(1)?)?;
        (*first <= slot && slot <= *last).then_some(node)
    }

    /// Every primary that serves a slot, each once.
    pub fn primaries(&self) -> Vec<Node> {
        let mut out: Vec<Node> = Vec::new();
        for (_, _, n) in &self.ranges {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
        out
    }

    /// Whether `node` is a primary with a replica (a removal there must
    /// reach one before it counts: see the Redis tier).
    pub fn has_replica(&self, node: &str) -> bool {
        self.replicated.iter().any(|n| &**n == node)
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn maps_slots_to_primaries() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("10.0.0.2", 7001),
                node("10.0.0.5", 7004),
            ]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("", 7000)]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("10.0.0.3", 7002),
            ]),
        ]);
        let t = Topology::parse(&reply, "127.0.0.1").expect("parses");
        assert_eq!(t.node_of(0).map(|n| &**n), Some("127.0.0.1:7000"));
        assert_eq!(t.node_of(5460).map(|n| &**n), Some("127.0.0.1:7000"));
        assert_eq!(t.node_of(5461).map(|n| &**n), Some("10.0.0.2:7001"));
        assert_eq!(t.node_of(16383).map(|n| &**n), Some("10.0.0.3:7002"));
        assert_eq!(t.primaries().len(), 3);
        assert!(t.has_replica("10.0.0.2:7001"));
        assert!(!t.has_replica("10.0.0.3:7002"));
    }

    #[test]
    fn gaps_and_junk_are_not_guessed() {
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(100), Value::Int(200), node("h", 1)]),
            Value::Array(vec![Value::Int(300)]),
            Value::Nil,
        ]);
        let t = Topology::parse(&reply, "x").expect("one range");
        assert!(t.node_of(99).is_none() && t.node_of(201).is_none());
        assert!(t.node_of(150).is_some());
        assert!(Topology::parse(&Value::Nil, "x").is_none());
    }
}

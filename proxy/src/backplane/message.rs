//! One backplane message: a stream entry whose fields say which instance
//! invalidated (or refreshed) which id, under which version, and when.
//!
//! `pe` names the format (`1`); an entry without it, or with another value,
//! was not written by this version of profile-edge and is ignored as
//! foreign. An entry in our format with a missing or bad field is
//! malformed. Both are counted and never applied.

use crate::lookup::IdRules;

/// The format this build writes and reads.
pub const FORMAT: &str = "1";
/// Longest instance id accepted from the stream.
const MAX_FROM: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Drop the id from memory.
    Invalidate,
    /// Drop it, and re-read it if memory held it: the sender loaded the new
    /// value under `version`.
    Refresh,
    /// Drop everything (a change stream lost its history); `id` is empty.
    Clear,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Invalidate => "invalidate",
            Kind::Refresh => "refresh",
            Kind::Clear => "clear",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub id: String,
    /// The id's version in the top shared tier after the invalidation (0
    /// when unknown: no shared tier, or it could not be reached).
    pub version: u64,
    /// The sending instance.
    pub from: String,
    /// When the invalidation began on the sender, Unix microseconds (for
    /// the propagation histogram only; nothing depends on clocks agreeing).
    pub at_us: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadMessage {
    #[error("not a profile-edge message (format {0:?})")]
    Foreign(String),
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl Message {
    /// The stream entry's fields, in order.
    pub fn fields(&self) -> [(&'static str, String); 6] {
        [
            ("pe", FORMAT.to_string()),
            ("from", self.from.clone()),
            ("kind", self.kind.as_str().to_string()),
            ("id", self.id.clone()),
            ("version", self.version.to_string()),
            ("at", self.at_us.to_string()),
        ]
    }

    /// Reads an entry's fields; `ids` are the id rules in force (an id that
    /// this instance would refuse from a client is malformed here too).
    pub fn parse(fields: &[(Vec<u8>, Vec<u8>)], ids: &IdRules) -> Result<Message, BadMessage> {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.as_slice() == name.as_bytes())
                .map(|(_, v)| v.as_slice())
        };
        match get("pe") {
            Some(f) if f == FORMAT.as_bytes() => {}
            Some(f) => return Err(BadMessage::Foreign(String::from_utf8_lossy(f).into_owned())),
            None => return Err(BadMessage::Foreign(String::new())),
        }
        let text = |name: &str| -> Result<&str, BadMessage> {
            let v = get(name).ok_or_else(|| BadMessage::Malformed(format!("no `{name}`")))?;
            std::str::from_utf8(v)
                .map_err(|_| BadMessage::Malformed(format!("`{name}` is not UTF-8")))
        };
        let number = |name: &str| -> Result<u64, BadMessage> {
            let t = text(name)?;
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadMessage::Malformed(format!("`{name}` is not a number")));
            }
            t.parse()
                .map_err(|_| BadMessage::Malformed(format!("`{name}` is out of range")))
        };
        let kind = match text("kind")? {
            "invalidate" => Kind::Invalidate,
            "refresh" => Kind::Refresh,
            "clear" => Kind::Clear,
            other => {
                return Err(BadMessage::Malformed(format!(
                    "unknown kind {:?}",
                    other.chars().take(32).collect::<String>()
                )))
            }
        };
        let from = text("from")?;
        if from.is_empty() || from.len() > MAX_FROM || from.chars().any(char::is_control) {
            return Err(BadMessage::Malformed("bad `from`".into()));
        }
        let id = text("id")?;
        if kind == Kind::Clear {
            if !id.is_empty() {
                return Err(BadMessage::Malformed(
                    "`id` of a clear must be empty".into(),
                ));
            }
        } else if !ids.is_valid(id) {
            return Err(BadMessage::Malformed(
                "`id` does not match profiles.id_pattern".into(),
            ));
        }
        Ok(Message {
            kind,
            id: id.to_string(),
            version: number("version")?,
            from: from.to_string(),
            at_us: number("at")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    fn ids() -> IdRules {
        IdRules::new(Regex::new("^[a-z0-9]{1,8}$").expect("regex"), 10)
    }

    fn raw(fields: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn message() -> Message {
        Message {
            kind: Kind::Refresh,
            id: "ab1".into(),
            version: 42,
            from: "i-1".into(),
            at_us: 1_700_000_000_000_000,
        }
    }

    #[test]
    fn fields_round_trip() {
        let m = message();
        let fields: Vec<(Vec<u8>, Vec<u8>)> = m
            .fields()
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(Message::parse(&fields, &ids()), Ok(m));
    }

    #[test]
    fn a_clear_names_no_id() {
        let clear = Message {
            kind: Kind::Clear,
            id: String::new(),
            ..message()
        };
        let fields: Vec<(Vec<u8>, Vec<u8>)> = clear
            .fields()
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(Message::parse(&fields, &ids()), Ok(clear));
        let with_id: Vec<(Vec<u8>, Vec<u8>)> = fields
            .into_iter()
            .map(|(k, v)| {
                if k == b"id" {
                    (k, b"ab1".to_vec())
                } else {
                    (k, v)
                }
            })
            .collect();
        assert!(matches!(
            Message::parse(&with_id, &ids()),
            Err(BadMessage::Malformed(w)) if w.contains("clear")
        ));
    }

    #[test]
    fn other_formats_are_foreign() {
        assert!(matches!(
            Message::parse(&raw(&[("hello", "world")]), &ids()),
            Err(BadMessage::Foreign(_))
        ));
        assert!(matches!(
            Message::parse(&raw(&[("pe", "2"), ("id", "ab1")]), &ids()),
            Err(BadMessage::Foreign(f)) if f == "2"
        ));
    }

    #[test]
    fn bad_fields_are_malformed_and_named() {
        let ok = [
            ("pe", "1"),
            ("from", "i-1"),
            ("kind", "invalidate"),
            ("id", "ab1"),
            ("version", "3"),
            ("at", "5"),
        ];
        assert!(Message::parse(&raw(&ok), &ids()).is_ok());
        for (field, value, named) in [
            ("kind", "explode", "kind"),
            ("id", "../x", "id"),
            ("id", "", "id"),
            ("version", "-1", "version"),
            ("version", "99999999999999999999999", "version"),
            ("at", "soon", "at"),
            ("from", "", "from"),
        ] {
            let fields: Vec<(&str, &str)> = ok
                .iter()
                .map(|&(k, v)| if k == field { (k, value) } else { (k, v) })
                .collect();
            match Message::parse(&raw(&fields), &ids()) {
                Err(BadMessage::Malformed(why)) => {
                    assert!(why.contains(named), "{field}={value}: {why}")
                }
                other => panic!("{field}={value}: {other:?}"),
            }
        }
        let mut missing = raw(&ok);
        missing.retain(|(k, _)| k.as_slice() != b"version");
        assert!(
            matches!(Message::parse(&missing, &ids()), Err(BadMessage::Malformed(w)) if w.contains("version"))
        );
        let mut binary = raw(&ok);
        binary[3].1 = vec![0xff, 0xfe];
        assert!(
            matches!(Message::parse(&binary, &ids()), Err(BadMessage::Malformed(w)) if w.contains("UTF-8"))
        );
    }
}

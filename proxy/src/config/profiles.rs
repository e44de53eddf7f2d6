//! `[profiles]`: which requests are profile lookups (routes, id pattern)
//! and the limits on them.

use serde::Deserialize;

use super::Problem;
use crate::units::Dur;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProfilesConfig {
    /// Ids that do not match get 400 and never reach a tier or the origin.
    pub id_pattern: String,
    /// Most ids one batch request may ask for; more gets 413.
    pub max_request_ids: usize,
    /// How long a 404 from the origin is remembered.
    pub negative_ttl: Dur,
    /// Most "not found" entries one instance writes to the shared tiers per
    /// `negative_ttl`; beyond it they are kept in memory only.
    pub max_negative_entries: usize,
    /// The single-profile route, here and on the Officer; must end in `/{id}`.
    pub user_path: String,
    /// The batch route, here and on the Officer.
    pub batch_path: String,
    /// A top-level profile field that orders the origin's values (a number
    /// such as `version`, or an RFC 3339 time such as `updatedAt`); when
    /// set, no tier replaces a value with one of lower order. Off when
    /// absent.
    pub version_field: Option<String>,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        ProfilesConfig {
            id_pattern: "^[0-9a-fA-F-]{1,64}$".into(),
            max_request_ids: 1000,
            negative_ttl: Dur::secs(30),
            max_negative_entries: 10_000,
            user_path: "/api/users/{id}".into(),
            batch_path: "/api/users/batch".into(),
            version_field: None,
        }
    }
}

/// The part of `profiles.user_path` before `/{id}`, if the path is well formed.
pub fn user_path_prefix(path: &str) -> Option<&str> {
    let prefix = path.strip_suffix("/{id}")?;
    (path.starts_with('/') && !prefix.contains('{')).then_some(prefix)
}

impl ProfilesConfig {
    /// Problems under `profiles.*`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Err(e) = regex::Regex::new(&self.id_pattern) {
            // regex draws the pattern with a caret under the fault over
            // several lines; its last line says what is wrong.
            let text = e.to_string();
            let what = text
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .unwrap_or(&text);
            out.push(Problem::new(
                "profiles.id_pattern",
                format!("not a valid regex: {what}"),
            ));
        }
        if self.max_request_ids == 0 {
            out.push(Problem::new(
                "profiles.max_request_ids",
                "must be at least 1",
            ));
        }
        // Without this, a malformed path made the router fall back to
        // /api/users without a word.
        if user_path_prefix(&self.user_path).is_none() {
            out.push(Problem::new(
                "profiles.user_path",
                format!(
                    "{:?} must start with '/' and end in '/{{id}}', with no other '{{'",
                    self.user_path
                ),
            ));
        }
        if let Some(f) = &self.version_field {
            if f.trim().is_empty() || f.trim() != f {
                out.push(Problem::new(
                    "profiles.version_field",
                    format!("{f:?} must be a field name without surrounding spaces (leave the key out to turn it off)"),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_user_path(user_path: &str) -> ProfilesConfig {
        ProfilesConfig {
            user_path: user_path.into(),
            ..ProfilesConfig::default()
        }
    }

    #[test]
    fn user_path_must_end_in_id() {
        for ok in ["/api/users/{id}", "/{id}", "/v2/people/{id}"] {
            assert!(with_user_path(ok).validate().is_empty(), "{ok}");
        }
        for bad in [
            "/api/users",
            "/api/users/{id}/",
            "api/users/{id}",
            "/api/{org}/{id}",
            "",
        ] {
            let p = with_user_path(bad).validate();
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert_eq!(p[0].key, "profiles.user_path");
            assert!(p[0].reason.contains("/{id}"), "{p:?}");
        }
    }
}

//! Where a Redis is and how to reach it, as the config describes it:
//! standalone (one URL) or a cluster (seed URLs), TLS trust, and AUTH. The
//! password is never part of an `Endpoint` that can be printed: it stays in
//! the URL the operator wrote (shown redacted) or in an environment
//! variable named in config, read only when a client is built.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub cluster: bool,
    /// Standalone: one URL. Cluster: the seed nodes.
    pub urls: Vec<String>,
    /// PEM file of the CA that signed the servers' certificates (`rediss://`);
    /// absent: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// ACL user when the URLs name none.
    pub username: Option<String>,
    /// Environment variable holding the password, when the URLs hold none.
    pub password_env: Option<String>,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("cluster", &self.cluster)
            .field(
                "urls",
                &self.urls.iter().map(|u| redact(u)).collect::<Vec<_>>(),
            )
            .field("ca_file", &self.ca_file)
            .field("username", &self.username)
            .field("password_env", &self.password_env)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Endpoint {
    /// What logs and `/admin` show: mode and URLs with any password hidden.
    pub fn describe(&self) -> String {
        let urls: Vec<String> = self.urls.iter().map(|u| redact(u)).collect();
        if self.cluster {
            format!("cluster {}", urls.join(","))
        } else {
            urls.join(",")
        }
    }

    pub fn is_tls(&self) -> bool {
        self.urls.iter().any(|u| u.starts_with("rediss://"))
    }
}

/// `url` with the password of its userinfo (if any) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    // `redis://secret@host` is a password alone in the legacy form.
    let hidden = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{scheme}://{hidden}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_print() {
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(
            redact("rediss://app:s3cret@h:6380/0"),
            "rediss://app:***@h:6380/0"
        );
        assert_eq!(redact("redis://:s3cret@h"), "redis://:***@h");
        assert_eq!(redact("redis://s3cret@h"), "redis://***@h");
        assert_eq!(redact("redis://h/a@b"), "redis://h/a@b");
        assert!(!format!(
            "{:?}",
            super::Endpoint {
                cluster: true,
                urls: vec!["redis://u:pw@h:1".into()],
                ca_file: None,
                username: None,
                password_env: None,
                connect_timeout: std::time::Duration::from_secs(1),
            }
        )
        .contains("pw@"));
    }
}

//! `[admin]`: the admin listener and the bearer token that guards its
//! mutating endpoints.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{same_socket, Problem};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token for mutating endpoints, written in the file.
    pub token: Option<String>,
    /// Name of an environment variable that holds the bearer token.
    pub token_env: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
            token_env: None,
        }
    }
}

impl AdminConfig {
    /// The token in force: `token` wins over `token_env`; an unset or empty
    /// variable means no token.
    pub fn resolved_token(&self) -> Option<String> {
        if let Some(t) = self.token.as_ref().filter(|t| !t.is_empty()) {
            return Some(t.clone());
        }
        let var = self.token_env.as_ref()?;
        std::env::var(var).ok().filter(|t| !t.is_empty())
    }
}

impl AdminConfig {
    /// Problems under `admin.*`; `server_listen` is there because the two
    /// listeners cannot share an address.
    pub fn validate(&self, server_listen: SocketAddr) -> Vec<Problem> {
        let mut out = Vec::new();
        if same_socket(self.listen, server_listen) {
            out.push(Problem::new(
                "admin.listen",
                "must differ from server.listen",
            ));
        }
        if let Some(var) = &self.token_env {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                out.push(Problem::new(
                    "admin.token_env",
                    "must be an environment variable name",
                ));
            }
        }
        out
    }
}

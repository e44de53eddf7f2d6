//! Profile events (`POST /admin/events`): the body is checked, then goes
//! through the invalidation policy like a change stream's events
//! (`invalidation::policy`).

use serde_json::Value;

use crate::http::error::ProxyError;
use crate::invalidation::policy;
use crate::state::State;

/// Handles one event body; the answer lists what was done.
pub async fn handle(state: &State, body: &[u8]) -> Result<Value, ProxyError> {
    let event = policy::parse(body, &state.profiles.ids())?;
    Ok(policy::apply(state, &event, "event").await)
}

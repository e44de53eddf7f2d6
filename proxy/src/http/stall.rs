//! The timer behind "no progress for too long": armed when an I/O poll
//! returns Pending, reset by any progress. Shared by blocked client writes
//! (`write_timeout`) and paused upload bodies (`upload`).

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::Sleep;

pub struct StallTimer {
    limit: Duration,
    armed: Option<Pin<Box<Sleep>>>,
}

impl StallTimer {
    pub fn new(limit: Duration) -> StallTimer {
        StallTimer { limit, armed: None }
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Progress was made: the next stall starts a fresh timer.
    pub fn progressed(&mut self) {
        self.armed = None;
    }

    /// The poll it guards returned Pending: arms the timer if needed and
    /// registers `cx` with it. True once the stall has lasted the limit.
    pub fn stalled_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let timer = self
            .armed
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).is_ready()
    }
}

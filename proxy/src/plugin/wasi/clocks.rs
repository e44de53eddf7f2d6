//! `wasi:clocks`: the monotonic clock (nanoseconds since the process's
//! first reading) and the wall clock. Timers (`subscribe-*`) are not
//! provided: a policy has a deadline and nothing to wait for.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::{ComponentType, Lift, Lower};

use super::Interface;

/// `wasi:clocks/wall-clock.datetime`.
#[derive(ComponentType, Lift, Lower, Clone, Copy, Debug, PartialEq, Eq)]
#[component(record)]
pub struct Datetime {
    seconds: u64,
    nanoseconds: u32,
}

fn monotonic_now() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn wall_now() -> Datetime {
    // A clock set before 1970 reads as the epoch rather than failing the call.
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Datetime {
        seconds: d.as_secs(),
        nanoseconds: d.subsec_nanos(),
    }
}

pub(super) const MONOTONIC: Interface = Interface {
    name: "wasi:clocks/monotonic-clock",
    funcs: &["now", "resolution"],
    define: |linker| {
        linker.func_wrap("now", |_, (): ()| Ok((monotonic_now(),)))?;
        linker.func_wrap("resolution", |_, (): ()| Ok((1u64,)))
    },
};

pub(super) const WALL: Interface = Interface {
    name: "wasi:clocks/wall-clock",
    funcs: &["now", "resolution"],
    define: |linker| {
        linker.func_wrap("now", |_, (): ()| Ok((wall_now(),)))?;
        linker.func_wrap("resolution", |_, (): ()| {
            Ok((Datetime {
                seconds: 0,
                nanoseconds: 1,
            },))
        })
    },
};

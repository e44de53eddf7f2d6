//! `wasi:random`: random bytes and numbers from the host's generator
//! (a CSPRNG seeded by the OS, for both the secure and insecure
//! interfaces), and the seed Rust's `HashMap` asks for.

use rand::RngCore;

use super::Interface;

/// Most random bytes one call of `get-random-bytes` may ask for: the host
/// allocates them before the guest's memory limit can say no.
pub const MAX_RANDOM_BYTES: u64 = 1024 * 1024;

fn bytes(len: u64) -> wasmtime::Result<(Vec<u8>,)> {
    if len > MAX_RANDOM_BYTES {
        wasmtime::bail!(
            "asked for {len} random bytes at once; policies get at most {MAX_RANDOM_BYTES}"
        );
    }
    let mut buf = vec![0u8; len as usize];
    rand::rng().fill_bytes(&mut buf);
    Ok((buf,))
}

pub(super) const RANDOM: Interface = Interface {
    name: "wasi:random/random",
    funcs: &["get-random-bytes", "get-random-u64"],
    define: |linker| {
        linker.func_wrap("get-random-bytes", |_, (len,): (u64,)| bytes(len))?;
        linker.func_wrap("get-random-u64", |_, (): ()| Ok((rand::random::<u64>(),)))
    },
};

pub(super) const INSECURE: Interface = Interface {
    name: "wasi:random/insecure",
    funcs: &["get-insecure-random-bytes", "get-insecure-random-u64"],
    define: |linker| {
        linker.func_wrap("get-insecure-random-bytes", |_, (len,): (u64,)| bytes(len))?;
        linker.func_wrap("get-insecure-random-u64", |_, (): ()| {
            Ok((rand::random::<u64>(),))
        })
    },
};

pub(super) const INSECURE_SEED: Interface = Interface {
    name: "wasi:random/insecure-seed",
    funcs: &["insecure-seed"],
    define: |linker| {
        linker.func_wrap("insecure-seed", |_, (): ()| {
            Ok(((rand::random::<u64>(), rand::random::<u64>()),))
        })
    },
};

//! `wasi:io/error`, `wasi:io/streams` and `wasi:io/poll`: the output
//! streams behind stdout and stderr (writes land in the call's capture),
//! an input stream that is always at its end (stdin), and the pollables
//! of those streams, which are always ready (wasi-libc waits on one before
//! each write). Clock timers cannot be made, so nothing ever waits.

use wasmtime::component::{ComponentType, Lift, LinkerInstance, Lower, Resource};
use wasmtime::StoreContextMut;

use super::Interface;
use crate::plugin::host::HostState;

/// `wasi:io/error.error`; the shim never creates one.
pub struct IoError;
/// `wasi:io/streams.output-stream`: rep 1 is stdout, 2 stderr.
pub struct OutputStream;
/// `wasi:io/streams.input-stream`: stdin, always at its end.
pub struct InputStream;
/// `wasi:io/poll.pollable`: only streams make them, and they are ready.
pub struct Pollable;

/// `wasi:io/streams.stream-error`.
#[derive(ComponentType, Lift, Lower)]
#[component(variant)]
pub enum StreamError {
    #[component(name = "last-operation-failed")]
    LastOperationFailed(Resource<IoError>),
    #[component(name = "closed")]
    Closed,
}

type StreamResult<T> = Result<T, StreamError>;

/// How much a guest may write before it has to check again; writes past
/// the capture's cap are accepted and counted as dropped.
const WRITE_BUDGET: u64 = 64 * 1024;

pub(super) const ERROR: Interface = Interface {
    name: "wasi:io/error",
    funcs: &["[method]error.to-debug-string"],
    define: |linker| {
        linker.func_wrap(
            "[method]error.to-debug-string",
            |_, (_,): (Resource<IoError>,)| Ok((String::new(),)),
        )
    },
};

pub(super) const STREAMS: Interface = Interface {
    name: "wasi:io/streams",
    funcs: &[
        "[method]output-stream.check-write",
        "[method]output-stream.write",
        "[method]output-stream.blocking-write-and-flush",
        "[method]output-stream.flush",
        "[method]output-stream.blocking-flush",
        "[method]output-stream.subscribe",
        "[method]input-stream.subscribe",
        "[method]input-stream.read",
        "[method]input-stream.blocking-read",
        "[method]input-stream.skip",
        "[method]input-stream.blocking-skip",
    ],
    define: define_streams,
};

fn define_streams(linker: &mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "[method]output-stream.check-write",
        |_, (_,): (Resource<OutputStream>,)| Ok((StreamResult::Ok(WRITE_BUDGET),)),
    )?;
    for name in [
        "[method]output-stream.write",
        "[method]output-stream.blocking-write-and-flush",
    ] {
        linker.func_wrap(
            name,
            |mut store: StoreContextMut<'_, HostState>,
             (this, bytes): (Resource<OutputStream>, Vec<u8>)| {
                store.data_mut().output.write(this.rep(), &bytes);
                Ok((StreamResult::Ok(()),))
            },
        )?;
    }
    for name in [
        "[method]output-stream.flush",
        "[method]output-stream.blocking-flush",
    ] {
        linker.func_wrap(name, |_, (_,): (Resource<OutputStream>,)| {
            Ok((StreamResult::Ok(()),))
        })?;
    }
    linker.func_wrap(
        "[method]output-stream.subscribe",
        |_, (_,): (Resource<OutputStream>,)| Ok((Resource::<Pollable>::new_own(0),)),
    )?;
    linker.func_wrap(
        "[method]input-stream.subscribe",
        |_, (_,): (Resource<InputStream>,)| Ok((Resource::<Pollable>::new_own(0),)),
    )?;
    for name in [
        "[method]input-stream.read",
        "[method]input-stream.blocking-read",
    ] {
        linker.func_wrap(name, |_, (_, _): (Resource<InputStream>, u64)| {
            Ok((StreamResult::<Vec<u8>>::Err(StreamError::Closed),))
        })?;
    }
    for name in [
        "[method]input-stream.skip",
        "[method]input-stream.blocking-skip",
    ] {
        linker.func_wrap(name, |_, (_, _): (Resource<InputStream>, u64)| {
            Ok((StreamResult::<u64>::Err(StreamError::Closed),))
        })?;
    }
    Ok(())
}

pub(super) const POLL: Interface = Interface {
    name: "wasi:io/poll",
    funcs: &["[method]pollable.ready", "[method]pollable.block", "poll"],
    define: |linker| {
        linker.func_wrap(
            "[method]pollable.ready",
            |_, (_,): (Resource<Pollable>,)| Ok((true,)),
        )?;
        linker.func_wrap(
            "[method]pollable.block",
            |_, (_,): (Resource<Pollable>,)| Ok(()),
        )?;
        // Every pollable is ready: all of them, in order.
        linker.func_wrap("poll", |_, (all,): (Vec<Resource<Pollable>>,)| {
            Ok(((0..all.len() as u32).collect::<Vec<u32>>(),))
        })
    },
};

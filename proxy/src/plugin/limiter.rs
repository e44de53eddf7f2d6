//! A call's resource limiter: wasmtime's `StoreLimits` (memory cap, a few
//! instances, tables and memories), noting when the guest reached its
//! memory cap so that the call's error can say so plainly.

use wasmtime::{ResourceLimiter, StoreLimits};

pub struct CallLimiter {
    inner: StoreLimits,
    /// Set when a memory growth was refused (or failed): the trap that
    /// follows is the memory limit.
    pub memory_exceeded: bool,
}

impl CallLimiter {
    pub fn new(inner: StoreLimits) -> CallLimiter {
        CallLimiter {
            inner,
            memory_exceeded: false,
        }
    }
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum);
        if !matches!(allowed, Ok(true)) {
            self.memory_exceeded = true;
        }
        allowed
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_exceeded = true;
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

//! Guest stdout and stderr, captured in memory up to a capacity and drained
//! after each invocation — so an instance that serves many requests (reuse
//! mode) hands each request only its own output.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// An output pipe the host drains with [`CapturePipe::take`]. Like
/// Wasmtime's `MemoryOutputPipe`, a write past the capacity fails, so a guest
/// cannot make the host buffer more than it allows.
#[derive(Debug, Clone)]
pub(crate) struct CapturePipe {
    capacity: usize,
    buffer: Arc<Mutex<BytesMut>>,
}

impl CapturePipe {
    pub(crate) fn new(capacity: usize) -> CapturePipe {
        CapturePipe {
            capacity,
            buffer: Arc::default(),
        }
    }

    /// Everything written since the last `take`.
    pub(crate) fn take(&self) -> Bytes {
        std::mem::take(&mut *self.lock()).freeze()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BytesMut> {
        // A panic while appending bytes leaves them consistent enough for logs.
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn room(&self) -> usize {
        self.capacity.saturating_sub(self.lock().len())
    }
}

impl OutputStream for CapturePipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        let mut buffer = self.lock();
        if bytes.len() > self.capacity.saturating_sub(buffer.len()) {
            return Err(StreamError::Trap(wasmtime::format_err!(
                "output beyond the capture limit of {} bytes",
                self.capacity
            )));
        }
        buffer.extend_from_slice(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        match self.room() {
            // Full: no more bytes will ever fit in this invocation.
            0 => Err(StreamError::Closed),
            room => Ok(room),
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturePipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CapturePipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut buffer = self.lock();
        let n = buf.len().min(self.capacity.saturating_sub(buffer.len()));
        buffer.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CapturePipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturePipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

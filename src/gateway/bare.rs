//! The answers written below the router, each with the envelope (API.md §1).
//!
//! - hyper answers a request it cannot parse itself (`400` for a bad request line or
//!   header, `431` for too many or too large headers, `414` for a long URI) with an empty
//!   body, then closes. [`Enveloped`] wraps a connection's socket and replaces such an
//!   answer, recognised by its status and `content-length: 0` (every answer of ours has a
//!   body), with the same status carrying the envelope, a RequestId and a log line.
//! - A connection over `http.max_connections` gets [`refuse`]: a 503 envelope, then the
//!   connection is closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::AppState;
use super::envelope::{Meta, raw_error};
use crate::api::{ApiError, ErrorCode};

/// The answer that replaces hyper's bare one for `status`, if it is one of those.
fn replacement(state: &AppState, status: u16) -> Option<Vec<u8>> {
    let (code, message) = match status {
        400 => (
            ErrorCode::MalformedRequest,
            "the request is not valid HTTP/1.1: its request line or a header could not be parsed"
                .to_owned(),
        ),
        431 => (
            ErrorCode::HeadersTooLarge,
            format!(
                "the request's headers are too many (at most 100) or too large (at most \
                 http.max_header_bytes = {} bytes)",
                state.http.max_header_bytes
            ),
        ),
        414 => (
            ErrorCode::UriTooLong,
            "the request's URI is too long".to_owned(),
        ),
        _ => return None,
    };
    let meta = Meta::new(state.request_ids.next(), state.regions[0].clone());
    let e = ApiError::new(code, message.clone());
    let (status, wire, _) = code.wire();
    state.metrics.http.malformed_requests.inc();
    state
        .metrics
        .observe_request("Unknown", wire, Duration::ZERO);
    tracing::info!(
        target: "tagcast::request",
        request_id = %meta.request_id,
        status = status.as_u16(),
        code = wire,
        error = message.as_str(),
        "request"
    );
    Some(raw_error(&meta, &e))
}

/// The status of `head` if it is one of hyper's own bare answers: a status line, no body.
fn bare_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let status: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let fields = &head[..end + 2];
    let empty = fields
        .windows(21)
        .any(|w| w.eq_ignore_ascii_case(b"\r\ncontent-length: 0\r\n"));
    // The whole head is in this write (hyper writes a head at once), and nothing follows.
    (empty && end + 4 == head.len()).then_some(status)
}

/// A connection's socket whose bare hyper answers are replaced by enveloped ones.
pub struct Enveloped<S> {
    inner: S,
    state: Arc<AppState>,
    /// The replacement still to be written, and how much of it was.
    pending: Option<(Vec<u8>, usize)>,
}

impl<S> Enveloped<S> {
    pub fn new(inner: S, state: Arc<AppState>) -> Self {
        Enveloped {
            inner,
            state,
            pending: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> Enveloped<S> {
    /// Writes what is left of a replacement; ready once all of it is written.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.pending {
            if *done == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }

    /// `Some(len)` when `buf` is a bare answer, now replaced (`len` bytes taken).
    fn intercept(&mut self, buf: &[u8]) -> Option<usize> {
        let status = bare_status(buf)?;
        let bytes = replacement(&self.state, status)?;
        self.pending = Some((bytes, 0));
        Some(buf.len())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Enveloped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Enveloped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        if let Some(n) = self.intercept(buf) {
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        if let [only] = bufs
            && let Some(n) = self.intercept(only)
        {
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Longest a refused connection is kept: to write the 503 and read what the client sends
/// meanwhile (closing with unread data would reset the connection and lose the answer).
const REFUSE_FOR: Duration = Duration::from_secs(2);

/// Answers a connection over `http.max_connections` with a 503 envelope and closes it.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, state: &AppState) {
    let meta = Meta::new(state.request_ids.next(), state.regions[0].clone());
    let e = ApiError::new(
        ErrorCode::ServiceUnavailableTemp,
        format!(
            "the server has as many connections open as it may (http.max_connections = {}); retry shortly",
            state.http.max_connections
        ),
    );
    let bytes = raw_error(&meta, &e);
    let _ = tokio::time::timeout(REFUSE_FOR, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodiless_heads_are_bare_answers() {
        let bare =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(bare_status(bare), Some(431));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 120\r\n\r\n";
        assert_eq!(bare_status(ours), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}";
        assert_eq!(bare_status(with_body), None);
        assert_eq!(bare_status(b"{\"ResponseMetadata\":1}"), None);
    }
}

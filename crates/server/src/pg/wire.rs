//! The Postgres connection loop, over a socket that checks every frontend
//! message before pgwire decodes it.
//!
//! pgwire 0.41.1's decoder trusts the counts and lengths inside a message: a
//! Parse declaring 65,535 parameter types and sending none, or a Bind whose
//! counts run past the message end, panics in `bytes` (`advance out of
//! bounds`, `split_to out of bounds`). arrow-pg 0.16 pins pgwire ^0.41, so
//! instead of a newer pgwire we put [`Checked`] between the socket and
//! pgwire's framing: it reads whole messages, checks the framing and the
//! exact layout of each message type the way PostgreSQL's `pq_getmsg*`
//! functions do, and hands pgwire only messages that decode. The first one
//! that does not is answered, as PostgreSQL does, with a FATAL 08P01
//! (protocol_violation) ErrorResponse, and the connection is closed.
//!
//! It also answers SSL and GSS encryption requests with `N` (no TLS yet),
//! and notes query texts that are not valid UTF-8 ([`Undecodable`]): pgwire
//! decodes strings lossily, and the handlers refuse those texts with 22021.
//!
//! The loop itself is pgwire's `process_socket` (tokio/server.rs), with the
//! socket type ours.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use futures::{SinkExt, StreamExt};
use pgwire::api::{ClientInfo, DefaultClient, ErrorHandler, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::ErrorInfo;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{PgWireMessageServerCodec, process_error, process_message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// PostgreSQL's limits: a startup packet, a message that carries data
/// (query text, parameters, COPY data), and any other message.
const MAX_STARTUP: usize = 10_000;
const MAX_LARGE: usize = (1 << 30) - 1;
const MAX_SMALL: usize = 10_000;
const SSL_REQUEST: u32 = 80_877_103;
const GSS_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// At most this many undecodable texts are remembered per connection.
const UNDECODABLE_KEPT: usize = 16;

/// Query texts of one connection that were not valid UTF-8, as pgwire
/// decoded them (lossily), with PostgreSQL's message for each.
#[derive(Debug, Clone, Default)]
pub(crate) struct Undecodable(Arc<Mutex<VecDeque<(String, String)>>>);

impl Undecodable {
    fn note(&self, bytes: &[u8]) {
        let Err(e) = std::str::from_utf8(bytes) else { return };
        let start = e.valid_up_to();
        let end = start + e.error_len().unwrap_or(bytes.len() - start);
        let shown: Vec<String> = bytes[start..end].iter().map(|b| format!("0x{b:02x}")).collect();
        let message = format!("invalid byte sequence for encoding \"UTF8\": {}", shown.join(" "));
        let mut texts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if texts.len() == UNDECODABLE_KEPT {
            texts.pop_front();
        }
        texts.push_back((String::from_utf8_lossy(bytes).into_owned(), message));
    }

    /// If `text` is a text that arrived as invalid UTF-8: the error to give.
    pub(crate) fn take(&self, text: &str) -> Option<String> {
        if !text.contains(char::REPLACEMENT_CHARACTER) {
            return None;
        }
        let mut texts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let at = texts.iter().position(|(t, _)| t == text)?;
        texts.remove(at).map(|(_, message)| message)
    }
}

/// Why a frontend message was refused.
type Violation = String;

/// Reads one message body the way PostgreSQL's `pq_getmsg*` do.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Violation> {
        if n > self.0.len() {
            return Err("insufficient data left in message".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, Violation> {
        Ok(self.take(1)?[0])
    }

    fn int16(&mut self) -> Result<i16, Violation> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("two bytes")))
    }

    fn int32(&mut self) -> Result<i32, Violation> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("four bytes")))
    }

    fn count(&mut self) -> Result<usize, Violation> {
        usize::try_from(self.int16()?).map_err(|_| Violation::from("invalid message format"))
    }

    fn string(&mut self) -> Result<&'a [u8], Violation> {
        let end = self.0.iter().position(|&b| b == 0).ok_or_else(|| Violation::from("invalid string in message"))?;
        let s = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    fn end(&self) -> Result<(), Violation> {
        if self.0.is_empty() { Ok(()) } else { Err("invalid message format".into()) }
    }

    fn format_codes(&mut self, n: usize) -> Result<(), Violation> {
        for _ in 0..n {
            let code = self.int16()?;
            if !(0..=1).contains(&code) {
                return Err(format!("unsupported format code: {code}"));
            }
        }
        Ok(())
    }
}

/// Checks one typed message's body; notes undecodable query texts.
fn check_message(kind: u8, body: &[u8], undecodable: &Undecodable) -> Result<(), Violation> {
    let mut b = Body(body);
    match kind {
        b'Q' => undecodable.note(b.string()?),
        b'P' => {
            b.string()?;
            undecodable.note(b.string()?);
            let n = b.count()?;
            b.take(4 * n)?;
        }
        b'B' => {
            b.string()?;
            b.string()?;
            let formats = b.count()?;
            b.format_codes(formats)?;
            let parameters = b.count()?;
            if formats > 1 && formats != parameters {
                return Err(format!("bind message has {formats} parameter formats but {parameters} parameters"));
            }
            for _ in 0..parameters {
                let len = b.int32()?;
                if len < -1 {
                    return Err("invalid message format".into());
                }
                if len > 0 {
                    b.take(len as usize)?;
                }
            }
            let results = b.count()?;
            b.format_codes(results)?;
        }
        b'E' => {
            b.string()?;
            b.int32()?;
        }
        b'D' | b'C' => {
            let target = b.byte()?;
            if target != b'S' && target != b'P' {
                let what = if kind == b'D' { "DESCRIBE" } else { "CLOSE" };
                return Err(format!("invalid {what} message subtype {target}"));
            }
            b.string()?;
        }
        b'f' => {
            b.string()?;
        }
        b'S' | b'H' | b'c' | b'X' => {}
        b'd' | b'p' => return Ok(()),
        other => return Err(format!("invalid frontend message type {other}")),
    }
    b.end()
}

/// Checks a startup packet's body (after its length): the protocol code,
/// then for a startup message its name/value pairs.
fn check_startup(body: &[u8]) -> Result<(), Violation> {
    let mut b = Body(body);
    let code = b.int32()? as u32;
    match code {
        CANCEL_REQUEST => {
            if body.len() < 12 || body.len() > 4 + 256 {
                return Err("invalid length of cancel request packet".into());
            }
            Ok(())
        }
        _ if code >> 16 == 3 => {
            loop {
                let name = b.string()?;
                if name.is_empty() {
                    break;
                }
                b.string()?;
            }
            b.end()
        }
        _ => Err(format!("unsupported frontend protocol {}.{}: server supports 3.0", code >> 16, code & 0xffff)),
    }
}

/// A socket that hands pgwire only messages that decode: see the module
/// docs. After the first that does not, reads end and [`Self::violation`]
/// says why.
pub(crate) struct Checked<S> {
    inner: S,
    /// Bytes read, not yet checked (at most one incomplete message).
    raw: BytesMut,
    /// Checked bytes pgwire has not read yet.
    ready: BytesMut,
    /// Whether the next message is the startup packet (no type byte).
    startup: bool,
    violation: Option<Violation>,
    eof: bool,
    undecodable: Undecodable,
}

impl<S> Checked<S> {
    fn new(inner: S, raw: BytesMut, undecodable: Undecodable) -> Self {
        Self { inner, raw, ready: BytesMut::new(), startup: true, violation: None, eof: false, undecodable }
    }

    pub(crate) fn violation(&self) -> Option<&str> {
        self.violation.as_deref()
    }

    /// Moves every complete message of `raw` that checks to `ready`; stops
    /// at the first that does not.
    fn check_complete(&mut self) {
        while self.violation.is_none() {
            let header = if self.startup { 4 } else { 5 };
            if self.raw.len() < header {
                return;
            }
            let len_at = header - 4;
            let len = i32::from_be_bytes(self.raw[len_at..header].try_into().expect("four bytes"));
            let kind = if self.startup { 0 } else { self.raw[0] };
            let max = match kind {
                0 => MAX_STARTUP,
                b'Q' | b'P' | b'B' | b'd' | b'f' | b'p' => MAX_LARGE,
                _ => MAX_SMALL,
            };
            let min = if self.startup { 8 } else { 4 };
            let Some(len) = usize::try_from(len).ok().filter(|len| (min..=max).contains(len)) else {
                self.violation = Some(if self.startup {
                    "invalid length of startup packet".into()
                } else {
                    format!("invalid message length {len} for message type {}", kind as char)
                });
                return;
            };
            let total = len_at + len;
            if self.raw.len() < total {
                self.raw.reserve(total - self.raw.len());
                return;
            }
            let checked = if self.startup {
                check_startup(&self.raw[4..total])
            } else {
                check_message(kind, &self.raw[5..total], &self.undecodable)
            };
            match checked {
                Ok(()) => {
                    self.startup = false;
                    let message = self.raw.split_to(total);
                    self.ready.put(message);
                }
                Err(why) => self.violation = Some(why),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Checked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(out.remaining());
                out.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.violation.is_some() || this.eof {
                return Poll::Ready(Ok(())); // end of stream
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    this.eof = true;
                    // What is left is a torn message: pgwire sees the stream end.
                    this.raw.clear();
                }
                Poll::Ready(Ok(())) => {
                    this.raw.put_slice(buf.filled());
                    this.check_complete();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Checked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Runs `bytes` (typed frontend messages, as after startup) through the
/// checks, then decodes with pgwire what they let through; returns how many
/// messages decoded. For the fuzz targets (`fuzz/`) and tests: whatever the
/// input, this must not panic.
pub fn check_and_decode(bytes: &[u8]) -> usize {
    let mut checked = Checked::new((), BytesMut::new(), Undecodable::default());
    checked.startup = false;
    checked.raw.put_slice(bytes);
    checked.check_complete();
    let mut context = pgwire::messages::DecodeContext::new(pgwire::messages::ProtocolVersion::PROTOCOL3_0);
    context.awaiting_frontend_ssl = false;
    context.awaiting_frontend_startup = false;
    let mut decoded = 0;
    while let Ok(Some(_)) = PgWireFrontendMessage::decode(&mut checked.ready, &context) {
        decoded += 1;
    }
    decoded
}

/// What the client asked for before its startup packet.
enum Opening {
    /// The client went away.
    Gone,
    /// SSLRequest, and the server has TLS: answered `S`; the handshake follows.
    Tls,
    /// The start of a plaintext startup packet (GSS and, without TLS, SSL
    /// requests answered `N` before it).
    Plain(BytesMut),
}

/// Reads encryption requests until the client sends something else.
async fn opening(socket: &mut TcpStream, tls: bool) -> io::Result<Opening> {
    loop {
        let mut head = [0u8; 8];
        let mut read = 0;
        while read < head.len() {
            let n = socket.read(&mut head[read..]).await?;
            if n == 0 {
                return Ok(Opening::Gone);
            }
            read += n;
        }
        let len = u32::from_be_bytes(head[..4].try_into().expect("four bytes"));
        let code = u32::from_be_bytes(head[4..].try_into().expect("four bytes"));
        if len == 8 && code == SSL_REQUEST && tls {
            socket.write_all(b"S").await?;
            return Ok(Opening::Tls);
        }
        if len == 8 && (code == SSL_REQUEST || code == GSS_REQUEST) {
            socket.write_all(b"N").await?;
            continue;
        }
        return Ok(Opening::Plain(BytesMut::from(&head[..])));
    }
}

/// Reads the first 8 bytes of the startup packet from a TLS stream.
async fn startup_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<BytesMut>> {
    let mut head = [0u8; 8];
    let mut read = 0;
    while read < head.len() {
        let n = stream.read(&mut head[read..]).await?;
        if n == 0 {
            return Ok(None);
        }
        read += n;
    }
    Ok(Some(BytesMut::from(&head[..])))
}

/// A FATAL ErrorResponse, written before any startup (TLS required).
fn fatal_bytes(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', message)] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// TLS for the Postgres protocol: the acceptor, and whether plaintext is refused.
#[derive(Clone)]
pub(crate) struct PgTls {
    pub(crate) acceptor: Option<pgwire::tokio::TlsAcceptor>,
    pub(crate) required: bool,
}

/// Serves one Postgres connection: TLS when the client asks and the server
/// has it, then pgwire's message loop over [`Checked`].
pub(crate) async fn serve_connection<H: PgWireServerHandlers>(
    mut socket: TcpStream,
    peer: SocketAddr,
    undecodable: Undecodable,
    handlers: H,
    startup_timeout: Duration,
    tls: PgTls,
) -> io::Result<()> {
    let startup_deadline = tokio::time::sleep(startup_timeout);
    tokio::pin!(startup_deadline);
    let opening = tokio::select! {
        _ = &mut startup_deadline => return Ok(()),
        opening = opening(&mut socket, tls.acceptor.is_some()) => opening?,
    };
    match opening {
        Opening::Gone => Ok(()),
        Opening::Tls => {
            let Some(acceptor) = tls.acceptor.clone() else { return Ok(()) };
            let handshake = async move {
                let mut stream = acceptor.accept(socket).await?;
                let head = startup_head(&mut stream).await?;
                io::Result::Ok((stream, head))
            };
            let (stream, head) = tokio::select! {
                _ = &mut startup_deadline => return Ok(()),
                done = handshake => match done {
                    Ok(done) => done,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return Ok(());
                    }
                },
            };
            let Some(head) = head else { return Ok(()) };
            serve_stream(Checked::new(stream, head, undecodable), peer, true, handlers, startup_deadline).await
        }
        Opening::Plain(_) if tls.required => {
            let message = "TLS is required (server.tls.required): connect with sslmode=require or verify-full";
            socket.write_all(&fatal_bytes("28000", message)).await?;
            socket.shutdown().await
        }
        Opening::Plain(head) => {
            serve_stream(Checked::new(socket, head, undecodable), peer, false, handlers, startup_deadline).await
        }
    }
}

/// pgwire's message loop over one (plain or TLS) stream.
async fn serve_stream<S, H>(
    checked: Checked<S>,
    peer: SocketAddr,
    is_tls: bool,
    handlers: H,
    mut startup_deadline: Pin<&mut tokio::time::Sleep>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + std::fmt::Debug + 'static,
    H: PgWireServerHandlers,
{
    let mut socket = Framed::new(checked, PgWireMessageServerCodec::new(DefaultClient::new(peer, is_tls)));
    socket.set_state(PgWireConnectionState::AwaitingStartup);

    let startup_handler = handlers.startup_handler();
    let simple_query_handler = handlers.simple_query_handler();
    let extended_query_handler = handlers.extended_query_handler();
    let copy_handler = handlers.copy_handler();
    let cancel_handler = handlers.cancel_handler();
    let error_handler = handlers.error_handler();
    loop {
        let starting = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress
        );
        let message = if starting {
            tokio::select! {
                _ = &mut startup_deadline => None,
                message = socket.next() => message,
            }
        } else {
            socket.next().await
        };
        let message = match message {
            Some(Ok(message)) => message,
            other => {
                if let Some(why) = socket.get_ref().violation() {
                    tracing::debug!(%peer, reason = %why, "postgres protocol violation; closing the connection");
                    let error = ErrorInfo::new("FATAL".into(), "08P01".into(), why.to_string());
                    socket.send(PgWireBackendMessage::ErrorResponse(error.into())).await?;
                    return socket.close().await;
                }
                return match other {
                    Some(Err(e)) => Err(io::Error::other(e)),
                    _ => Ok(()),
                };
            }
        };
        // Terminate: the client is leaving and may wait for the socket to close.
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return Ok(());
        }
        let extended = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let processed = process_message(
            message,
            &mut socket,
            Arc::clone(&startup_handler),
            Arc::clone(&simple_query_handler),
            Arc::clone(&extended_query_handler),
            Arc::clone(&copy_handler),
            Arc::clone(&cancel_handler),
        )
        .await;
        if let Err(mut e) = processed {
            error_handler.on_error(&socket, &mut e);
            process_error(&mut socket, e, extended).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn checked(bytes: &[u8]) -> Checked<&'static [u8]> {
        let mut c = Checked::new(&b""[..], BytesMut::new(), Undecodable::default());
        c.startup = false;
        c.raw.put_slice(bytes);
        c.check_complete();
        c
    }

    #[test]
    fn well_formed_messages_pass_whole() {
        let mut bytes = message(b'P', b"s1\0select $1\0\0\x01\0\0\0\x17");
        bytes.extend(message(b'B', b"\0s1\0\0\x01\0\x01\0\x01\0\0\0\x011\0\0"));
        bytes.extend(message(b'E', b"\0\0\0\0\0"));
        bytes.extend(message(b'S', b""));
        let c = checked(&bytes);
        assert_eq!(c.violation(), None);
        assert_eq!(&c.ready[..], &bytes[..]);
    }

    #[test]
    fn counts_and_lengths_past_the_end_are_violations() {
        let cases: &[(&[u8], u8, &str)] = &[
            (b"\0select 1\0\xff\xff", b'P', "invalid message format"),
            (b"\0select 1\0\0\x02\0\0\0\x17", b'P', "insufficient data"),
            (b"\0\0\0\0\0\x01\x7f\xff\xff\xff", b'B', "insufficient data"),
            (b"\0\0\0\x02\0\0\0\0\0\x01\0\0\0\0\0\0", b'B', "2 parameter formats but 1 parameters"),
            (b"\0\0\0\x01\0\x05\0\0\0\0", b'B', "unsupported format code: 5"),
            (b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0", b'B', "invalid message format"),
            (b"\0\0\0\0\0\0\0\0\0\0\0", b'B', "invalid message format"),
            (b"select 1", b'Q', "invalid string"),
            (b"Xname\0", b'D', "invalid DESCRIBE message subtype 88"),
            (b"x", b'S', "invalid message format"),
            (b"", b'z', "invalid frontend message type 122"),
        ];
        for (body, kind, why) in cases {
            let c = checked(&message(*kind, body));
            assert!(c.violation().is_some_and(|v| v.contains(why)), "{}: {:?}", *kind as char, c.violation());
            assert!(c.ready.is_empty());
        }
        let c = checked(&[b'Q', 0xff, 0xff, 0xff, 0xff]);
        assert!(c.violation().is_some_and(|v| v.contains("invalid message length")), "{:?}", c.violation());
    }

    /// Random and mutated messages: what the checks let through, pgwire
    /// decodes without panicking (the fuzz target's property, bounded).
    #[test]
    fn what_passes_the_checks_decodes_without_panic() {
        let mut state = 0x5eed_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds: Vec<Vec<u8>> = vec![
            message(b'P', b"s1\0select $1\0\0\x01\0\0\0\x17"),
            message(b'B', b"\0s1\0\0\x01\0\x01\0\x01\0\0\0\x011\0\x02\0\0\0\x01"),
            message(b'E', b"\0\0\0\0\0"),
            message(b'D', b"Ss1\0"),
            message(b'C', b"Pp\0"),
            message(b'Q', b"select 1\0"),
            message(b'f', b"why\0"),
            message(b'S', b""),
        ];
        for _ in 0..200_000 {
            let mut m = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..=(next() % 4) {
                let at = (next() % m.len() as u64) as usize;
                match next() % 3 {
                    0 => m[at] = next() as u8,
                    1 => m.truncate(at.max(1)),
                    _ => m.insert(at, next() as u8),
                }
            }
            if next() % 2 == 0 && m.len() >= 5 {
                let len = (m.len() - 1) as i32;
                m[1..5].copy_from_slice(&len.to_be_bytes());
            }
            check_and_decode(&m);
        }
    }

    #[test]
    fn startup_packets_are_checked() {
        let mut startup = 196_608u32.to_be_bytes().to_vec();
        startup.extend_from_slice(b"user\0me\0\0");
        assert_eq!(check_startup(&startup), Ok(()));
        assert!(check_startup(&startup[..startup.len() - 1]).is_err());
        assert!(check_startup(&1234u32.to_be_bytes()).unwrap_err().contains("unsupported frontend protocol"));
    }

    #[test]
    fn invalid_utf8_texts_are_remembered_once() {
        let undecodable = Undecodable::default();
        check_message(b'Q', b"select '\xff'\0", &undecodable).unwrap();
        let lossy = String::from_utf8_lossy(b"select '\xff'").into_owned();
        assert_eq!(undecodable.take(&lossy).as_deref(), Some("invalid byte sequence for encoding \"UTF8\": 0xff"));
        assert_eq!(undecodable.take(&lossy), None);
        assert_eq!(undecodable.take("select 1"), None);
    }
}

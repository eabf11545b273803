//! The Postgres wire protocol by hand, for tests that must see exactly what
//! the server sends (which message, in which order) or send what no driver
//! would: message builders, a frame splitter and a raw session.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A frontend message: kind byte, length, body.
pub fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Appends a NUL-terminated string.
pub fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A protocol 3.0 startup packet for `user` on database `streamhouse`.
pub fn startup(user: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    cstr(&mut body, "user");
    cstr(&mut body, user);
    cstr(&mut body, "database");
    cstr(&mut body, "streamhouse");
    body.push(0);
    let mut m = (body.len() as i32 + 4).to_be_bytes().to_vec();
    m.extend(body);
    m
}

/// `Parse`: statement `name` of `sql`, parameter types left to the server.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, sql);
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &body)
}

/// `Bind`: portal `portal` of statement `statement`, parameters in text
/// (`None` is NULL), results in text.
pub fn bind(portal: &str, statement: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    cstr(&mut body, statement);
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for param in params {
        match param {
            Some(value) => {
                body.extend_from_slice(&(value.len() as i32).to_be_bytes());
                body.extend_from_slice(value.as_bytes());
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'B', &body)
}

/// `Describe` of a statement (`b'S'`) or portal (`b'P'`).
pub fn describe(target: u8, name: &str) -> Vec<u8> {
    let mut body = vec![target];
    cstr(&mut body, name);
    message(b'D', &body)
}

/// `Execute` of a portal, all rows (`max_rows` 0) or at most `max_rows`.
pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    body.extend_from_slice(&max_rows.to_be_bytes());
    message(b'E', &body)
}

/// `Close` of a statement (`b'S'`) or portal (`b'P'`).
pub fn close(target: u8, name: &str) -> Vec<u8> {
    let mut body = vec![target];
    cstr(&mut body, name);
    message(b'C', &body)
}

/// `Sync`.
pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}

/// A simple `Query`.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, sql);
    message(b'Q', &body)
}

/// Backend messages in `reply`, if it is well framed (`N` for a refused
/// SSL request may come first when `ssl_first`).
pub fn frames(reply: &[u8], ssl_first: bool) -> Option<Vec<(u8, &[u8])>> {
    let mut at = usize::from(ssl_first && reply.first() == Some(&b'N'));
    let mut out = Vec::new();
    while at < reply.len() {
        let kind = reply[at];
        let len = i32::from_be_bytes(reply.get(at + 1..at + 5)?.try_into().ok()?);
        let len = usize::try_from(len).ok().filter(|l| *l >= 4)?;
        let body = reply.get(at + 5..at + 1 + len)?;
        out.push((kind, body));
        at += 1 + len;
    }
    Some(out)
}

/// The field of an `ErrorResponse` body with code `field` (`b'C'`: SQLSTATE).
pub fn error_field(body: &[u8], field: u8) -> Option<String> {
    body.split(|b| *b == 0).find(|f| f.first() == Some(&field)).map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
}

/// The column names of a `RowDescription` body.
pub fn row_description(body: &[u8]) -> Option<Vec<String>> {
    let count = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut names = Vec::new();
    for _ in 0..count {
        let end = at + body.get(at..)?.iter().position(|b| *b == 0)?;
        names.push(String::from_utf8_lossy(&body[at..end]).into_owned());
        at = end + 1 + 18; // table oid, column, type oid, size, modifier, format
    }
    Some(names)
}

/// The number of columns of a `DataRow` body.
pub fn data_row_columns(body: &[u8]) -> Option<usize> {
    Some(i16::from_be_bytes(body.get(..2)?.try_into().ok()?) as usize)
}

/// A connection spoken to message by message.
pub struct RawSession {
    socket: TcpStream,
    pending: Vec<u8>,
}

impl RawSession {
    /// Connects as `user` and waits for the first ReadyForQuery.
    pub async fn connect(addr: SocketAddr, user: &str) -> anyhow::Result<Self> {
        let socket = TcpStream::connect(addr).await?;
        let mut session = Self { socket, pending: Vec::new() };
        session.send(&startup(user)).await?;
        session.until_ready().await?;
        Ok(session)
    }

    /// Sends bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        Ok(self.socket.write_all(bytes).await?)
    }

    /// Every backend message up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
        let mut out = Vec::new();
        loop {
            while self.pending.len() >= 5 {
                let len = i32::from_be_bytes(self.pending[1..5].try_into()?);
                let len = usize::try_from(len).ok().filter(|l| *l >= 4).context("bad backend frame length")?;
                if self.pending.len() < 1 + len {
                    break;
                }
                let frame: Vec<u8> = self.pending.drain(..1 + len).collect();
                let kind = frame[0];
                out.push((kind, frame[5..].to_vec()));
                if kind == b'Z' {
                    return Ok(out);
                }
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout(std::time::Duration::from_secs(30), self.socket.read(&mut buf))
                .await
                .context("no ReadyForQuery within 30 s")??;
            if n == 0 {
                bail!("the server closed the connection; got {out:?}");
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

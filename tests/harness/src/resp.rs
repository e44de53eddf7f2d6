//! Just enough of a Redis client for the harness to run and check the
//! servers it starts (`CLUSTER ...`, `INFO`, `MIGRATE`, `PING`): RESP2 over
//! a fresh loopback connection per command, plain or TLS. A fresh
//! connection each time keeps it simple and honest: a killed node is a
//! connect error at once, never a stale pooled socket.
//!
//! Not a client for the code under test (that is the proxy's own `redis`
//! crate); the harness has no `redis` dependency so that what it sees of a
//! server never goes through the code being tested.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use crate::loopback;

/// How long one command may take, connect included. `MIGRATE` of a batch
/// of keys is the slowest thing sent; the room is for a loaded machine.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// One RESP2 reply. A server error (`-ERR ...`, `-MOVED ...`) is a reply,
/// not an `io::Error`: callers look at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None` is the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text: a simple or bulk string (lossy UTF-8).
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of an array reply (empty for anything else).
    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(v)) => v,
            _ => &[],
        }
    }

    /// `Ok(self)` unless it is a server error, which becomes an
    /// `io::Error` naming `what` was sent.
    pub fn ok_or_err(self, what: &str) -> io::Result<Reply> {
        match self {
            Reply::Error(e) => Err(io::Error::other(format!("{what}: -{e}"))),
            r => Ok(r),
        }
    }
}

/// How to reach a node: plain TCP, or TLS trusting the harness's CA, and
/// the credentials to `AUTH` with first, if any.
#[derive(Clone, Default)]
pub(crate) struct Dialer {
    pub tls: Option<Arc<ClientConfig>>,
    pub auth: Option<(String, String)>,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Dialer {
    /// Sends one command to 127.0.0.1:`port` on a fresh connection and
    /// reads its reply, within [`COMMAND_TIMEOUT`].
    pub async fn cmd<A: AsRef<[u8]>>(&self, port: u16, args: &[A]) -> io::Result<Reply> {
        let args: Vec<&[u8]> = args.iter().map(AsRef::as_ref).collect();
        self.timed(port, false, &args).await
    }

    /// The same preceded by `ASKING` on that connection: how a cluster
    /// client follows an `ASK` redirect (the flag lasts one command).
    pub async fn cmd_after_asking(&self, port: u16, args: &[&[u8]]) -> io::Result<Reply> {
        self.timed(port, true, args).await
    }

    async fn timed(&self, port: u16, asking: bool, args: &[&[u8]]) -> io::Result<Reply> {
        match tokio::time::timeout(COMMAND_TIMEOUT, self.cmd_inner(port, asking, args)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "127.0.0.1:{port} did not answer {} within {COMMAND_TIMEOUT:?}",
                    show(args)
                ),
            )),
        }
    }

    async fn cmd_inner(&self, port: u16, asking: bool, args: &[&[u8]]) -> io::Result<Reply> {
        let tcp = tokio::net::TcpStream::connect(loopback(port)).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name =
                    rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
                Box::new(
                    TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await?,
                )
            }
        };
        let mut conn = BufReader::new(stream);
        if let Some((user, password)) = &self.auth {
            let auth: [&[u8]; 3] = [b"AUTH", user.as_bytes(), password.as_bytes()];
            conn.write_all(&encode(&auth)).await?;
            conn.flush().await?;
            read_reply(&mut conn).await?.ok_or_err("AUTH")?;
        }
        if asking {
            conn.write_all(&encode(&[b"ASKING"])).await?;
            conn.flush().await?;
            read_reply(&mut conn).await?.ok_or_err("ASKING")?;
        }
        conn.write_all(&encode(args)).await?;
        conn.flush().await?;
        read_reply(&mut conn).await
    }
}

/// A command for messages: its words, lossy, shortened.
fn show(args: &[&[u8]]) -> String {
    let s: Vec<String> = args
        .iter()
        .take(6)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let more = if args.len() > 6 { " ..." } else { "" };
    format!("`{}{more}`", s.join(" "))
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn read_reply<R: AsyncBufReadExt + AsyncReadExt + Unpin + Send>(
    r: &mut R,
) -> BoxFuture<'_, io::Result<Reply>> {
    Box::pin(async move {
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).await?;
        if !line.ends_with(b"\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-reply",
            ));
        }
        line.truncate(line.len() - 2);
        let (kind, rest) = line
            .split_first()
            .ok_or_else(|| io::Error::other("empty RESP line"))?;
        let rest = String::from_utf8_lossy(rest).into_owned();
        let number = || -> io::Result<i64> {
            rest.parse()
                .map_err(|_| io::Error::other(format!("bad RESP number {rest:?}")))
        };
        Ok(match kind {
            b'+' => Reply::Simple(rest),
            b'-' => Reply::Error(rest),
            b':' => Reply::Int(number()?),
            b'$' => match usize::try_from(number()?) {
                Err(_) => Reply::Bulk(None),
                Ok(n) => {
                    let mut buf = vec![0; n + 2];
                    r.read_exact(&mut buf).await?;
                    buf.truncate(n);
                    Reply::Bulk(Some(buf))
                }
            },
            b'*' => match usize::try_from(number()?) {
                Err(_) => Reply::Array(None),
                Ok(n) => {
                    let mut items = Vec::with_capacity(n.min(1024));
                    for _ in 0..n {
                        items.push(read_reply(r).await?);
                    }
                    Reply::Array(Some(items))
                }
            },
            other => {
                return Err(io::Error::other(format!(
                    "not a RESP2 reply: type byte {:?}",
                    char::from(*other)
                )))
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_nested_replies() {
        let wire = b"*3\r\n:1\r\n*2\r\n$3\r\nfoo\r\n$-1\r\n-ERR no\r\n".to_vec();
        let mut r = BufReader::new(&wire[..]);
        let reply = read_reply(&mut r).await.expect("parse");
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Int(1),
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"foo".to_vec())),
                    Reply::Bulk(None)
                ])),
                Reply::Error("ERR no".into()),
            ]))
        );
    }

    #[test]
    fn encodes_binary_safe() {
        assert_eq!(
            encode(&[b"SET", b"a\r\nb"]),
            b"*2\r\n$3\r\nSET\r\n$4\r\na\r\nb\r\n"
        );
    }
}

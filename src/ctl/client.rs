//! A small blocking HTTP/1.1 client for the admin API: one request per
//! connection (`Connection: close`), JSON in and out. std's `TcpStream` and
//! the `httparse` the data path already uses are enough for a handful of
//! requests from a terminal or a script; no HTTP client crate is needed.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// Opening the connection; the admin API is local or near.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Each read and write. A removal waits for the backend's drain (up to 10 s
/// on the proxy's side) before it answers.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Larger answers are refused (a `/status` of a thousand backends is far below).
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the admin API at {addr}: {source}")]
    Unreachable { addr: String, source: io::Error },
    #[error("the admin API at {addr} answered {status}: {message}")]
    Refused {
        addr: String,
        status: u16,
        message: String,
    },
    #[error("the admin API at {addr} sent an answer percore ctl cannot read: {reason}")]
    Malformed { addr: String, reason: String },
}

pub struct AdminClient {
    addr: String,
    token: Option<String>,
}

impl AdminClient {
    pub fn new(addr: &str, token: Option<&str>) -> AdminClient {
        AdminClient {
            addr: addr.to_string(),
            token: token.map(str::to_string),
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, CtlError> {
        self.request("GET", path, None)
    }

    /// Sends one request; an answer of 400 or more is a `Refused` carrying
    /// the API's error sentence.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CtlError> {
        let (status, answer) =
            self.exchange(method, path, body)
                .map_err(|source| CtlError::Unreachable {
                    addr: self.addr.clone(),
                    source,
                })?;
        let malformed = |reason: String| CtlError::Malformed {
            addr: self.addr.clone(),
            reason,
        };
        let json = serde_json::from_slice::<Value>(&answer);
        if status >= 400 {
            let message = match &json {
                Ok(value) => value["error"].as_str().map(str::to_string),
                Err(_) => None,
            }
            .unwrap_or_else(|| String::from_utf8_lossy(&answer).trim().to_string());
            return Err(CtlError::Refused {
                addr: self.addr.clone(),
                status,
                message,
            });
        }
        json.map_err(|error| malformed(format!("not JSON ({error})")))
    }

    /// The status and body of the answer to one request.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> io::Result<(u16, Vec<u8>)> {
        let mut stream = self.connect()?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.addr
        );
        if let Some(token) = &self.token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if !body.is_empty() || method != "GET" {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        stream.write_all(request.as_bytes())?;
        let mut answer = Vec::new();
        // The server closes after answering; an early close of ours (a 401
        // before the body was read) may reset, but the answer is read first.
        (&mut stream).take(MAX_ANSWER).read_to_end(&mut answer)?;
        parse_answer(&answer)
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let mut last_error =
            io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
        for addr in self.addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => return Ok(stream),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }
}

/// Splits an HTTP/1.1 answer into its status and body (Content-Length, or
/// everything up to the close).
fn parse_answer(answer: &[u8]) -> io::Result<(u16, Vec<u8>)> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    if answer.is_empty() {
        return Err(invalid("the connection closed without an answer"));
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(answer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(invalid("the answer ends inside its head")),
        Err(error) => return Err(invalid(&format!("not an HTTP answer ({error})"))),
    };
    let status = response.code.unwrap_or(0);
    let length = response
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("content-length"))
        .and_then(|header| {
            std::str::from_utf8(header.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let body = &answer[head_len..];
    let body = match length {
        Some(length) if length <= body.len() => &body[..length],
        Some(_) => return Err(invalid("the answer's body was cut short")),
        None => body,
    };
    Ok((status, body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_split() {
        let (status, body) =
            parse_answer(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}extra").unwrap();
        assert_eq!((status, body.as_slice()), (201, &b"{}"[..]));
        assert!(parse_answer(b"").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}").is_err());
        assert!(parse_answer(b"garbage\r\n\r\n").is_err());
    }
}

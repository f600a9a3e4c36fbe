//! Plain HTTP requests to a server's probes and metrics, one fresh TCP
//! connection each, bounded in time.

use super::child::{Daemon, STEP};
use std::io::{Read, Write};
use std::net::TcpStream;

/// The `HOST:PORT` of a daemon's WebSocket URL.
pub fn addr(d: &Daemon) -> String {
    d.url().trim_start_matches("ws://").to_string()
}

/// One plain HTTP request over a fresh TCP connection: (status, head, body).
pub fn http(addr: &str, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    response(&mut s)
}

pub fn get(addr: &str, path: &str) -> (u16, String, String) {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
}

/// Reads a whole response (the server closes the connection after it).
pub fn response(s: &mut impl Read) -> (u16, String, String) {
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("read the response");
    let text = String::from_utf8(all).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("status: {head}"));
    (status, head.to_string(), body.to_string())
}

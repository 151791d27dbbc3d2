//! The bench client's byte stream to a NATS server, plain TCP or TLS (rustls), split so that
//! one thread reads while others write. TLS records are encrypted under the session lock and
//! written under the socket-write lock taken before the session lock is released, so records
//! reach the socket in the order they were made.

use rustls::ClientConnection;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};

struct Tls {
    session: Mutex<ClientConnection>,
}

/// Reading half: owned by the connection's reader thread.
pub struct LinkReader {
    sock: TcpStream,
    tls: Option<Arc<Tls>>,
    writer: Arc<Mutex<TcpStream>>,
    raw: Vec<u8>,
    plain: Vec<u8>,
}

/// Writing half: shared by every thread that sends on the connection.
#[derive(Clone)]
pub struct LinkWriter {
    tls: Option<Arc<Tls>>,
    sock: Arc<Mutex<TcpStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::other(e)
}

/// Splits a connected socket; with `tls`, runs the handshake first (the NATS INFO line has
/// already been read in plain text by the caller, as the protocol requires).
pub fn split(
    sock: TcpStream,
    tls: Option<ClientConnection>,
) -> io::Result<(LinkReader, LinkWriter)> {
    let write_sock = sock.try_clone()?;
    let tls = match tls {
        Some(mut session) => {
            // Whole publish batches are handed over at once; the default 64 KiB cap on
            // unsent plaintext would refuse them.
            session.set_buffer_limit(None);
            let mut s = &sock;
            while session.is_handshaking() {
                session.complete_io(&mut s)?;
            }
            Some(Arc::new(Tls {
                session: Mutex::new(session),
            }))
        }
        None => None,
    };
    let writer = Arc::new(Mutex::new(write_sock));
    Ok((
        LinkReader {
            sock,
            tls: tls.clone(),
            writer: writer.clone(),
            raw: vec![0; 64 * 1024],
            plain: Vec::new(),
        },
        LinkWriter { tls, sock: writer },
    ))
}

impl LinkReader {
    /// Reads some bytes; 0 means the server closed the connection.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.clone() else {
            return self.sock.read(buf);
        };
        loop {
            if !self.plain.is_empty() {
                let n = buf.len().min(self.plain.len());
                buf[..n].copy_from_slice(&self.plain[..n]);
                self.plain.drain(..n);
                return Ok(n);
            }
            let n = self.sock.read(&mut self.raw)?;
            if n == 0 {
                return Ok(0);
            }
            let mut session = lock(&tls.session);
            let mut incoming = &self.raw[..n];
            while !incoming.is_empty() {
                session.read_tls(&mut incoming)?;
                let state = session.process_new_packets().map_err(tls_error)?;
                // Drained after every record batch: rustls refuses more input while its own
                // plaintext buffer is full.
                let available = state.plaintext_bytes_to_read();
                if available > 0 {
                    let start = self.plain.len();
                    self.plain.resize(start + available, 0);
                    session.reader().read_exact(&mut self.plain[start..])?;
                }
                if state.peer_has_closed() && self.plain.is_empty() {
                    return Ok(0);
                }
            }
            if session.wants_write() {
                let mut out = Vec::new();
                while session.wants_write() {
                    session.write_tls(&mut out)?;
                }
                let mut sock = lock(&self.writer);
                drop(session);
                sock.write_all(&out)?;
            }
        }
    }
}

impl LinkWriter {
    pub fn write_all(&self, data: &[u8]) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return lock(&self.sock).write_all(data);
        };
        let mut session = lock(&tls.session);
        session.writer().write_all(data)?;
        let mut out = Vec::with_capacity(data.len() + 64);
        while session.wants_write() {
            session.write_tls(&mut out)?;
        }
        let mut sock = lock(&self.sock);
        drop(session);
        sock.write_all(&out)
    }

    pub fn shutdown(&self) {
        let _ = lock(&self.sock).shutdown(std::net::Shutdown::Both);
    }
}

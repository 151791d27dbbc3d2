//! Counts MSG/HMSG frames in a byte stream read in arbitrary chunks, without copying
//! payloads: what a benchmark subscriber needs to keep up with the server.

#[derive(Default)]
pub struct FrameCounter {
    /// Bytes of the current control line seen so far (lines are short).
    line: Vec<u8>,
    /// Payload bytes (plus CRLF) still to skip.
    skip: usize,
    pub msgs: u64,
    pub pongs: u64,
    pub pings: u64,
    pub errors: Vec<String>,
}

impl FrameCounter {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            match data.iter().position(|b| *b == b'\n') {
                None => {
                    self.line.extend_from_slice(data);
                    return;
                }
                Some(i) => {
                    self.line.extend_from_slice(&data[..i]);
                    data = &data[i + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.on_line(&line);
                }
            }
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"MSG ") || line.starts_with(b"HMSG ") {
            let size = line
                .rsplit(|b| *b == b' ')
                .next()
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(0);
            self.skip = size + 2;
            self.msgs += 1;
        } else if line == b"PONG" {
            self.pongs += 1;
        } else if line == b"PING" {
            self.pings += 1;
        } else if line.starts_with(b"-ERR") {
            self.errors.push(String::from_utf8_lossy(line).into_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_across_chunk_boundaries() {
        let wire = b"MSG a 1 5\r\nhe\nlo\r\nPONG\r\nHMSG a 1 2 4\r\nabcd\r\nPING\r\n-ERR 'x'\r\n";
        for cut in 0..wire.len() {
            let mut c = FrameCounter::default();
            c.feed(&wire[..cut]);
            c.feed(&wire[cut..]);
            assert_eq!((c.msgs, c.pongs, c.pings), (2, 1, 1), "cut at {cut}");
            assert_eq!(c.errors, vec!["-ERR 'x'".to_string()]);
        }
    }
}

//! Counting rows in a COPY stream as it passes through, so the number of rows
//! the source sent (in its snapshot) can be checked against the number the
//! destination stored, without scanning either table again.

/// Counts rows in COPY data, text or binary format, fed chunk by chunk.
#[derive(Debug)]
pub enum RowCounter {
    /// Text format: one row per newline (newlines inside values are escaped).
    Text {
        rows: u64,
    },
    Binary(BinaryCounter),
}

impl RowCounter {
    pub fn new(binary: bool) -> RowCounter {
        if binary {
            RowCounter::Binary(BinaryCounter::default())
        } else {
            RowCounter::Text { rows: 0 }
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        match self {
            RowCounter::Text { rows } => {
                *rows += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
                Ok(())
            }
            RowCounter::Binary(b) => b.feed(chunk),
        }
    }

    pub fn rows(&self) -> u64 {
        match self {
            RowCounter::Text { rows } => *rows,
            RowCounter::Binary(b) => b.rows,
        }
    }

    /// Did the stream end where a stream may end?
    pub fn finish(&self) -> Result<u64, String> {
        match self {
            RowCounter::Text { rows } => Ok(*rows),
            RowCounter::Binary(b) => {
                if b.state == BinState::Done {
                    Ok(b.rows)
                } else {
                    Err(format!("binary COPY stream ended early ({:?})", b.state))
                }
            }
        }
    }
}

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinState {
    /// Reading the 11-byte signature + 4-byte flags + 4-byte extension length.
    Header,
    /// Skipping the header extension.
    Extension,
    /// Expecting a tuple's 16-bit field count.
    TupleStart,
    /// Expecting a field's 32-bit length.
    FieldLen,
    /// Skipping a field's bytes.
    FieldData,
    /// Saw the -1 trailer.
    Done,
}

/// State machine over the binary COPY format: header, tuples (int16 field
/// count, then per field an int32 length, -1 for NULL, and the bytes), trailer.
#[derive(Debug)]
pub struct BinaryCounter {
    state: BinState,
    /// Bytes of a fixed-size item collected so far.
    buf: Vec<u8>,
    /// Bytes still to skip (extension or field data).
    skip: u64,
    /// Fields left in the current tuple.
    fields_left: u16,
    pub rows: u64,
}

impl Default for BinaryCounter {
    fn default() -> Self {
        BinaryCounter {
            state: BinState::Header,
            buf: Vec::with_capacity(19),
            skip: 0,
            fields_left: 0,
            rows: 0,
        }
    }
}

impl BinaryCounter {
    fn want(&self) -> usize {
        match self.state {
            BinState::Header => 19,
            BinState::TupleStart => 2,
            BinState::FieldLen => 4,
            _ => 0,
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), String> {
        while !chunk.is_empty() {
            match self.state {
                BinState::Done => return Err("data after the binary COPY trailer".into()),
                BinState::Extension | BinState::FieldData => {
                    let n = (self.skip.min(chunk.len() as u64)) as usize;
                    chunk = &chunk[n..];
                    self.skip -= n as u64;
                    if self.skip == 0 {
                        self.after_skip();
                    }
                }
                _ => {
                    let need = self.want() - self.buf.len();
                    let n = need.min(chunk.len());
                    self.buf.extend_from_slice(&chunk[..n]);
                    chunk = &chunk[n..];
                    if self.buf.len() == self.want() {
                        self.item()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn after_skip(&mut self) {
        self.state = match self.state {
            BinState::Extension => BinState::TupleStart,
            BinState::FieldData => self.next_field_state(),
            s => s,
        };
    }

    fn next_field_state(&mut self) -> BinState {
        if self.fields_left == 0 {
            self.rows += 1;
            BinState::TupleStart
        } else {
            BinState::FieldLen
        }
    }

    fn item(&mut self) -> Result<(), String> {
        let buf = std::mem::take(&mut self.buf);
        match self.state {
            BinState::Header => {
                if &buf[..11] != SIGNATURE {
                    return Err("not a binary COPY stream (bad signature)".into());
                }
                let ext = u32::from_be_bytes([buf[15], buf[16], buf[17], buf[18]]) as u64;
                self.skip = ext;
                self.state = if ext == 0 {
                    BinState::TupleStart
                } else {
                    BinState::Extension
                };
            }
            BinState::TupleStart => {
                let n = i16::from_be_bytes([buf[0], buf[1]]);
                if n == -1 {
                    self.state = BinState::Done;
                } else if n < 0 {
                    return Err(format!("bad field count {n} in binary COPY stream"));
                } else {
                    self.fields_left = n as u16;
                    self.state = self.next_field_state();
                }
            }
            BinState::FieldLen => {
                let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                self.fields_left -= 1;
                if len <= 0 {
                    // NULL (-1) or empty value.
                    self.state = self.next_field_state();
                } else {
                    self.skip = len as u64;
                    self.state = BinState::FieldData;
                }
            }
            _ => unreachable!("item() only for fixed-size states"),
        }
        self.buf = buf;
        self.buf.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut s = SIGNATURE.to_vec();
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&4u32.to_be_bytes());
        s.extend_from_slice(b"ext!");
        for r in rows {
            s.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r {
                match f {
                    None => s.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        s.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        s.extend_from_slice(b);
                    }
                }
            }
        }
        s.extend_from_slice(&(-1i16).to_be_bytes());
        s
    }

    #[test]
    fn binary_counts_in_any_chunking() {
        let rows: Vec<Vec<Option<&[u8]>>> = vec![
            vec![Some(b"abc"), None, Some(b"")],
            vec![Some(b"\n\n\n"), Some(b"x")],
            vec![],
            vec![None],
        ];
        let data = stream(&rows);
        for size in [1, 2, 3, 5, 7, 64, data.len()] {
            let mut c = RowCounter::new(true);
            for chunk in data.chunks(size) {
                c.feed(chunk).unwrap();
            }
            assert_eq!(c.finish().unwrap(), 4, "chunk size {size}");
        }
    }

    #[test]
    fn binary_truncated_stream_is_an_error() {
        let data = stream(&[vec![Some(b"abc")]]);
        let mut c = RowCounter::new(true);
        c.feed(&data[..data.len() - 2]).unwrap();
        assert!(c.finish().is_err());
        let mut c = RowCounter::new(true);
        assert!(c.feed(b"NOTCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0").is_err());
    }

    #[test]
    fn text_counts_newlines() {
        let mut c = RowCounter::new(false);
        c.feed(b"1\tab\\nc\n2\t").unwrap();
        c.feed(b"x\n").unwrap();
        assert_eq!(c.finish().unwrap(), 2);
    }
}

//! Buffers for in-progress transactions the server streams in chunks (protocol 2+).
//!
//! Chunks of several transactions may interleave, and any of them may still abort, so each
//! transaction's messages are kept (as the raw pgoutput bytes) until its Stream Commit or
//! Stream Abort. **Memory stays bounded**: when all buffers together exceed the limit, the
//! largest is moved to a temporary file and the rest of that transaction is appended there.
//! A transaction being applied ahead of its commit (`speculate.rs`) goes to its file from the
//! start: its copy here is only the fallback, rarely read, so it should not hold memory.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use bytes::Bytes;

use crate::error::{Error, Result};

/// What one kept message costs beyond its bytes: its slot in the buffer's `Vec<Bytes>` and
/// the allocator's header for its own allocation. Counted so that the limit bounds real
/// memory, not just payload (pgoutput row messages are often only ~100 bytes).
const MESSAGE_OVERHEAD: usize = 48;

#[derive(Default)]
struct Buffer {
    memory: Vec<Bytes>,
    memory_bytes: usize,
    spill: Option<(PathBuf, BufWriter<File>)>,
    aborted_subxacts: HashSet<u32>,
}

/// All in-progress streamed transactions.
pub struct StreamedTxns {
    buffers: HashMap<u32, Buffer>,
    memory_bytes: usize,
    max_memory_bytes: usize,
    dir: PathBuf,
    /// Bytes written to spill files since start, for metrics and tests.
    pub spilled_bytes: u64,
}

impl StreamedTxns {
    pub fn new(max_memory_bytes: usize, dir: PathBuf) -> Self {
        StreamedTxns {
            buffers: HashMap::new(),
            memory_bytes: 0,
            max_memory_bytes,
            dir,
            spilled_bytes: 0,
        }
    }

    /// Bytes held in memory across all transactions.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Whether any streamed transaction is still open.
    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty()
    }

    /// Keep one message of transaction `xid`.
    pub fn push(&mut self, xid: u32, message: Bytes) -> Result<()> {
        let buf = self.buffers.entry(xid).or_default();
        if let Some((_, w)) = &mut buf.spill {
            write_record(w, &message)?;
            self.spilled_bytes += message.len() as u64 + 4;
            return Ok(());
        }
        buf.memory_bytes += message.len() + MESSAGE_OVERHEAD;
        self.memory_bytes += message.len() + MESSAGE_OVERHEAD;
        buf.memory.push(message);
        while self.memory_bytes > self.max_memory_bytes {
            self.spill_largest()?;
        }
        Ok(())
    }

    fn spill_largest(&mut self) -> Result<()> {
        let Some((&xid, _)) = self
            .buffers
            .iter()
            .filter(|(_, b)| b.spill.is_none())
            .max_by_key(|(_, b)| b.memory_bytes)
        else {
            return Ok(());
        };
        self.spill(xid)
    }

    /// Keep transaction `xid` on disk from now on (what it holds in memory moves there too).
    pub fn keep_on_disk(&mut self, xid: u32) -> Result<()> {
        if self.buffers.entry(xid).or_default().spill.is_some() {
            return Ok(());
        }
        self.spill(xid)
    }

    /// Move `xid`'s buffer to a new file; later messages are appended there.
    fn spill(&mut self, xid: u32) -> Result<()> {
        let path = self
            .dir
            .join(format!("cdc-spill-{}-{xid}", std::process::id()));
        let file = File::create(&path)
            .map_err(Error::io(format!("creating spill file {}", path.display())))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let buf = self.buffers.get_mut(&xid).expect("chosen above");
        for m in std::mem::take(&mut buf.memory) {
            write_record(&mut w, &m)?;
            self.spilled_bytes += m.len() as u64 + 4;
        }
        tracing::debug!(xid, bytes = buf.memory_bytes, path = %path.display(), "spilled a streamed transaction to disk");
        self.memory_bytes -= buf.memory_bytes;
        buf.memory_bytes = 0;
        buf.spill = Some((path, w));
        Ok(())
    }

    /// A subtransaction (`subxid != xid`) or the whole transaction aborted.
    pub fn abort(&mut self, xid: u32, subxid: u32) {
        if xid == subxid {
            if let Some(b) = self.buffers.remove(&xid) {
                self.memory_bytes -= b.memory_bytes;
                if let Some((path, _)) = b.spill {
                    let _ = std::fs::remove_file(path);
                }
            }
        } else if let Some(b) = self.buffers.get_mut(&xid) {
            b.aborted_subxacts.insert(subxid);
        }
    }

    /// Take a committed transaction: its messages in order, and the subtransactions to skip.
    pub fn take(&mut self, xid: u32) -> Result<(Replay, HashSet<u32>)> {
        let Some(b) = self.buffers.remove(&xid) else {
            return Ok((
                Replay {
                    file: None,
                    memory: Vec::new().into_iter(),
                    path: None,
                },
                HashSet::new(),
            ));
        };
        self.memory_bytes -= b.memory_bytes;
        let (file, path) = match b.spill {
            Some((path, mut w)) => {
                w.flush().map_err(Error::io("flushing spill file"))?;
                let f = File::open(&path).map_err(Error::io("reopening spill file"))?;
                (Some(BufReader::with_capacity(1 << 20, f)), Some(path))
            }
            None => (None, None),
        };
        Ok((
            Replay {
                file,
                memory: b.memory.into_iter(),
                path,
            },
            b.aborted_subxacts,
        ))
    }
}

impl Drop for StreamedTxns {
    fn drop(&mut self) {
        for b in self.buffers.values() {
            if let Some((path, _)) = &b.spill {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn write_record(w: &mut BufWriter<File>, m: &[u8]) -> Result<()> {
    w.write_all(&(m.len() as u32).to_be_bytes())
        .map_err(Error::io("writing spill file"))?;
    w.write_all(m).map_err(Error::io("writing spill file"))
}

/// The messages of one committed streamed transaction, spilled ones first.
pub struct Replay {
    file: Option<BufReader<File>>,
    memory: std::vec::IntoIter<Bytes>,
    path: Option<PathBuf>,
}

impl Replay {
    /// The next message, or `None` at the end.
    pub fn next_message(&mut self) -> Result<Option<Bytes>> {
        if let Some(f) = &mut self.file {
            let mut len = [0u8; 4];
            match f.read_exact(&mut len) {
                Ok(()) => {
                    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
                    f.read_exact(&mut buf)
                        .map_err(Error::io("reading spill file"))?;
                    return Ok(Some(Bytes::from(buf)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => self.file = None,
                Err(e) => return Err(Error::io("reading spill file")(e)),
            }
        }
        Ok(self.memory.next())
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mut r: Replay) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(m) = r.next_message().unwrap() {
            out.push(m);
        }
        out
    }

    #[test]
    fn interleaved_transactions_spill_past_the_limit_and_replay_in_order() {
        let dir = std::env::temp_dir();
        let mut s = StreamedTxns::new(100, dir);
        let msg = |i: u32| Bytes::from(format!("message {i:04} ").repeat(3));
        for i in 0..20 {
            s.push(1 + i % 2, msg(i)).unwrap();
            assert!(s.memory_bytes() <= 100, "memory bound held");
        }
        assert!(s.spilled_bytes > 0);
        s.abort(2, 7);
        let (r, aborted) = s.take(2).unwrap();
        assert_eq!(aborted, HashSet::from([7]));
        assert_eq!(
            drain(r),
            (0..20).filter(|i| i % 2 == 1).map(msg).collect::<Vec<_>>()
        );
        let (r, _) = s.take(1).unwrap();
        assert_eq!(
            drain(r),
            (0..20).filter(|i| i % 2 == 0).map(msg).collect::<Vec<_>>()
        );
        assert!(s.is_empty());
        assert_eq!(s.memory_bytes(), 0);
    }

    #[test]
    fn a_transaction_kept_on_disk_holds_no_memory_and_replays_in_order() {
        let mut s = StreamedTxns::new(1 << 20, std::env::temp_dir());
        let msg = |i: u32| Bytes::from(format!("row {i}"));
        s.push(3, msg(0)).unwrap();
        s.push(4, msg(100)).unwrap();
        s.keep_on_disk(3).unwrap();
        s.keep_on_disk(9).unwrap(); // before its first message
        for i in 1..5 {
            s.push(3, msg(i)).unwrap();
            s.push(9, msg(i + 10)).unwrap();
        }
        let one = msg(100).len() + MESSAGE_OVERHEAD;
        assert_eq!(s.memory_bytes(), one, "only transaction 4 is in memory");
        assert_eq!(
            drain(s.take(3).unwrap().0),
            (0..5).map(msg).collect::<Vec<_>>()
        );
        assert_eq!(
            drain(s.take(9).unwrap().0),
            (11..15).map(msg).collect::<Vec<_>>()
        );
        assert_eq!(drain(s.take(4).unwrap().0), vec![msg(100)]);
        assert_eq!(s.memory_bytes(), 0);
    }

    #[test]
    fn abort_discards_the_transaction_and_its_file() {
        let mut s = StreamedTxns::new(10, std::env::temp_dir());
        s.push(5, Bytes::from_static(b"0123456789abc")).unwrap();
        let path = s.buffers[&5]
            .spill
            .as_ref()
            .map(|(p, _)| p.clone())
            .expect("spilled");
        assert!(path.exists());
        s.abort(5, 5);
        assert!(!path.exists());
        assert!(s.is_empty());
    }
}

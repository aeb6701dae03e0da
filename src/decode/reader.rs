//! A bounds-checked cursor over one message body: every read returns an error instead of
//! panicking when the input is short, which is what makes the decoder total.

use bytes::{Buf, Bytes};

use super::DecodeError;
use crate::lsn::Lsn;

pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::UnexpectedEnd { what });
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        self.need(2, what)?;
        Ok(self.buf.get_i16())
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_i32())
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.need(8, what)?;
        Ok(self.buf.get_i64())
    }

    pub(crate) fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        self.need(8, what)?;
        Ok(Lsn(self.buf.get_u64()))
    }

    /// A length-prefixed (Int32) byte string; a negative length is malformed.
    pub(crate) fn counted_bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.i32(what)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::NegativeLength { what, len })?;
        self.need(len, what)?;
        Ok(self.buf.split_to(len))
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString { what })?;
        let raw = self.buf.split_to(end);
        self.buf.advance(1);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8 { what })
    }
}

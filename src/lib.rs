pub mod decode;
pub mod lsn;

pub mod conninfo;
pub mod decode;
pub mod error;
pub mod local_pg;
pub mod lsn;
pub mod pg;
pub mod source;
pub mod tls;

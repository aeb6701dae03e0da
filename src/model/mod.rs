//! The data every layer shares, and nothing that does I/O: what a table is (`schema`), the
//! changes that flow to a destination (`change`), SQL quoting (`sql`), and time as Postgres
//! prints it (`time`). Sources produce these, pipelines move them, destinations consume them.

pub mod change;
pub mod kind;
mod reduce;
pub mod schema;
pub mod sql;
mod table_map;
mod table_name;
pub mod time;

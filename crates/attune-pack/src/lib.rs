//! Loading packs from directories (seed 001's generic pack loader): any directory with a `pack.yaml`
//! and `actions/*.yaml` loads, keyed by `ref`. Every problem is reported with the file and the field,
//! and a pack with any problem yields no actions at all (it is loaded whole or not at all).
//! Also home of parameter validation against an action's JSON Schema.

pub mod archive;
mod check;
mod load;
mod original;
mod schema;

pub use check::{check_action, entry_point_is_contained, Problem};
pub use load::{
    discover, load_pack_dir, resolve_entry_in, resolve_entry_point, LoadedPack, PackError, PackErrors,
};
pub use schema::{default_schema, ParamValidator};

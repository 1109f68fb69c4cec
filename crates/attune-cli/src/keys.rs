//! `attune key`: the key store. Set, get, list, delete; rotate the master key.

use std::io::Read;

use attune_core::keys::KeyInfo;
use attune_wire::SetKey;
use clap::Subcommand;

use crate::{
    output::{print, Table},
    Ctx,
};

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Set a key (create or replace). Parameters use it as {{ key('NAME') }}.
    Set {
        /// 1 to 128 letters, digits, '.', '_' or '-'.
        name: String,
        /// The value; `-` reads it from stdin (keeps a secret out of shell history and `ps`).
        value: String,
        /// Store it encrypted; it is never shown again, and masked in every output.
        #[arg(long)]
        secret: bool,
        /// The pack it belongs to (that pack's actions see it before a global key of the same name).
        #[arg(long)]
        pack: Option<String>,
    },
    /// Show a key (a secret's value never).
    Get {
        name: String,
        #[arg(long)]
        pack: Option<String>,
    },
    /// List keys (secret values never).
    List {
        /// Only this pack's keys and the global ones.
        #[arg(long)]
        pack: Option<String>,
    },
    /// Delete a key.
    Delete {
        name: String,
        #[arg(long)]
        pack: Option<String>,
    },
    /// Make a new master key and seal every secret again under it (then copy the server's
    /// security.master_key_file to the other replicas).
    RotateMaster,
}

fn shown(k: &KeyInfo) -> String {
    match &k.value {
        Some(v) => v.clone(),
        None => attune_core::output::MASK.to_owned(),
    }
}

fn one(k: &KeyInfo) -> Table {
    Table::fields(vec![
        ("name", k.name.clone()),
        ("pack", k.pack.clone().unwrap_or_else(|| "-".into())),
        ("secret", k.secret.to_string()),
        ("value", shown(k)),
        ("updated", k.updated_at.to_datetime().format("%Y-%m-%d %H:%M").to_string()),
        ("by", k.updated_by.clone().unwrap_or_default()),
    ])
}

pub async fn run(ctx: &Ctx, c: KeyCmd) -> anyhow::Result<i32> {
    match c {
        KeyCmd::Set { name, value, secret, pack } => {
            let value = if value == "-" {
                let mut v = String::new();
                std::io::stdin().read_to_string(&mut v)?;
                v.strip_suffix('\n').map(str::to_owned).unwrap_or(v)
            } else {
                value
            };
            let k = ctx.client.set_key(&SetKey { name, value, secret, pack }).await?;
            print(ctx.output, &k, || one(&k))?;
        }
        KeyCmd::Get { name, pack } => {
            let k = ctx.client.get_key(&name, pack.as_deref()).await?;
            print(ctx.output, &k, || one(&k))?;
        }
        KeyCmd::List { pack } => {
            let keys = ctx.client.list_keys(pack.as_deref()).await?;
            print(ctx.output, &keys, || {
                let mut t = Table::new(vec!["NAME", "PACK", "SECRET", "VALUE"]);
                for k in &keys {
                    t.row(vec![
                        k.name.clone(),
                        k.pack.clone().unwrap_or_else(|| "-".into()),
                        k.secret.to_string(),
                        shown(k),
                    ]);
                }
                t
            })?;
        }
        KeyCmd::Delete { name, pack } => {
            let k = ctx.client.delete_key(&name, pack.as_deref()).await?;
            print(ctx.output, &k, || Table::fields(vec![("deleted", k.name.clone())]))?;
        }
        KeyCmd::RotateMaster => {
            let r = ctx.client.rotate_master_key().await?;
            print(ctx.output, &r, || {
                Table::fields(vec![("resealed", r.resealed.to_string()), ("master key", r.key_id.clone())])
            })?;
        }
    }
    Ok(0)
}

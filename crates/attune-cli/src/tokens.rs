//! `attune token`: create (the secret is printed once), list, revoke.

use attune_core::Timestamp;
use attune_wire::CreateToken;
use clap::Subcommand;

use crate::{
    output::{ago, print, Table},
    Ctx,
};

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token and print its secret (shown this once; the server keeps only a hash).
    Create {
        /// 1 to 64 letters, digits, '.', '_', '-' or '@'.
        name: String,
        /// admin (everything), operator (run, cancel, requeue, read), viewer (read), or worker (an
        /// enrollment token for `attune worker`, set as worker.token).
        #[arg(long)]
        role: String,
        /// Valid for this long (30d, 12h, 90m); forever when absent.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        /// Include revoked tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by name: it stops working at once (within a second on other replicas).
    Revoke { name: String },
}

fn when(t: Option<Timestamp>) -> String {
    t.map(|t| t.to_datetime().format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "-".into())
}

pub async fn run(ctx: &Ctx, c: TokenCmd) -> anyhow::Result<i32> {
    match c {
        TokenCmd::Create { name, role, expires } => {
            let role = role.parse().map_err(crate::cmds::UsageError)?;
            let created = ctx.client.create_token(&CreateToken { name, role, expires_in: expires }).await?;
            print(ctx.output, &created, || {
                let t = &created.token;
                let mut table = Table::fields(vec![
                    ("name", t.name.clone()),
                    ("role", t.role.to_string()),
                    ("expires", when(t.expires_at)),
                    ("secret", created.secret.clone()),
                ]);
                table.row(vec!["note:".into(), "the secret is shown only now; store it safely".into()]);
                table
            })?;
        }
        TokenCmd::List { all } => {
            let tokens = ctx.client.list_tokens(all).await?;
            let now = Timestamp::now().millis();
            print(ctx.output, &tokens, || {
                let mut t =
                    Table::new(vec!["NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED", "REVOKED", "BY"]);
                for k in &tokens {
                    t.row(vec![
                        k.name.clone(),
                        k.role.to_string(),
                        ago(now - k.created_at.millis()),
                        when(k.expires_at),
                        k.last_used_at.map(|l| ago(now - l.millis())).unwrap_or_else(|| "never".into()),
                        when(k.revoked_at),
                        k.created_by.clone().unwrap_or_default(),
                    ]);
                }
                t
            })?;
        }
        TokenCmd::Revoke { name } => {
            let t = ctx.client.revoke_token(&name).await?;
            print(ctx.output, &t, || {
                Table::fields(vec![("revoked", t.name.clone()), ("role", t.role.to_string())])
            })?;
        }
    }
    Ok(0)
}

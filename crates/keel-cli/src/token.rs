//! `keel token`: create, list and revoke API tokens (the admin scope).

use clap::{Args, Subcommand};
use keel_api::tokens::{RateLimits, Scope, TokenInfo, TokenRequest};
use keel_client::Client;

use crate::error::CliError;
use crate::output::{Align, Table, write_json_body, write_stdout};

/// Examples shown under `keel token --help`.
pub(crate) const TOKEN_EXAMPLES: &str = "Examples:
  keel token create billing --scope publish:orders.* --scope consume:billing --expires 30d
  keel token create ops --scope read --scope manage
  keel token list
  keel token revoke 3f9a1c0d5e7b2a64
Scopes: admin, manage, publish, read, consume; each alone (every name) or with a name
pattern, ACTION:PATTERN, where * stands for any run of characters. Commands send the
token from --token or KEEL_TOKEN.";

/// `keel token` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token; it is printed this once (keel keeps only its hash)
    Create(CreateArgs),
    /// List the tokens (never their secrets)
    List,
    /// Revoke a token: it authenticates nothing from now on, on every node
    Revoke {
        /// The token's id (the 16 hex digits after `keel_`, as `keel token list` shows)
        id: String,
    },
}

/// Arguments of `keel token create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// What the token is for (shown in lists)
    name: String,
    /// A scope: ACTION or ACTION:PATTERN (repeat for more)
    #[arg(long = "scope", value_name = "SCOPE", required = true, value_parser = parse_scope)]
    scopes: Vec<Scope>,
    /// How long it lasts (30d, 12h); without: until revoked
    #[arg(long, value_name = "DURATION", value_parser = keel_engine::duration::parse)]
    expires: Option<std::time::Duration>,
    /// Most events it may publish per second (on each node)
    #[arg(long, value_name = "N")]
    publish_rate: Option<u32>,
    /// Most pull requests it may make per second (on each node)
    #[arg(long, value_name = "N")]
    pull_rate: Option<u32>,
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    text.parse()
}

/// Runs a `keel token` subcommand; `json` prints the server's JSON instead of text.
pub(crate) async fn run(
    client: &Client,
    command: TokenCommand,
    json: bool,
) -> Result<(), CliError> {
    match command {
        TokenCommand::Create(args) => {
            let request = TokenRequest {
                name: args.name,
                scopes: args.scopes,
                expires_in: args.expires,
                limits: RateLimits {
                    publish_per_second: args.publish_rate,
                    pull_per_second: args.pull_rate,
                },
            };
            let reply = client.create_token(&request).await?;
            if json {
                return write_json_body(reply.body());
            }
            let created = reply.value();
            let expires = created.info.expires_at.as_deref().unwrap_or("never");
            write_stdout(&format!(
                "{}\n\ncreated token {} ({}), expires {expires}. Store it now: keel keeps only its hash and cannot show it again.\nUse it with --token or KEEL_TOKEN.\n",
                created.token, created.info.id, created.info.name
            ))
        }
        TokenCommand::List => {
            let reply = client.list_tokens().await?;
            if json {
                return write_json_body(reply.body());
            }
            write_stdout(&list_text(&reply.value().tokens))
        }
        TokenCommand::Revoke { id } => {
            client.revoke_token(&id).await?;
            if json {
                return Ok(());
            }
            write_stdout(&format!("revoked token {id}\n"))
        }
    }
}

fn list_text(tokens: &[TokenInfo]) -> String {
    if tokens.is_empty() {
        return "no tokens (the admin token of KEEL_ADMIN_TOKEN is not listed)\n".to_owned();
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("NAME", Align::Left),
        ("SCOPES", Align::Left),
        ("CREATED", Align::Left),
        ("EXPIRES", Align::Left),
    ]);
    for token in tokens {
        let scopes = token
            .scopes
            .iter()
            .map(Scope::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let expires = match (&token.expires_at, token.expired) {
            (Some(at), true) => format!("{at} (expired)"),
            (Some(at), false) => at.clone(),
            (None, _) => "never".to_owned(),
        };
        table.push(vec![
            token.id.clone(),
            token.name.clone(),
            scopes,
            token.created_at.clone(),
            expires,
        ]);
    }
    table.render()
}

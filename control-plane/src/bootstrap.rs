//! `agentplane-control-plane bootstrap`: creates a workspace and its first admin API key
//! straight in the database (as the application role), for local use before anything else
//! exists. Prints the workspace id and the key's secret, which is shown only here.

use std::time::Duration;

use agentplane_core::columns::WorkspaceRole;
use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};

use crate::auth::secret;
use crate::config::database_summary;
use crate::ids::{ApiKeyId, TenantId};
use crate::store::{self, NewApiKey, PoolConfig, Store};

/// Flags of `bootstrap`.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// Postgres URL of a login role that is a member of `agentplane_app`.
    #[arg(long, env = "AGENTPLANE_DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretString,
    /// Display name of the new workspace.
    #[arg(long, default_value = "default")]
    pub workspace_name: String,
    /// Name of its first API key (role admin).
    #[arg(long, default_value = "bootstrap")]
    pub key_name: String,
}

/// Creates the workspace and key and prints them as `KEY=value` lines.
pub async fn run(args: BootstrapArgs) -> anyhow::Result<()> {
    let name_ok = |name: &str| (1..=200).contains(&name.chars().count()) && !name.contains('\0');
    anyhow::ensure!(
        name_ok(&args.workspace_name) && name_ok(&args.key_name),
        "names must be 1 to 200 characters without NUL"
    );
    let config = PoolConfig {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(30),
        application_name: "agentplane-bootstrap".to_owned(),
        statement_timeout: Some(Duration::from_secs(30)),
        idle_in_transaction_timeout: Some(Duration::from_secs(10)),
    };
    let pool = store::connect(&args.database_url, &config)
        .await
        .with_context(|| format!("connecting to {}", database_summary(&args.database_url)))?;
    let store = Store::new(pool.clone());
    let created = create(&store, &args.workspace_name, &args.key_name).await;
    pool.close().await;
    let created = created?;
    println!("WORKSPACE_ID={}", created.workspace);
    println!("API_KEY_ID={}", created.key);
    println!("API_KEY={}", created.secret.expose_secret());
    Ok(())
}

/// What `bootstrap` made.
#[derive(Debug)]
pub struct Bootstrapped {
    /// The new workspace.
    pub workspace: TenantId,
    /// Its admin key.
    pub key: ApiKeyId,
    /// The key's secret.
    pub secret: SecretString,
}

/// Creates a workspace named `workspace_name` and an admin key named `key_name` in it, each
/// with its event (actor `bootstrap`).
pub async fn create(
    store: &Store,
    workspace_name: &str,
    key_name: &str,
) -> anyhow::Result<Bootstrapped> {
    let actor = "bootstrap";
    let workspace = store
        .create_workspace(workspace_name, &Default::default(), None, None, actor)
        .await
        .context("creating the workspace")?;
    let secret = secret::generate(secret::API_KEY).context("reading the random source")?;
    let mut tx = store.tenant(workspace.id).await?;
    let key = tx
        .create_api_key(
            NewApiKey {
                id: ApiKeyId(secret.id),
                name: key_name,
                role: WorkspaceRole::Admin,
                secret_hash: &secret.hash,
                expires_at: None,
                request_id: None,
            },
            actor,
        )
        .await
        .context("creating the api key")?;
    tx.commit().await?;
    Ok(Bootstrapped {
        workspace: workspace.id,
        key: key.id,
        secret: secret.secret,
    })
}

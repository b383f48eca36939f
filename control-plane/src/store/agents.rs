//! Agents of one workspace.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::{NewEvent, StoreError, StoreResult, TenantTx};
use crate::domain::agent::{AgentSpec, Generation, ModelChoice, Provider, ToolDefinition};
use crate::ids::{AgentId, TenantId};

/// An agent as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AgentRow {
    /// Owning workspace.
    pub tenant_id: TenantId,
    /// Agent id.
    pub id: AgentId,
    /// Name.
    pub name: String,
    /// Provider.
    pub provider: Provider,
    /// Model.
    pub model: String,
    /// System prompt.
    pub system_prompt: String,
    /// Generation parameters.
    pub generation: Json<Generation>,
    /// Labels.
    pub labels: Json<BTreeMap<String, String>>,
    /// Labels a worker must advertise to run the agent's tasks.
    pub required_labels: Json<BTreeMap<String, String>>,
    /// Concurrency limit.
    pub max_concurrency: i32,
    /// Attempt timeout.
    pub task_timeout_ms: i64,
    /// Attempts per task.
    pub max_attempts: i32,
    /// Tools the model may call.
    pub tools: Json<Vec<ToolDefinition>>,
    /// Model calls one task may make.
    pub max_steps: i32,
    /// Fallback (provider, model) pairs.
    pub fallbacks: Json<Vec<ModelChoice>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl AgentRow {
    /// The stored agent as a spec, for applying an update mask to it.
    pub fn spec(&self) -> AgentSpec {
        AgentSpec {
            name: self.name.clone(),
            provider: self.provider,
            model: self.model.clone(),
            system_prompt: self.system_prompt.clone(),
            generation: self.generation.0.clone(),
            labels: self.labels.0.clone(),
            required_labels: self.required_labels.0.clone(),
            max_concurrency: self.max_concurrency,
            task_timeout_ms: self.task_timeout_ms,
            max_attempts: self.max_attempts,
            tools: self.tools.0.clone(),
            max_steps: self.max_steps,
            fallbacks: self.fallbacks.0.clone(),
        }
    }
}

/// An agent found by its request id, deleted or not.
#[derive(sqlx::FromRow)]
struct ByRequestId {
    #[sqlx(flatten)]
    agent: AgentRow,
    deleted: bool,
}

macro_rules! columns {
    () => {
        "tenant_id, id, name, provider, model, system_prompt, generation, labels, \
         required_labels, max_concurrency, task_timeout_ms, max_attempts, tools, max_steps, \
         fallbacks, created_at, updated_at"
    };
}

/// Binds an agent spec as parameters $3 to $15, in the order of the spec's fields.
fn bind_spec<'q>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, AgentRow, sqlx::postgres::PgArguments>,
    spec: &'q AgentSpec,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, AgentRow, sqlx::postgres::PgArguments> {
    query
        .bind(&spec.name)
        .bind(spec.provider.as_str())
        .bind(&spec.model)
        .bind(&spec.system_prompt)
        .bind(Json(&spec.generation))
        .bind(Json(&spec.labels))
        .bind(spec.max_concurrency)
        .bind(spec.task_timeout_ms)
        .bind(spec.max_attempts)
        .bind(Json(&spec.required_labels))
        .bind(Json(&spec.tools))
        .bind(spec.max_steps)
        .bind(Json(&spec.fallbacks))
}

impl TenantTx {
    /// Creates an agent, or returns the one an earlier call with `request_id` created.
    pub async fn create_agent(
        &mut self,
        spec: &AgentSpec,
        request_id: Option<&str>,
        actor: &str,
    ) -> StoreResult<AgentRow> {
        if let Some(request_id) = request_id
            && let Some(existing) = self.agent_by_request_id(request_id).await?
        {
            return Ok(existing);
        }
        let id = AgentId::generate();
        let insert = self.query_as::<AgentRow>(concat!(
            "INSERT INTO agents (tenant_id, id, name, provider, model, system_prompt, generation, \
             labels, max_concurrency, task_timeout_ms, max_attempts, required_labels, tools, \
             max_steps, fallbacks, request_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             RETURNING ",
            columns!()
        ))
        .bind(id);
        let row = bind_spec(insert, spec)
            .bind(request_id)
            .fetch_one(self.executor())
            .await?;
        self.append_event(NewEvent {
            actor,
            action: "agent.created",
            resource_type: "agent",
            resource_id: id.0,
            request_id,
            data: serde_json::json!({ "name": spec.name, "provider": spec.provider.as_str(), "model": spec.model }),
        })
        .await?;
        Ok(row)
    }

    /// A live agent; with `lock`, locked for a change.
    pub async fn get_agent(&mut self, id: AgentId, lock: bool) -> StoreResult<AgentRow> {
        let sql = if lock {
            concat!(
                "SELECT ",
                columns!(),
                " FROM agents \
                WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL FOR UPDATE"
            )
        } else {
            concat!(
                "SELECT ",
                columns!(),
                " FROM agents \
                WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"
            )
        };
        self.query_as::<AgentRow>(sql)
            .bind(id)
            .fetch_optional(self.executor())
            .await?
            .ok_or(StoreError::NotFound("agent"))
    }

    /// A live agent, share-locked so a concurrent delete waits for this transaction.
    pub async fn share_lock_agent(&mut self, id: AgentId) -> StoreResult<AgentRow> {
        self.query_as::<AgentRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM agents WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL FOR SHARE"
        ))
        .bind(id)
        .fetch_optional(self.executor())
        .await?
        .ok_or(StoreError::NotFound("agent"))
    }

    /// The agent created with this idempotency key, if any; NOT_FOUND if that agent has been
    /// deleted since (the key stays used, so a retry never creates a second agent).
    pub async fn agent_by_request_id(&mut self, request_id: &str) -> StoreResult<Option<AgentRow>> {
        let found = self.query_as::<ByRequestId>(concat!(
            "SELECT ",
            columns!(),
            ", deleted_at IS NOT NULL AS deleted FROM agents WHERE tenant_id = $1 AND request_id = $2"
        ))
        .bind(request_id)
        .fetch_optional(self.executor())
        .await?;
        match found {
            Some(ByRequestId { deleted: true, .. }) => Err(StoreError::NotFound("agent")),
            Some(ByRequestId { agent, .. }) => Ok(Some(agent)),
            None => Ok(None),
        }
    }

    /// Live agents after `after`, oldest first.
    pub async fn list_agents(
        &mut self,
        after: Option<AgentId>,
        limit: i64,
    ) -> StoreResult<Vec<AgentRow>> {
        self.query_as::<AgentRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM agents \
             WHERE tenant_id = $1 AND deleted_at IS NULL AND ($2::uuid IS NULL OR id > $2) \
             ORDER BY id LIMIT $3"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(self.executor())
        .await
        .map_err(StoreError::from)
    }

    /// Replaces a live agent's spec.
    pub async fn save_agent(
        &mut self,
        id: AgentId,
        spec: &AgentSpec,
        changed: &[String],
        request_id: Option<&str>,
        actor: &str,
    ) -> StoreResult<AgentRow> {
        let update = self
            .query_as::<AgentRow>(concat!(
                "UPDATE agents SET name = $3, provider = $4, model = $5, system_prompt = $6, \
             generation = $7, labels = $8, max_concurrency = $9, task_timeout_ms = $10, \
             max_attempts = $11, required_labels = $12, tools = $13, max_steps = $14, \
             fallbacks = $15, updated_at = now() \
             WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL RETURNING ",
                columns!()
            ))
            .bind(id);
        let row = bind_spec(update, spec)
            .fetch_optional(self.executor())
            .await?
            .ok_or(StoreError::NotFound("agent"))?;
        // Unfinished tasks carry the requirement the claim filters on: pending ones for their
        // next claim, running ones (which keep their worker) for a claim after a retry,
        // release or lapsed lease.
        self.query(
            "UPDATE tasks SET required_labels = $3, updated_at = now() \
             WHERE tenant_id = $1 AND agent_id = $2 \
               AND status IN ('pending', 'running', 'requires_action') \
               AND required_labels <> $3",
        )
        .bind(id)
        .bind(Json(&spec.required_labels))
        .execute(self.executor())
        .await?;
        self.append_event(NewEvent {
            actor,
            action: "agent.updated",
            resource_type: "agent",
            resource_id: id.0,
            request_id,
            data: serde_json::json!({ "fields": changed }),
        })
        .await?;
        Ok(row)
    }

    /// Soft-deletes a live agent and cancels its pending tasks. Returns how many tasks were
    /// canceled.
    pub async fn delete_agent(
        &mut self,
        id: AgentId,
        request_id: Option<&str>,
        actor: &str,
    ) -> StoreResult<u64> {
        let deleted = self
            .query(
                "UPDATE agents SET deleted_at = now(), updated_at = now() \
             WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL",
            )
            .bind(id)
            .execute(self.executor())
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound("agent"));
        }
        let canceled = self
            .cancel_tasks_where(Some(id), false, "agent deleted", actor, request_id)
            .await?;
        self.append_event(NewEvent {
            actor,
            action: "agent.deleted",
            resource_type: "agent",
            resource_id: id.0,
            request_id,
            data: serde_json::json!({ "canceled_tasks": canceled }),
        })
        .await?;
        Ok(canceled)
    }
}

//! AgentService. `parse` turns its requests into domain values.

mod parse;

use agentplane_proto::v1 as pb;
use pb::agent_service_server::AgentService;
use tonic::{Request, Response, Status};

use super::paging::split_page;
use super::{State, convert};
use crate::auth::caller;
use crate::domain::agent::{AgentQuery, AgentRef, AgentUpdate, DeleteAgent, NewAgent};
use crate::domain::page;
use crate::error::ApiError;
use crate::store::StoreError;

/// Handlers of AgentService.
#[derive(Clone, Debug)]
pub struct AgentApi {
    state: State,
}

impl AgentApi {
    /// Handlers over shared state.
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn create_agent(
        &self,
        request: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::CreateAgentResponse>, Status> {
        let caller = caller(&request)?;
        let new: NewAgent = request.into_inner().try_into()?;
        let actor = caller.authorize(&self.state.store, new.tenant).await?;
        let store = &self.state.store;
        let request_id = new.request_id.as_deref();
        let mut tx = store.tenant(new.tenant).await?;
        let row = match tx.create_agent(&new.spec, request_id, &actor).await {
            Ok(row) => {
                tx.commit().await?;
                row
            }
            // A concurrent call with the same request id committed first: answer with its agent.
            Err(StoreError::AlreadyExists(_)) if request_id.is_some() => {
                drop(tx);
                let mut tx = store.tenant(new.tenant).await?;
                tx.agent_by_request_id(request_id.unwrap_or_default())
                    .await?
                    // The conflict was the name, not the request id.
                    .ok_or_else(|| {
                        ApiError::AlreadyExists("an agent with this name already exists".to_owned())
                    })?
            }
            Err(error) => return Err(error.into()),
        };
        Ok(Response::new(pb::CreateAgentResponse {
            agent: Some(convert::agent(&row)),
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let caller = caller(&request)?;
        let request: AgentRef = request.into_inner().try_into()?;
        caller.authorize(&self.state.store, request.tenant).await?;
        let mut tx = self.state.store.tenant(request.tenant).await?;
        let row = tx.get_agent(request.agent, false).await?;
        Ok(Response::new(pb::GetAgentResponse {
            agent: Some(convert::agent(&row)),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let caller = caller(&request)?;
        let query: AgentQuery = request.into_inner().try_into()?;
        caller.authorize(&self.state.store, query.tenant).await?;
        let mut tx = self.state.store.tenant(query.tenant).await?;
        let rows = tx.list_agents(query.after, query.limit + 1).await?;
        let (agents, next_page_token) = split_page(rows, query.limit, convert::agent, |row| {
            page::encode_id(&parse::agents_page(row.tenant_id), row.id.0)
        });
        Ok(Response::new(pb::ListAgentsResponse {
            agents,
            next_page_token,
        }))
    }

    async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        let caller = caller(&request)?;
        let update: AgentUpdate = request.into_inner().try_into()?;
        let actor = caller
            .authorize(&self.state.store, update.agent.tenant)
            .await?;
        let id = update.agent.agent;
        let mut tx = self.state.store.tenant(update.agent.tenant).await?;
        let spec = tx.get_agent(id, true).await?.spec();
        let spec = spec.with_changes(update.changes)?;
        let request_id = update.request_id.as_deref();
        let row = tx
            .save_agent(id, &spec, &update.paths, request_id, &actor)
            .await?;
        tx.commit().await?;
        Ok(Response::new(pb::UpdateAgentResponse {
            agent: Some(convert::agent(&row)),
        }))
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let caller = caller(&request)?;
        let request: DeleteAgent = request.into_inner().try_into()?;
        let actor = caller
            .authorize(&self.state.store, request.agent.tenant)
            .await?;
        let mut tx = self.state.store.tenant(request.agent.tenant).await?;
        let request_id = request.request_id.as_deref();
        tx.delete_agent(request.agent.agent, request_id, &actor)
            .await?;
        tx.commit().await?;
        Ok(Response::new(pb::DeleteAgentResponse {}))
    }
}

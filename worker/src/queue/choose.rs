//! Which candidate tasks a claim takes: pure bookkeeping of per-agent concurrency, kept apart
//! from the SQL so it can be tested alone.

use std::collections::HashMap;

use uuid::Uuid;

use super::AgentSettings;

/// `(tenant_id, agent_id)`.
pub(super) type AgentKey = (Uuid, Uuid);

/// A pending task the claim locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Candidate {
    pub(super) tenant_id: Uuid,
    pub(super) task_id: Uuid,
    pub(super) agent_id: Uuid,
}

impl Candidate {
    pub(super) fn agent(&self) -> AgentKey {
        (self.tenant_id, self.agent_id)
    }
}

/// An agent as read under its advisory lock.
#[derive(Debug, Clone)]
pub(super) struct AgentState {
    pub(super) key: AgentKey,
    pub(super) settings: AgentSettings,
    pub(super) max_concurrency: i64,
    pub(super) deleted: bool,
    /// Its tasks running now, across all workers.
    pub(super) running: i64,
}

#[derive(Debug)]
enum AgentSlot {
    /// The agent may take `room` more tasks.
    Open { room: i64, settings: AgentSettings },
    /// Deleted, missing, or locked by another claimer right now: take none of its tasks.
    Closed,
}

/// The choices of one claim transaction, across its candidate passes.
#[derive(Debug)]
pub(super) struct ClaimPlan {
    max: usize,
    agents: HashMap<AgentKey, AgentSlot>,
    chosen: Vec<Candidate>,
}

impl ClaimPlan {
    /// A plan that takes at most `max` tasks.
    pub(super) fn new(max: usize) -> Self {
        Self {
            max,
            agents: HashMap::new(),
            chosen: Vec::new(),
        }
    }

    /// Agents of `candidates` not looked at yet, sorted: the order their locks are taken in,
    /// so two claimers never wait on each other in a cycle.
    pub(super) fn unseen_agents(&self, candidates: &[Candidate]) -> Vec<AgentKey> {
        let mut agents: Vec<AgentKey> = candidates
            .iter()
            .map(Candidate::agent)
            .filter(|agent| !self.agents.contains_key(agent))
            .collect();
        agents.sort_unstable();
        agents.dedup();
        agents
    }

    /// Records what was read for `requested`; an agent without a row in `states` (not
    /// locked, or gone) is closed.
    pub(super) fn admit_agents(&mut self, requested: &[AgentKey], states: Vec<AgentState>) {
        for key in requested {
            self.agents.insert(*key, AgentSlot::Closed);
        }
        for state in states {
            let slot = if state.deleted {
                AgentSlot::Closed
            } else {
                AgentSlot::Open {
                    room: state.max_concurrency.saturating_sub(state.running),
                    settings: state.settings,
                }
            };
            self.agents.insert(state.key, slot);
        }
    }

    /// Walks `candidates` in claim order and takes each one whose agent has room, until the
    /// plan is full.
    pub(super) fn take(&mut self, candidates: &[Candidate]) {
        for candidate in candidates {
            if self.is_full() {
                return;
            }
            if self.chosen.contains(candidate) {
                continue;
            }
            if let Some(AgentSlot::Open { room, .. }) = self.agents.get_mut(&candidate.agent())
                && *room > 0
            {
                *room -= 1;
                self.chosen.push(*candidate);
            }
        }
    }

    /// Whether `max` tasks have been taken.
    pub(super) fn is_full(&self) -> bool {
        self.chosen.len() >= self.max
    }

    /// Agents whose tasks a further pass should skip: closed, or without room left.
    pub(super) fn exhausted_agents(&self) -> Vec<AgentKey> {
        let mut agents: Vec<AgentKey> = self
            .agents
            .iter()
            .filter(|(_, slot)| !matches!(slot, AgentSlot::Open { room, .. } if *room > 0))
            .map(|(key, _)| *key)
            .collect();
        agents.sort_unstable();
        agents
    }

    /// The tasks taken, in claim order.
    pub(super) fn chosen(&self) -> &[Candidate] {
        &self.chosen
    }

    /// The settings of an open agent.
    pub(super) fn settings(&self, agent: AgentKey) -> Option<&AgentSettings> {
        match self.agents.get(&agent) {
            Some(AgentSlot::Open { settings, .. }) => Some(settings),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TENANT: Uuid = Uuid::from_u128(0xA);

    fn agent(n: u128) -> AgentKey {
        (TENANT, Uuid::from_u128(n))
    }

    fn candidate(task: u128, agent_id: u128) -> Candidate {
        Candidate {
            tenant_id: TENANT,
            task_id: Uuid::from_u128(task),
            agent_id: Uuid::from_u128(agent_id),
        }
    }

    fn state(agent_id: u128, max_concurrency: i64, running: i64, deleted: bool) -> AgentState {
        AgentState {
            key: agent(agent_id),
            settings: AgentSettings {
                provider: "echo".to_owned(),
                model: "echo".to_owned(),
                generation: serde_json::json!({}),
                task_timeout: Duration::from_secs(60),
            },
            max_concurrency,
            deleted,
            running,
        }
    }

    fn chosen_tasks(plan: &ClaimPlan) -> Vec<u128> {
        plan.chosen().iter().map(|c| c.task_id.as_u128()).collect()
    }

    #[test]
    fn takes_in_order_up_to_each_agents_free_slots() {
        let candidates = [
            candidate(1, 100),
            candidate(2, 100),
            candidate(3, 200),
            candidate(4, 100),
            candidate(5, 200),
        ];
        let mut plan = ClaimPlan::new(10);
        let unseen = plan.unseen_agents(&candidates);
        assert_eq!(unseen, [agent(100), agent(200)]);
        plan.admit_agents(
            &unseen,
            vec![state(100, 3, 1, false), state(200, 5, 0, false)],
        );
        plan.take(&candidates);
        assert_eq!(chosen_tasks(&plan), [1, 2, 3, 5]);
        assert_eq!(plan.exhausted_agents(), [agent(100)]);
    }

    #[test]
    fn stops_at_max() {
        let candidates = [candidate(1, 100), candidate(2, 100), candidate(3, 100)];
        let mut plan = ClaimPlan::new(2);
        let unseen = plan.unseen_agents(&candidates);
        plan.admit_agents(&unseen, vec![state(100, 10, 0, false)]);
        plan.take(&candidates);
        assert_eq!(chosen_tasks(&plan), [1, 2]);
        assert!(plan.is_full());
    }

    #[test]
    fn skips_deleted_unlocked_and_saturated_agents() {
        let candidates = [
            candidate(1, 100), // deleted
            candidate(2, 200), // not locked (no state)
            candidate(3, 300), // already at its limit
            candidate(4, 400),
        ];
        let mut plan = ClaimPlan::new(10);
        let unseen = plan.unseen_agents(&candidates);
        plan.admit_agents(
            &unseen,
            vec![
                state(100, 5, 0, true),
                state(300, 2, 2, false),
                state(400, 1, 0, false),
            ],
        );
        plan.take(&candidates);
        assert_eq!(chosen_tasks(&plan), [4]);
        assert_eq!(
            plan.exhausted_agents(),
            [agent(100), agent(200), agent(300), agent(400)]
        );
        assert!(plan.settings(agent(400)).is_some());
        assert!(plan.settings(agent(100)).is_none());
    }

    #[test]
    fn a_later_pass_reuses_known_agents_and_skips_chosen_tasks() {
        let mut plan = ClaimPlan::new(10);
        let first = [candidate(1, 100), candidate(2, 200), candidate(3, 200)];
        let unseen = plan.unseen_agents(&first);
        plan.admit_agents(
            &unseen,
            vec![state(100, 2, 0, false), state(200, 1, 0, false)],
        );
        plan.take(&first);
        assert_eq!(chosen_tasks(&plan), [1, 2]);

        let second = [candidate(1, 100), candidate(4, 100), candidate(5, 300)];
        let unseen = plan.unseen_agents(&second);
        assert_eq!(
            unseen,
            [agent(300)],
            "agents already read are not locked again"
        );
        plan.admit_agents(&unseen, vec![state(300, 1, 0, false)]);
        plan.take(&second);
        assert_eq!(chosen_tasks(&plan), [1, 2, 4, 5]);
    }
}

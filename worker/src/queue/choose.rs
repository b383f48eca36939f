//! Which candidate tasks a claim takes: pure bookkeeping of fairness across workspaces,
//! per-workspace caps and per-agent concurrency, kept apart from the SQL so it can be tested
//! alone.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use super::AgentSettings;

/// `(tenant_id, agent_id)`.
pub(super) type AgentKey = (Uuid, Uuid);

/// The advisory lock of a workspace's cap: its tenant with the nil agent id, which no agent
/// has (ids are UUIDv7), so it sorts before the workspace's agents and shares their lock
/// statement and their one global lock order.
pub(super) fn workspace_lock(tenant: Uuid) -> AgentKey {
    (tenant, Uuid::nil())
}

/// A pending task the claim locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Candidate {
    pub(super) tenant_id: Uuid,
    pub(super) task_id: Uuid,
    pub(super) agent_id: Uuid,
    /// The version of its row that the lock returned (`ctid`, as text): the claim's UPDATE
    /// marks the row by it.
    pub(super) row_version: String,
}

impl Candidate {
    pub(super) fn agent(&self) -> AgentKey {
        (self.tenant_id, self.agent_id)
    }
}

/// A candidate as the candidate query returns it: its workspace's place in the round and
/// its sort key within the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RankedCandidate {
    /// The position of its workspace in this claim's round (0 first).
    pub(super) round_position: i64,
    /// Its position within its workspace, in claim order (0 first).
    pub(super) rank: usize,
    pub(super) candidate: Candidate,
}

/// Deals candidates round robin across workspaces: every workspace's first task (in the
/// order the round visits workspaces), then every workspace's second, and so on. A workspace
/// with 100,000 pending tasks thus gets one turn per round like one with three.
pub(super) fn round_robin(mut ranked: Vec<RankedCandidate>) -> Vec<Candidate> {
    ranked.sort_by_key(|c| (c.rank, c.round_position));
    ranked.into_iter().map(|c| c.candidate).collect()
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

/// A capped workspace's standing in this claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkspaceSlot {
    /// Cap known, lock not taken yet.
    Unread { cap: i64 },
    /// Locked and counted: it may take `room` more tasks.
    Open { room: i64 },
    /// Locked by another claimer right now: take none of its tasks.
    Closed,
}

/// The choices of one claim transaction, across its candidate passes.
#[derive(Debug)]
pub(super) struct ClaimPlan {
    max: usize,
    agents: HashMap<AgentKey, AgentSlot>,
    /// Only workspaces with a cap on running tasks; the others never limit a claim.
    workspaces: BTreeMap<Uuid, WorkspaceSlot>,
    chosen: Vec<Candidate>,
}

impl ClaimPlan {
    /// A plan that takes at most `max` tasks, within the running-task `caps` of the
    /// workspaces that have one.
    pub(super) fn new(max: usize, caps: impl IntoIterator<Item = (Uuid, i64)>) -> Self {
        Self {
            max,
            agents: HashMap::new(),
            workspaces: caps
                .into_iter()
                .map(|(tenant, cap)| (tenant, WorkspaceSlot::Unread { cap }))
                .collect(),
            chosen: Vec::new(),
        }
    }

    /// Locks to take before `candidates` can be judged: agents not looked at yet and capped
    /// workspaces not counted yet ([`workspace_lock`]), sorted: the order their locks are
    /// taken in, so two claimers never wait on each other in a cycle.
    pub(super) fn unseen_locks(&self, candidates: &[Candidate]) -> Vec<AgentKey> {
        let mut locks: Vec<AgentKey> = Vec::new();
        for candidate in candidates {
            if !self.agents.contains_key(&candidate.agent()) {
                locks.push(candidate.agent());
            }
            if let Some(WorkspaceSlot::Unread { .. }) = self.workspaces.get(&candidate.tenant_id) {
                locks.push(workspace_lock(candidate.tenant_id));
            }
        }
        locks.sort_unstable();
        locks.dedup();
        locks
    }

    /// Records what was read for the locks `requested`: agent `states`, and the running
    /// tasks of each capped workspace locked. An agent or workspace requested but not read
    /// (not locked, or gone) is closed.
    pub(super) fn admit(
        &mut self,
        requested: &[AgentKey],
        states: Vec<AgentState>,
        workspace_running: &HashMap<Uuid, i64>,
    ) {
        for key in requested {
            if key.1.is_nil() {
                let Some(slot) = self.workspaces.get_mut(&key.0) else {
                    continue;
                };
                if let WorkspaceSlot::Unread { cap } = *slot {
                    *slot = match workspace_running.get(&key.0) {
                        Some(running) => WorkspaceSlot::Open {
                            room: cap.saturating_sub(*running),
                        },
                        None => WorkspaceSlot::Closed,
                    };
                }
            } else {
                self.agents.insert(*key, AgentSlot::Closed);
            }
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

    /// Walks `candidates` in claim order and takes each one whose agent and workspace have
    /// room, until the plan is full.
    pub(super) fn take(&mut self, candidates: &[Candidate]) {
        for candidate in candidates {
            if self.is_full() {
                return;
            }
            if self.chosen.contains(candidate) {
                continue;
            }
            let workspace_room = match self.workspaces.get_mut(&candidate.tenant_id) {
                None => None,
                Some(WorkspaceSlot::Open { room }) if *room > 0 => Some(room),
                Some(_) => continue,
            };
            if let Some(AgentSlot::Open { room, .. }) = self.agents.get_mut(&candidate.agent())
                && *room > 0
            {
                *room -= 1;
                if let Some(workspace_room) = workspace_room {
                    *workspace_room -= 1;
                }
                self.chosen.push(candidate.clone());
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

    /// Whether a further pass may still take tasks of `tenant`: it has no cap, or its cap
    /// has room (or is not counted yet).
    pub(super) fn workspace_open(&self, tenant: Uuid) -> bool {
        match self.workspaces.get(&tenant) {
            None | Some(WorkspaceSlot::Unread { .. }) => true,
            Some(WorkspaceSlot::Open { room }) => *room > 0,
            Some(WorkspaceSlot::Closed) => false,
        }
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
            row_version: String::new(),
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
                tools: serde_json::json!([]),
                max_steps: 16,
                fallbacks: serde_json::json!([]),
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
        let mut plan = ClaimPlan::new(10, []);
        let unseen = plan.unseen_locks(&candidates);
        assert_eq!(unseen, [agent(100), agent(200)]);
        plan.admit(
            &unseen,
            vec![state(100, 3, 1, false), state(200, 5, 0, false)],
            &HashMap::new(),
        );
        plan.take(&candidates);
        assert_eq!(chosen_tasks(&plan), [1, 2, 3, 5]);
        assert_eq!(plan.exhausted_agents(), [agent(100)]);
    }

    #[test]
    fn stops_at_max() {
        let candidates = [candidate(1, 100), candidate(2, 100), candidate(3, 100)];
        let mut plan = ClaimPlan::new(2, []);
        let unseen = plan.unseen_locks(&candidates);
        plan.admit(&unseen, vec![state(100, 10, 0, false)], &HashMap::new());
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
        let mut plan = ClaimPlan::new(10, []);
        let unseen = plan.unseen_locks(&candidates);
        plan.admit(
            &unseen,
            vec![
                state(100, 5, 0, true),
                state(300, 2, 2, false),
                state(400, 1, 0, false),
            ],
            &HashMap::new(),
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
        let mut plan = ClaimPlan::new(10, []);
        let first = [candidate(1, 100), candidate(2, 200), candidate(3, 200)];
        let unseen = plan.unseen_locks(&first);
        plan.admit(
            &unseen,
            vec![state(100, 2, 0, false), state(200, 1, 0, false)],
            &HashMap::new(),
        );
        plan.take(&first);
        assert_eq!(chosen_tasks(&plan), [1, 2]);

        let second = [candidate(1, 100), candidate(4, 100), candidate(5, 300)];
        let unseen = plan.unseen_locks(&second);
        assert_eq!(
            unseen,
            [agent(300)],
            "agents already read are not locked again"
        );
        plan.admit(&unseen, vec![state(300, 1, 0, false)], &HashMap::new());
        plan.take(&second);
        assert_eq!(chosen_tasks(&plan), [1, 2, 4, 5]);
    }

    fn in_tenant(tenant: u128, task: u128, agent_id: u128) -> Candidate {
        Candidate {
            tenant_id: Uuid::from_u128(tenant),
            task_id: Uuid::from_u128(task),
            agent_id: Uuid::from_u128(agent_id),
            row_version: String::new(),
        }
    }

    fn ranked(round_position: i64, rank: usize, candidate: Candidate) -> RankedCandidate {
        RankedCandidate {
            round_position,
            rank,
            candidate,
        }
    }

    #[test]
    fn round_robin_deals_one_task_per_workspace_per_turn() {
        // The flooding workspace (position 0) has four candidates, the other two have one
        // and two; input order is the query's, workspace by workspace.
        let dealt = round_robin(vec![
            ranked(0, 0, in_tenant(1, 10, 100)),
            ranked(0, 1, in_tenant(1, 11, 100)),
            ranked(0, 2, in_tenant(1, 12, 100)),
            ranked(0, 3, in_tenant(1, 13, 100)),
            ranked(1, 0, in_tenant(2, 20, 200)),
            ranked(2, 0, in_tenant(3, 30, 300)),
            ranked(2, 1, in_tenant(3, 31, 300)),
        ]);
        let tasks: Vec<u128> = dealt.iter().map(|c| c.task_id.as_u128()).collect();
        assert_eq!(tasks, [10, 20, 30, 11, 31, 12, 13]);
    }

    #[test]
    fn a_workspace_cap_limits_its_tasks_across_agents_and_leaves_others_alone() {
        let capped = Uuid::from_u128(1);
        let candidates = [
            in_tenant(1, 10, 100),
            in_tenant(2, 20, 200),
            in_tenant(1, 11, 101),
            in_tenant(1, 12, 100),
            in_tenant(2, 21, 200),
        ];
        let mut plan = ClaimPlan::new(10, [(capped, 3)]);
        let locks = plan.unseen_locks(&candidates);
        assert_eq!(
            locks,
            [
                workspace_lock(capped),
                (capped, Uuid::from_u128(100)),
                (capped, Uuid::from_u128(101)),
                (Uuid::from_u128(2), Uuid::from_u128(200)),
            ],
            "the workspace's lock sorts before its agents'"
        );
        let states = [(1, 100), (1, 101), (2, 200)]
            .into_iter()
            .map(|(tenant, agent_id)| AgentState {
                key: (Uuid::from_u128(tenant), Uuid::from_u128(agent_id)),
                ..state(agent_id, 10, 0, false)
            })
            .collect();
        // One task of the capped workspace already runs elsewhere: room for two more.
        plan.admit(&locks, states, &HashMap::from([(capped, 1)]));
        plan.take(&candidates);
        let tasks: Vec<u128> = plan.chosen().iter().map(|c| c.task_id.as_u128()).collect();
        assert_eq!(tasks, [10, 20, 11, 21]);
        assert!(!plan.workspace_open(capped));
        assert!(plan.workspace_open(Uuid::from_u128(2)));
    }

    #[test]
    fn a_capped_workspace_locked_elsewhere_is_skipped() {
        let capped = Uuid::from_u128(1);
        let candidates = [in_tenant(1, 10, 100)];
        let mut plan = ClaimPlan::new(10, [(capped, 5)]);
        let locks = plan.unseen_locks(&candidates);
        let states = vec![AgentState {
            key: (capped, Uuid::from_u128(100)),
            ..state(100, 10, 0, false)
        }];
        // The workspace's count is missing: its lock was not granted.
        plan.admit(&locks, states, &HashMap::new());
        plan.take(&candidates);
        assert!(plan.chosen().is_empty());
        assert!(!plan.workspace_open(capped));
    }
}

//! Fairness and routing of the claim: workspaces take turns, a workspace's cap on running
//! tasks holds, a requeued task keeps its place in line, and labels route tasks to workers.

use std::collections::HashMap;
use std::time::Duration;

use agentplane_core::ids::TenantId;
use agentplane_worker::queue::{ClaimRequest, WorkerLabels, claim, claim_tasks};
use sqlx::PgPool;
use uuid::Uuid;

use crate::fixtures::{agent, task, workspace};
use crate::pg::TestDb;

const LEASE: Duration = Duration::from_secs(60);

fn request(max: u32, labels: &str, resume_after: Option<TenantId>) -> ClaimRequest {
    ClaimRequest {
        worker_id: Uuid::now_v7(),
        max,
        lease: LEASE,
        labels: WorkerLabels::parse(labels).unwrap(),
        resume_after,
    }
}

/// Pending tasks of `agent_id`, each its own statement (so each has its own created_at).
async fn tasks(owner: &PgPool, tenant: Uuid, agent_id: Uuid, count: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(task(owner, tenant, agent_id, 0, "work").await);
    }
    ids
}

#[tokio::test]
async fn a_flooding_workspace_does_not_starve_one_that_submits_a_few() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let flood = workspace(&owner).await;
    let flood_agent = agent(&owner, flood, 10_000).await;
    // 2,000 tasks queued first, in one statement.
    sqlx::query(
        "INSERT INTO tasks (tenant_id, id, agent_id, max_attempts) \
         SELECT $1, gen_random_uuid(), $2, 3 FROM generate_series(1, 2000)",
    )
    .bind(flood)
    .bind(flood_agent)
    .execute(&owner)
    .await
    .unwrap();
    let few = workspace(&owner).await;
    let few_agent = agent(&owner, few, 10).await;
    let mine = tasks(&owner, few, few_agent, 3).await;
    let pool = db.worker_pool().await;

    // One claim of 8: the later workspace's three tasks are dealt in with the flood's.
    let claimed = claim(&pool, &request(8, "", None)).await.unwrap();
    let by_workspace = count_by_tenant(claimed.tasks.iter().map(|t| t.tenant_id.0));
    assert_eq!(by_workspace.get(&few), Some(&3));
    assert_eq!(by_workspace.get(&flood), Some(&5));
    let mut taken: Vec<Uuid> = claimed
        .tasks
        .iter()
        .filter(|t| t.tenant_id.0 == few)
        .map(|t| t.task_id.0)
        .collect();
    taken.sort_unstable();
    let mut expected = mine.clone();
    expected.sort_unstable();
    assert_eq!(taken, expected);
}

#[tokio::test]
async fn claims_of_one_task_take_turns_across_workspaces() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let mut tenants = Vec::new();
    for _ in 0..3 {
        let tenant = workspace(&owner).await;
        let agent_id = agent(&owner, tenant, 100).await;
        tasks(&owner, tenant, agent_id, 4).await;
        tenants.push(tenant);
    }
    let pool = db.worker_pool().await;

    let mut resume_after = None;
    let mut order = Vec::new();
    for _ in 0..6 {
        let claimed = claim(&pool, &request(1, "", resume_after)).await.unwrap();
        assert_eq!(claimed.tasks.len(), 1);
        order.push(claimed.tasks[0].tenant_id.0);
        resume_after = claimed.resume_after;
    }
    // Every window of three consecutive claims serves each workspace once.
    for window in order.windows(3) {
        let distinct = count_by_tenant(window.iter().copied());
        assert_eq!(distinct.len(), 3, "claims went {order:?}");
    }
}

#[tokio::test]
async fn a_workspace_cap_bounds_its_running_tasks_across_agents_and_claims() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let capped = workspace(&owner).await;
    sqlx::query("UPDATE workspaces SET max_running_tasks = 3 WHERE id = $1")
        .bind(capped)
        .execute(&owner)
        .await
        .unwrap();
    let first = agent(&owner, capped, 100).await;
    let second = agent(&owner, capped, 100).await;
    tasks(&owner, capped, first, 4).await;
    tasks(&owner, capped, second, 4).await;
    let other = workspace(&owner).await;
    let other_agent = agent(&owner, other, 100).await;
    tasks(&owner, other, other_agent, 4).await;
    let pool = db.worker_pool().await;

    let one = claim_tasks(&pool, Uuid::now_v7(), 2, LEASE).await.unwrap();
    let two = claim_tasks(&pool, Uuid::now_v7(), 10, LEASE).await.unwrap();
    let claimed = count_by_tenant(one.iter().chain(&two).map(|t| t.tenant_id.0));
    assert_eq!(
        claimed.get(&capped),
        Some(&3),
        "the cap holds across claims"
    );
    assert_eq!(
        claimed.get(&other),
        Some(&4),
        "other workspaces are not held back"
    );
    let three = claim_tasks(&pool, Uuid::now_v7(), 10, LEASE).await.unwrap();
    assert!(three.is_empty());

    // One running task finishes: room for exactly one more.
    sqlx::query(
        "UPDATE tasks SET status = 'succeeded', worker_id = NULL, lease_expires_at = NULL, \
                          ended_at = now() \
         WHERE id = (SELECT id FROM tasks WHERE tenant_id = $1 AND status = 'running' LIMIT 1)",
    )
    .bind(capped)
    .execute(&owner)
    .await
    .unwrap();
    let four = claim_tasks(&pool, Uuid::now_v7(), 10, LEASE).await.unwrap();
    assert_eq!(four.len(), 1);
    assert_eq!(four[0].tenant_id.0, capped);
}

#[tokio::test]
async fn a_requeued_task_keeps_its_place_in_line_once_due_again() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let agent_id = agent(&owner, tenant, 100).await;
    let old = task(&owner, tenant, agent_id, 0, "first in line").await;
    let pool = db.worker_pool().await;
    let claimed = claim_tasks(&pool, Uuid::now_v7(), 1, LEASE).await.unwrap();
    assert_eq!(claimed[0].task_id.0, old);
    let newer = tasks(&owner, tenant, agent_id, 5).await;
    // The attempt failed and the task was requeued with a backoff that is now over.
    sqlx::query(
        "UPDATE tasks SET status = 'pending', worker_id = NULL, lease_expires_at = NULL, \
                          run_at = now() - interval '1 millisecond' \
         WHERE id = $1",
    )
    .bind(old)
    .execute(&owner)
    .await
    .unwrap();

    let next = claim_tasks(&pool, Uuid::now_v7(), 1, LEASE).await.unwrap();
    assert_eq!(
        next[0].task_id.0,
        old,
        "not behind the {} newer tasks",
        newer.len()
    );
}

#[tokio::test]
async fn labels_route_tasks_to_matching_workers_only() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let gpu_agent = agent(&owner, tenant, 100).await;
    let any_agent = agent(&owner, tenant, 100).await;
    let gpu_task = task(&owner, tenant, gpu_agent, 5, "needs a gpu").await;
    sqlx::query("UPDATE tasks SET required_labels = '{\"gpu\": \"a100\", \"region\": \"eu\"}' WHERE id = $1")
        .bind(gpu_task)
        .execute(&owner)
        .await
        .unwrap();
    let plain_task = task(&owner, tenant, any_agent, 0, "runs anywhere").await;
    let pool = db.worker_pool().await;

    // A worker without the labels (or with a different value) passes over the GPU task,
    // although it is first in line.
    let unlabelled = claim(&pool, &request(10, "region=eu", None)).await.unwrap();
    let ids: Vec<Uuid> = unlabelled.tasks.iter().map(|t| t.task_id.0).collect();
    assert_eq!(ids, [plain_task]);
    let wrong = claim(&pool, &request(10, "gpu=h100,region=eu", None))
        .await
        .unwrap();
    assert!(wrong.tasks.is_empty());
    // A worker with every required label (and more) takes it.
    let matching = claim(&pool, &request(10, "gpu=a100,region=eu,zone=b", None))
        .await
        .unwrap();
    let ids: Vec<Uuid> = matching.tasks.iter().map(|t| t.task_id.0).collect();
    assert_eq!(ids, [gpu_task]);
}

fn count_by_tenant(tenants: impl IntoIterator<Item = Uuid>) -> HashMap<Uuid, usize> {
    let mut counts = HashMap::new();
    for tenant in tenants {
        *counts.entry(tenant).or_default() += 1;
    }
    counts
}

//! Live output of running attempts, stored in batches. A worker session publishes each
//! delta as it arrives and gathers them for about 100 ms (`api/workers/output.rs`); they
//! are stored here with a fixed number of statements per workspace, whatever the number of
//! deltas and attempts.

use std::collections::HashMap;

use agentplane_core::notify::Notification;

use super::{StoreResult, TenantTx};
use crate::domain::output::{DeltaStep, OutputChain};
use crate::domain::worker::Lease;
use crate::ids::{TaskId, WorkerId};

/// A delta waiting to be stored.
#[derive(Clone, Debug)]
pub struct PendingDelta {
    /// The attempt.
    pub lease: Lease,
    /// Its index within the attempt.
    pub index: i64,
    /// The text.
    pub text: String,
}

impl TenantTx {
    /// Stores `deltas` (this workspace's, in the order they arrived) of the attempts
    /// `worker` holds, each only if it extends its attempt's output (the next index, within
    /// the 1 MiB cap: [`OutputChain`]), and tells watchers how far each attempt's stored
    /// output now reaches. Returns where the output of every held attempt stands; an attempt
    /// missing from the answer is not held by `worker`.
    pub async fn append_outputs(
        &mut self,
        worker: WorkerId,
        deltas: &[PendingDelta],
    ) -> StoreResult<HashMap<(TaskId, i32), OutputChain>> {
        if deltas.is_empty() {
            return Ok(HashMap::new());
        }
        let mut attempts: Vec<(TaskId, i32)> = deltas
            .iter()
            .map(|d| (d.lease.task, d.lease.attempt))
            .collect();
        attempts.sort_unstable();
        attempts.dedup();
        let (ids, numbers): (Vec<TaskId>, Vec<i32>) = attempts.into_iter().unzip();
        // Locked in id order, as everywhere several tasks are locked at once; the lock also
        // keeps a second session of the same worker from writing the same attempt meanwhile.
        let held: Vec<(TaskId, i32, Option<i64>, Option<i64>)> = self
            .query_as(
                "SELECT t.id, t.attempt, last.seq, last.end_offset FROM tasks t \
                 LEFT JOIN LATERAL ( \
                     SELECT seq, end_offset FROM task_output_chunks c \
                     WHERE c.tenant_id = $1 AND c.task_id = t.id AND c.attempt = t.attempt \
                     ORDER BY seq DESC LIMIT 1) last ON true \
                 WHERE t.tenant_id = $1 AND (t.id, t.attempt) IN \
                       (SELECT * FROM unnest($2::uuid[], $3::int[])) \
                   AND t.status = 'running' AND t.worker_id = $4 \
                 ORDER BY t.id FOR UPDATE OF t",
            )
            .bind(&ids)
            .bind(&numbers)
            .bind(worker)
            .fetch_all(self.executor())
            .await?;
        let mut chains: HashMap<(TaskId, i32), OutputChain> = held
            .into_iter()
            .map(|(task, attempt, last, bytes)| {
                let chain = OutputChain {
                    next_index: last.map_or(0, |seq| seq.saturating_add(1)),
                    bytes: bytes.unwrap_or(0),
                };
                ((task, attempt), chain)
            })
            .collect();

        let mut rows = Rows::default();
        for delta in deltas {
            let key = (delta.lease.task, delta.lease.attempt);
            let Some(chain) = chains.get_mut(&key) else {
                continue;
            };
            if let DeltaStep::Append { end_offset } = chain.step(delta.index, delta.text.len()) {
                rows.tasks.push(delta.lease.task);
                rows.attempts.push(delta.lease.attempt);
                rows.indexes.push(delta.index);
                rows.texts.push(&delta.text);
                rows.end_offsets.push(end_offset);
            }
        }
        if rows.tasks.is_empty() {
            return Ok(chains);
        }
        self.query(
            "INSERT INTO task_output_chunks (tenant_id, task_id, attempt, seq, content, \
                                             end_offset) \
             SELECT $1, d.task_id, d.attempt, d.seq, d.content, d.end_offset \
             FROM unnest($2::uuid[], $3::int[], $4::bigint[], $5::text[], $6::bigint[]) \
                  AS d(task_id, attempt, seq, content, end_offset) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&rows.tasks)
        .bind(&rows.attempts)
        .bind(&rows.indexes)
        .bind(&rows.texts)
        .bind(&rows.end_offsets)
        .execute(self.executor())
        .await?;
        // One notice per attempt that grew: the index of its last stored delta, without
        // text. Watchers that showed the deltas as they were published ignore it; one that
        // is behind the published deltas (it started, or fell behind, meanwhile) reads on.
        let tenant = self.tenant();
        let mut grown: Vec<(TaskId, i32)> = rows.tasks.iter().copied().zip(rows.attempts).collect();
        grown.sort_unstable();
        grown.dedup();
        let notifications: Vec<Notification> = grown
            .into_iter()
            .filter_map(|(task, attempt)| {
                let chain = chains.get(&(task, attempt))?;
                Some(Notification::TaskOutput {
                    tenant,
                    task,
                    attempt,
                    index: chain.next_index - 1,
                    text: None,
                })
            })
            .collect();
        self.notify(&notifications).await?;
        Ok(chains)
    }
}

/// Column arrays of the rows to insert, bound with `unnest`.
#[derive(Default)]
struct Rows<'a> {
    tasks: Vec<TaskId>,
    attempts: Vec<i32>,
    indexes: Vec<i64>,
    texts: Vec<&'a str>,
    end_offsets: Vec<i64>,
}

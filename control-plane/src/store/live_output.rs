//! Live output of running attempts, stored in batches. A worker session publishes each
//! delta (and each reset, which withdraws an attempt's output so far) as it arrives and
//! gathers them for about 100 ms (`api/workers/output.rs`); they are stored here with a
//! fixed number of statements per workspace, whatever the number of deltas and attempts.

use std::collections::HashMap;

use agentplane_core::notify::Notification;

use super::{StoreResult, TenantTx};
use crate::domain::output::{DeltaStep, OutputChain};
use crate::domain::worker::Lease;
use crate::ids::{TaskId, WorkerId};

/// A delta, or a reset, waiting to be stored.
#[derive(Clone, Debug)]
pub struct PendingDelta {
    /// The attempt.
    pub lease: Lease,
    /// Its index within the attempt; for a reset, the index of the attempt's next delta.
    pub index: i64,
    /// The text (empty for a reset).
    pub text: String,
    /// Whether it withdraws the attempt's output before `index` instead of adding text.
    pub reset: bool,
}

impl TenantTx {
    /// Stores `deltas` (this workspace's deltas and resets, in the order they arrived) of
    /// the attempts `worker` holds, each only if it moves its attempt's output on (a delta:
    /// the next index, within the 1 MiB cap; a reset: past the latest reset and not behind
    /// the output; [`OutputChain`]), and tells watchers about each reset and how far each
    /// attempt's stored output now reaches. Returns where the output of every held attempt
    /// stands; an attempt missing from the answer is not held by `worker`.
    ///
    /// A reset deletes the withdrawn rows and leaves one marker row in place of the last of
    /// them (`reset`, no text, a byte total of 0, at the reset's index - 1), so the highest
    /// row still says where the output stands and the stored text is only what was not
    /// withdrawn.
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
        // Locked in id order (the order of the keys, each probed by primary key: a subquery
        // that locks is never flattened into a join), as everywhere several tasks are locked
        // at once; the lock also keeps a second session of the same worker from writing the
        // same attempt meanwhile.
        let held: Vec<HeldAttempt> = self
            .query_as(
                "SELECT t.id, t.attempt, last.seq, last.end_offset, last.reset \
                 FROM unnest($2::uuid[], $3::int[]) AS k(id, attempt) \
                 CROSS JOIN LATERAL ( \
                     SELECT id, attempt FROM tasks \
                     WHERE tenant_id = (SELECT $1::uuid) AND id = k.id AND attempt = k.attempt \
                       AND status = (SELECT 'running'::text) AND worker_id = $4 \
                     FOR UPDATE) t \
                 LEFT JOIN LATERAL ( \
                     SELECT seq, end_offset, reset FROM task_output_chunks c \
                     WHERE c.tenant_id = $1 AND c.task_id = t.id AND c.attempt = t.attempt \
                     ORDER BY seq DESC LIMIT 1) last ON true",
            )
            .bind(&ids)
            .bind(&numbers)
            .bind(worker)
            .fetch_all(self.executor())
            .await?;
        let mut chains: HashMap<(TaskId, i32), OutputChain> = held
            .into_iter()
            .map(|(task, attempt, last, bytes, reset)| {
                let next_index = last.map_or(0, |seq| seq.saturating_add(1));
                let chain = OutputChain {
                    next_index,
                    bytes: bytes.unwrap_or(0),
                    // Known only while the marker is the last row; once a delta follows it,
                    // `next_index` alone decides which resets are repeats.
                    reset_index: if reset == Some(true) { next_index } else { 0 },
                };
                ((task, attempt), chain)
            })
            .collect();

        let mut rows: Vec<Row<'_>> = Vec::new();
        // Attempts a reset of this batch withdrew output of, and the latest such reset.
        let mut withdrawn: HashMap<(TaskId, i32), i64> = HashMap::new();
        for delta in deltas {
            let key = (delta.lease.task, delta.lease.attempt);
            let Some(chain) = chains.get_mut(&key) else {
                continue;
            };
            if delta.reset {
                if chain.reset(delta.index) {
                    // What this batch was about to write for the attempt is withdrawn too.
                    rows.retain(|row| (row.task, row.attempt) != key);
                    withdrawn.insert(key, delta.index);
                    rows.push(Row {
                        task: key.0,
                        attempt: key.1,
                        seq: delta.index - 1,
                        content: "",
                        end_offset: 0,
                        reset: true,
                    });
                }
            } else if let DeltaStep::Append { end_offset } =
                chain.step(delta.index, delta.text.len())
            {
                rows.push(Row {
                    task: key.0,
                    attempt: key.1,
                    seq: delta.index,
                    content: &delta.text,
                    end_offset,
                    reset: false,
                });
            }
        }
        if rows.is_empty() {
            return Ok(chains);
        }
        if !withdrawn.is_empty() {
            let (keys, before): (Vec<(TaskId, i32)>, Vec<i64>) =
                withdrawn.iter().map(|(key, index)| (*key, *index)).unzip();
            let (tasks, attempts): (Vec<TaskId>, Vec<i32>) = keys.into_iter().unzip();
            self.query(
                "DELETE FROM task_output_chunks c \
                 USING unnest($2::uuid[], $3::int[], $4::bigint[]) AS w(task_id, attempt, next) \
                 WHERE c.tenant_id = $1 AND c.task_id = w.task_id AND c.attempt = w.attempt \
                   AND c.seq < w.next",
            )
            .bind(&tasks)
            .bind(&attempts)
            .bind(&before)
            .execute(self.executor())
            .await?;
        }
        let columns = Columns::of(&rows);
        self.query(
            "INSERT INTO task_output_chunks (tenant_id, task_id, attempt, seq, content, \
                                             end_offset, reset) \
             SELECT $1, d.task_id, d.attempt, d.seq, d.content, d.end_offset, d.reset \
             FROM unnest($2::uuid[], $3::int[], $4::bigint[], $5::text[], $6::bigint[], \
                         $7::bool[]) \
                  AS d(task_id, attempt, seq, content, end_offset, reset) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&columns.tasks)
        .bind(&columns.attempts)
        .bind(&columns.seqs)
        .bind(&columns.contents)
        .bind(&columns.end_offsets)
        .bind(&columns.resets)
        .execute(self.executor())
        .await?;
        // Per attempt that changed: its reset, if it had one (watchers that saw it published
        // ignore it), then the index of its last stored delta, without text (watchers that
        // showed the deltas as they were published ignore it; one that is behind them, having
        // started or fallen behind meanwhile, reads on).
        let tenant = self.tenant();
        let mut changed: Vec<(TaskId, i32)> = rows.iter().map(|r| (r.task, r.attempt)).collect();
        changed.sort_unstable();
        changed.dedup();
        let mut notifications = Vec::with_capacity(changed.len());
        for (task, attempt) in changed {
            let Some(chain) = chains.get(&(task, attempt)) else {
                continue;
            };
            let reset = withdrawn.get(&(task, attempt)).copied();
            if let Some(index) = reset {
                notifications.push(Notification::TaskOutputReset {
                    tenant,
                    task,
                    attempt,
                    index,
                });
            }
            if reset != Some(chain.next_index) {
                notifications.push(Notification::TaskOutput {
                    tenant,
                    task,
                    attempt,
                    index: chain.next_index - 1,
                    text: None,
                });
            }
        }
        self.notify(&notifications).await?;
        Ok(chains)
    }
}

/// An attempt the worker holds, and its highest output row if any: index, running byte
/// total, whether it is a reset marker.
type HeldAttempt = (TaskId, i32, Option<i64>, Option<i64>, Option<bool>);

/// A row to insert.
struct Row<'a> {
    task: TaskId,
    attempt: i32,
    seq: i64,
    content: &'a str,
    end_offset: i64,
    reset: bool,
}

/// Column arrays of the rows to insert, bound with `unnest`.
#[derive(Default)]
struct Columns<'a> {
    tasks: Vec<TaskId>,
    attempts: Vec<i32>,
    seqs: Vec<i64>,
    contents: Vec<&'a str>,
    end_offsets: Vec<i64>,
    resets: Vec<bool>,
}

impl<'a> Columns<'a> {
    fn of(rows: &[Row<'a>]) -> Self {
        let mut columns = Columns::default();
        for row in rows {
            columns.tasks.push(row.task);
            columns.attempts.push(row.attempt);
            columns.seqs.push(row.seq);
            columns.contents.push(row.content);
            columns.end_offsets.push(row.end_offset);
            columns.resets.push(row.reset);
        }
        columns
    }
}

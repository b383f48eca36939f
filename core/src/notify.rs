//! PostgreSQL LISTEN/NOTIFY: the channels and the one encoding of their payloads. The
//! control plane and the worker both notify, and the control plane's fan-out decodes; all
//! three go through [`Notification`], so no side can drift from another.
//!
//! Payloads are compact JSON with one-letter keys (`t` tenant, `k` task, `a` attempt, `i`
//! delta index, `x` delta text, `r` an output reset, `w` worker, `s` when it was sent, in
//! microseconds since the Unix epoch), kept under PostgreSQL's 8000-byte limit.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{TaskId, TenantId, WorkerId};

/// Channel names.
pub mod channel {
    /// A task became claimable (empty payload). Workers listen.
    pub const TASK_READY: &str = "agentplane_task_ready";
    /// A task changed status.
    pub const TASK_STATE: &str = "agentplane_task_state";
    /// Output of a running attempt was published, stored or withdrawn.
    pub const TASK_OUTPUT: &str = "agentplane_task_output";
    /// A running attempt must stop.
    pub const TASK_CANCEL: &str = "agentplane_task_cancel";
    /// Events were appended for a workspace.
    pub const EVENTS: &str = "agentplane_events";
}

/// Largest payload sent; PostgreSQL refuses 8000 bytes or more.
pub const MAX_PAYLOAD_BYTES: usize = 7900;

/// A notification, as sent and as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// A task became claimable.
    TaskReady,
    /// A task changed status.
    TaskState {
        /// Workspace.
        tenant: TenantId,
        /// Task.
        task: TaskId,
    },
    /// A delta of a running attempt was stored.
    TaskOutput {
        /// Workspace.
        tenant: TenantId,
        /// Task.
        task: TaskId,
        /// Attempt.
        attempt: i32,
        /// Delta index.
        index: i64,
        /// The text, when it fits in a payload; otherwise listeners read it from the table.
        text: Option<String>,
    },
    /// The output of a running attempt so far was withdrawn (a model call failed after
    /// streaming it); its next delta has `index`. Sent on the output channel, so it stays in
    /// order with the deltas around it.
    TaskOutputReset {
        /// Workspace.
        tenant: TenantId,
        /// Task.
        task: TaskId,
        /// Attempt.
        attempt: i32,
        /// Index of the attempt's next delta.
        index: i64,
    },
    /// A worker must stop an attempt.
    TaskCancel {
        /// Workspace.
        tenant: TenantId,
        /// Task.
        task: TaskId,
        /// Attempt.
        attempt: i32,
        /// Worker holding it.
        worker: WorkerId,
    },
    /// Events were appended for a workspace.
    Events {
        /// Workspace.
        tenant: TenantId,
    },
}

#[derive(Default, Serialize, Deserialize)]
struct Wire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    t: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    k: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    a: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    i: Option<i64>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    x: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    r: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    w: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    s: Option<i64>,
}

impl Notification {
    /// The channel it is sent on.
    pub fn channel(&self) -> &'static str {
        match self {
            Notification::TaskReady => channel::TASK_READY,
            Notification::TaskState { .. } => channel::TASK_STATE,
            Notification::TaskOutput { .. } | Notification::TaskOutputReset { .. } => {
                channel::TASK_OUTPUT
            }
            Notification::TaskCancel { .. } => channel::TASK_CANCEL,
            Notification::Events { .. } => channel::EVENTS,
        }
    }

    /// The payload, at most [`MAX_PAYLOAD_BYTES`]: an output delta whose text would not fit
    /// is sent without it.
    pub fn payload(&self) -> String {
        self.payload_sent_at(None)
    }

    /// Whether the payload carries everything this notification says: false for an output
    /// delta whose text is too long for a payload (listeners read it from the table).
    pub fn fits_in_payload(&self) -> bool {
        match self {
            Notification::TaskOutput { text: Some(_), .. } => {
                matches!(
                    Notification::decode(self.channel(), &self.payload_sent_at(Some(i64::MAX))),
                    Some(Notification::TaskOutput { text: Some(_), .. })
                )
            }
            _ => true,
        }
    }

    /// The payload, stamped with the time it is sent (microseconds since the Unix epoch) so
    /// listeners can tell how long it took to reach them.
    fn payload_sent_at(&self, sent_at: Option<i64>) -> String {
        let wire = match self {
            Notification::TaskReady => return String::new(),
            Notification::TaskState { tenant, task } => Wire {
                t: Some(tenant.0),
                k: Some(task.0),
                ..Wire::default()
            },
            Notification::TaskOutput {
                tenant,
                task,
                attempt,
                index,
                text,
            } => {
                let mut wire = Wire {
                    t: Some(tenant.0),
                    k: Some(task.0),
                    a: Some(*attempt),
                    i: Some(*index),
                    x: text.as_deref().map(std::borrow::Cow::Borrowed),
                    s: sent_at,
                    ..Wire::default()
                };
                let encoded = encode(&wire);
                if encoded.len() <= MAX_PAYLOAD_BYTES {
                    return encoded;
                }
                wire.x = None;
                wire
            }
            Notification::TaskOutputReset {
                tenant,
                task,
                attempt,
                index,
            } => Wire {
                t: Some(tenant.0),
                k: Some(task.0),
                a: Some(*attempt),
                i: Some(*index),
                r: Some(true),
                ..Wire::default()
            },
            Notification::TaskCancel {
                tenant,
                task,
                attempt,
                worker,
            } => Wire {
                t: Some(tenant.0),
                k: Some(task.0),
                a: Some(*attempt),
                w: Some(worker.0),
                ..Wire::default()
            },
            Notification::Events { tenant } => Wire {
                t: Some(tenant.0),
                ..Wire::default()
            },
        };
        encode(&Wire { s: sent_at, ..wire })
    }

    /// Decodes what arrived on `channel`; `None` for an unknown channel or a malformed
    /// payload.
    pub fn decode(channel_name: &str, payload: &str) -> Option<Self> {
        Self::decode_with_sent_at(channel_name, payload).map(|(notification, _)| notification)
    }

    /// Decodes like [`Notification::decode`], with the time the sender stamped on it (none
    /// on `task_ready`, or from a sender that did not stamp it).
    pub fn decode_with_sent_at(
        channel_name: &str,
        payload: &str,
    ) -> Option<(Self, Option<SystemTime>)> {
        if channel_name == channel::TASK_READY {
            return Some((Notification::TaskReady, None));
        }
        let wire: Wire<'_> = serde_json::from_str(payload).ok()?;
        let sent_at = wire
            .s
            .and_then(|micros| u64::try_from(micros).ok())
            .and_then(|micros| UNIX_EPOCH.checked_add(Duration::from_micros(micros)));
        let tenant = TenantId(wire.t?);
        let notification = match channel_name {
            channel::TASK_STATE => Notification::TaskState {
                tenant,
                task: TaskId(wire.k?),
            },
            channel::TASK_OUTPUT if wire.r == Some(true) => Notification::TaskOutputReset {
                tenant,
                task: TaskId(wire.k?),
                attempt: wire.a?,
                index: wire.i?,
            },
            channel::TASK_OUTPUT => Notification::TaskOutput {
                tenant,
                task: TaskId(wire.k?),
                attempt: wire.a?,
                index: wire.i?,
                text: wire.x.map(std::borrow::Cow::into_owned),
            },
            channel::TASK_CANCEL => Notification::TaskCancel {
                tenant,
                task: TaskId(wire.k?),
                attempt: wire.a?,
                worker: WorkerId(wire.w?),
            },
            channel::EVENTS => Notification::Events { tenant },
            _ => return None,
        };
        Some((notification, sent_at))
    }
}

/// Now, in microseconds since the Unix epoch, as payloads carry it.
#[cfg(feature = "sqlx")]
fn now_micros() -> Option<i64> {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(since.as_micros()).ok()
}

/// Queues `notifications` in the transaction `connection` is in, in one statement, each
/// stamped with the time it is sent; PostgreSQL delivers them when it commits (identical
/// ones once).
#[cfg(feature = "sqlx")]
pub async fn send_all(
    connection: &mut sqlx::PgConnection,
    notifications: &[Notification],
) -> Result<(), sqlx::Error> {
    if notifications.is_empty() {
        return Ok(());
    }
    let (channels, payloads) = stamped(notifications);
    sqlx::query(
        "SELECT pg_notify(n.channel, n.payload) \
         FROM unnest($1::text[], $2::text[]) AS n(channel, payload)",
    )
    .bind(channels)
    .bind(payloads)
    .execute(connection)
    .await?;
    Ok(())
}

/// Sends `notifications` now, in one statement that is a transaction of its own and does
/// not wait for its commit to reach the disk (a notification is not kept across a crash
/// anyway): for news listeners should have before the change it announces is stored.
#[cfg(feature = "sqlx")]
pub async fn publish_now(
    pool: &sqlx::PgPool,
    notifications: &[Notification],
) -> Result<(), sqlx::Error> {
    if notifications.is_empty() {
        return Ok(());
    }
    let (channels, payloads) = stamped(notifications);
    sqlx::query(
        "SELECT pg_notify(n.channel, n.payload) \
         FROM (SELECT set_config('synchronous_commit', 'off', true)) AS quick, \
              unnest($1::text[], $2::text[]) AS n(channel, payload)",
    )
    .bind(channels)
    .bind(payloads)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(feature = "sqlx")]
fn stamped(notifications: &[Notification]) -> (Vec<&'static str>, Vec<String>) {
    let sent_at = now_micros();
    notifications
        .iter()
        .map(|n| (n.channel(), n.payload_sent_at(sent_at)))
        .unzip()
}

fn encode(wire: &Wire<'_>) -> String {
    // Serialising plain ids, numbers and a string cannot fail.
    serde_json::to_string(wire).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tenant() -> TenantId {
        TenantId(Uuid::from_u128(1))
    }

    fn task() -> TaskId {
        TaskId(Uuid::from_u128(2))
    }

    #[test]
    fn every_kind_round_trips() {
        for notification in [
            Notification::TaskReady,
            Notification::TaskState {
                tenant: tenant(),
                task: task(),
            },
            Notification::TaskOutput {
                tenant: tenant(),
                task: task(),
                attempt: 2,
                index: 7,
                text: Some("hé \"quoted\" \n".to_owned()),
            },
            Notification::TaskOutputReset {
                tenant: tenant(),
                task: task(),
                attempt: 2,
                index: 9,
            },
            Notification::TaskCancel {
                tenant: tenant(),
                task: task(),
                attempt: 1,
                worker: WorkerId(Uuid::from_u128(3)),
            },
            Notification::Events { tenant: tenant() },
        ] {
            let decoded = Notification::decode(notification.channel(), &notification.payload());
            assert_eq!(decoded, Some(notification));
        }
    }

    #[test]
    fn the_send_time_round_trips_to_the_microsecond() {
        let notification = Notification::Events { tenant: tenant() };
        let payload = notification.payload_sent_at(Some(1_700_000_000_123_456));
        let (decoded, sent_at) =
            Notification::decode_with_sent_at(channel::EVENTS, &payload).expect("decodes");
        assert_eq!(decoded, notification);
        assert_eq!(
            sent_at,
            Some(UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456))
        );
        let unstamped = Notification::decode_with_sent_at(channel::EVENTS, &notification.payload());
        assert_eq!(unstamped, Some((notification, None)));
    }

    #[test]
    fn a_delta_too_long_for_a_payload_does_not_fit() {
        let short = Notification::TaskOutput {
            tenant: tenant(),
            task: task(),
            attempt: 1,
            index: 0,
            text: Some("hi".to_owned()),
        };
        assert!(short.fits_in_payload());
        let long = Notification::TaskOutput {
            tenant: tenant(),
            task: task(),
            attempt: 1,
            index: 0,
            text: Some("x".repeat(MAX_PAYLOAD_BYTES)),
        };
        assert!(!long.fits_in_payload());
    }

    #[test]
    fn the_payload_is_compact_and_keyed_by_single_letters() {
        let payload = Notification::Events { tenant: tenant() }.payload();
        assert_eq!(payload, format!(r#"{{"t":"{}"}}"#, tenant()));
    }

    #[test]
    fn text_that_would_not_fit_is_left_out() {
        // Quotes double in size when escaped: the check is on the encoded payload.
        let text = "\"".repeat(MAX_PAYLOAD_BYTES / 2);
        let notification = Notification::TaskOutput {
            tenant: tenant(),
            task: task(),
            attempt: 1,
            index: 0,
            text: Some(text),
        };
        let payload = notification.payload();
        assert!(payload.len() <= MAX_PAYLOAD_BYTES);
        assert!(matches!(
            Notification::decode(channel::TASK_OUTPUT, &payload),
            Some(Notification::TaskOutput { text: None, .. })
        ));
    }

    #[test]
    fn malformed_payloads_and_unknown_channels_decode_to_nothing() {
        let state = Notification::TaskState {
            tenant: tenant(),
            task: task(),
        }
        .payload();
        assert_eq!(Notification::decode("elsewhere", &state), None);
        assert_eq!(Notification::decode(channel::EVENTS, "not json"), None);
        assert_eq!(
            Notification::decode(channel::TASK_STATE, &format!(r#"{{"t":"{}"}}"#, tenant())),
            None
        );
    }

    proptest! {
        #[test]
        fn any_delta_payload_fits_and_round_trips_or_drops_only_its_text(
            text in any::<String>(),
            attempt in any::<i32>(),
            index in any::<i64>(),
        ) {
            let notification = Notification::TaskOutput {
                tenant: tenant(), task: task(), attempt, index, text: Some(text.clone()),
            };
            let payload = notification.payload();
            prop_assert!(payload.len() <= MAX_PAYLOAD_BYTES);
            match Notification::decode(channel::TASK_OUTPUT, &payload) {
                Some(Notification::TaskOutput { text: got, attempt: a, index: i, .. }) => {
                    prop_assert_eq!((a, i), (attempt, index));
                    prop_assert!(got.is_none() || got.as_deref() == Some(text.as_str()));
                }
                other => prop_assert!(false, "decoded to {:?}", other),
            }
        }

        #[test]
        fn decoding_arbitrary_input_never_panics(channel_name in "[a-z_]{0,30}", payload in any::<String>()) {
            let _ = Notification::decode(&channel_name, &payload);
        }
    }
}

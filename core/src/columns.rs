//! The enumerated text columns both binaries read and write: a task's status, a transcript
//! message's role, an agent's provider. Their stored names live here and nowhere else; with
//! the `sqlx` feature they encode and decode as PostgreSQL `text`, and a stored name this
//! build does not know is a decode error, never a silent fallback.

use std::fmt;

/// A stored name that is not one of the enum's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName {
    /// The column kind, e.g. "task status".
    pub kind: &'static str,
    /// The name found.
    pub name: String,
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} {:?}", self.kind, self.name)
    }
}

impl std::error::Error for UnknownName {}

macro_rules! text_enum {
    (
        $(#[$doc:meta])* $name:ident, $kind:literal {
            $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Parses a stored name.
            pub fn parse(name: &str) -> Result<Self, UnknownName> {
                match name {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName { kind: $kind, name: name.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let name = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok($name::parse(name)?)
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }
    };
}

text_enum!(
    /// Where a task is in its life (`tasks.status`).
    TaskStatus, "task status" {
        /// Waiting for a worker.
        Pending => "pending",
        /// Held by a worker.
        Running => "running",
        /// Finished with an answer.
        Succeeded => "succeeded",
        /// Finished without one.
        Failed => "failed",
        /// Stopped by a client.
        Canceled => "canceled",
        /// Waiting for the caller to submit the outputs of the tools its model called.
        RequiresAction => "requires_action",
    }
);

impl TaskStatus {
    /// Whether the task can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Canceled
        )
    }
}

text_enum!(
    /// Author of a transcript message (`task_messages.role`).
    Role, "message role" {
        /// The system prompt.
        System => "system",
        /// The caller.
        User => "user",
        /// The model.
        Assistant => "assistant",
        /// A tool's output, submitted by the caller.
        Tool => "tool",
    }
);

text_enum!(
    /// A model provider an agent runs on (`agents.provider`).
    Provider, "provider" {
        /// The built-in offline provider.
        Echo => "echo",
        /// Anthropic's Messages API.
        Anthropic => "anthropic",
        /// OpenAI's Chat Completions API.
        OpenAi => "openai",
        /// Google's Gemini API (`streamGenerateContent`).
        Gemini => "gemini",
        /// Any server speaking OpenAI's Chat Completions at a configured base URL (vLLM,
        /// Ollama, llama.cpp, Together, Groq, OpenRouter).
        OpenAiCompatible => "openai_compatible",
    }
);

text_enum!(
    /// What an identity may do in a workspace (`api_keys.role`). Declared from the least to
    /// the most powerful, so the derived order compares them: each role includes the ones
    /// below it.
    WorkspaceRole, "workspace role" {
        /// Reads.
        Viewer => "viewer",
        /// Also creates, cancels and watches tasks.
        Member => "member",
        /// Also manages agents, keys and settings.
        Admin => "admin",
    }
);

impl PartialOrd for WorkspaceRole {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for WorkspaceRole {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_and_unknown_names_are_errors() {
        for status in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(status.as_str()), Ok(*status));
        }
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Ok(*role));
        }
        for role in WorkspaceRole::ALL {
            assert_eq!(WorkspaceRole::parse(role.as_str()), Ok(*role));
        }
        assert!(WorkspaceRole::Viewer < WorkspaceRole::Member);
        assert!(WorkspaceRole::Member < WorkspaceRole::Admin);
        for provider in Provider::ALL {
            assert_eq!(Provider::parse(provider.as_str()), Ok(*provider));
        }
        let unknown = TaskStatus::parse("paused");
        assert_eq!(
            unknown.map_err(|e| e.to_string()),
            Err("unknown task status \"paused\"".to_owned())
        );
        assert!(Role::parse("User").is_err(), "names are case-sensitive");
    }

    #[test]
    fn only_finished_statuses_are_terminal() {
        let terminal: Vec<_> = TaskStatus::ALL.iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(
            terminal,
            [
                &TaskStatus::Succeeded,
                &TaskStatus::Failed,
                &TaskStatus::Canceled
            ]
        );
    }

    /// The CHECK constraints in the migrations list the same names.
    #[test]
    fn the_schema_checks_the_same_names() {
        // The latest migrations that (re)define tasks_status_check and
        // task_messages_role_check.
        let schema = concat!(
            include_str!("../../migrations/20261124900000_durable_steps.sql"),
            include_str!("../../migrations/20261124900002_steps_in_transcripts.sql"),
        );
        for name in TaskStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .chain(Role::ALL.iter().map(|r| r.as_str()))
        {
            assert!(
                schema.contains(&format!("'{name}'")),
                "{name} is not in the schema"
            );
        }
        // The latest migration that (re)defines agents_provider_check.
        let providers = include_str!("../../migrations/20261124800000_model_providers.sql");
        for provider in Provider::ALL {
            let name = provider.as_str();
            assert!(
                providers.contains(&format!("'{name}'")),
                "{name} is not in the schema"
            );
        }
        let identity = include_str!("../../migrations/20261124200000_identity.sql");
        for role in WorkspaceRole::ALL {
            let name = role.as_str();
            assert!(
                identity.contains(&format!("'{name}'")),
                "{name} is not in the schema"
            );
        }
    }
}

//! A hand-driven worker session, for tests that play the worker's side of the channel.

use agentplane_proto::v1 as pb;
use pb::session_request::Kind as In;
use pb::session_response::Kind as Out;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::app::{Clients, TestApp};

/// A hand-driven worker session.
pub(crate) struct Session {
    pub id: uuid::Uuid,
    send: mpsc::Sender<pb::SessionRequest>,
    pub recv: tonic::Streaming<pb::SessionResponse>,
}

impl Session {
    /// Opens a session with a worker credential (`TestApp::worker_credential`).
    pub(crate) async fn open(app: &TestApp, credential: &(uuid::Uuid, String)) -> Session {
        let (id, token) = (credential.0, credential.1.as_str());
        let mut client = Clients::new(app.channel().await, token).workers;
        let (send, rx) = mpsc::channel(16);
        send.send(pb::SessionRequest {
            kind: Some(In::Hello(pb::WorkerHello {
                worker_id: id.to_string(),
                version: "test".into(),
                capacity: 4,
            })),
        })
        .await
        .unwrap();
        let mut recv = client
            .session(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let welcome = recv.message().await.unwrap().unwrap();
        assert!(matches!(welcome.kind, Some(Out::Welcome(_))), "{welcome:?}");
        Session { id, send, recv }
    }

    pub(crate) async fn send(&self, kind: In) {
        self.send
            .send(pb::SessionRequest { kind: Some(kind) })
            .await
            .unwrap();
    }

    pub(crate) async fn succeed(&mut self, lease: pb::LeaseRef, output: &str) -> pb::ResultAck {
        self.send(In::Result(pb::WorkerResult {
            lease: Some(lease),
            outcome: Some(pb::worker_result::Outcome::Success(pb::WorkerSuccess {
                output: output.to_owned(),
                finish_reason: "stop".into(),
                calls: vec![pb::ModelCall {
                    step: 0,
                    provider_request_id: format!("{}-{}", self.id, uuid::Uuid::now_v7()),
                    model: "echo-1".into(),
                    usage: Some(pb::Usage {
                        input_tokens: 3,
                        output_tokens: 2,
                        cost_micros: 0,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                position: 0,
            })),
        }))
        .await;
        loop {
            match self.recv.message().await.unwrap().unwrap().kind {
                Some(Out::ResultAck(ack)) => return ack,
                _ => continue,
            }
        }
    }
}

impl Session {
    /// Waits until every report sent so far has been recorded. Reports are recorded in the
    /// order they arrive (heartbeats go their own way), so the answer to a result about an
    /// attempt nobody holds, sent now, comes after all of them.
    pub(crate) async fn settle(&mut self, workspace_id: &str) -> pb::ResultAck {
        let nobody = pb::LeaseRef {
            workspace_id: workspace_id.to_owned(),
            task_id: uuid::Uuid::now_v7().to_string(),
            attempt: 1,
        };
        self.send(In::Result(pb::WorkerResult {
            lease: Some(nobody.clone()),
            outcome: Some(pb::worker_result::Outcome::Failure(pb::WorkerFailure {
                code: "settle".into(),
                message: String::new(),
                retryable: false,
            })),
        }))
        .await;
        loop {
            if let Some(Out::ResultAck(ack)) = self.recv.message().await.unwrap().unwrap().kind
                && ack.lease.as_ref() == Some(&nobody)
            {
                assert!(!ack.accepted, "nobody holds {nobody:?}");
                return ack;
            }
        }
    }
}

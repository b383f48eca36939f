//! Per-worker credentials: the worker id comes from the credential, the fleet's enrolment
//! token only enrols, and a revoked worker is cut off.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use pb::session_request::Kind as In;
use tonic::Code;

use crate::app::{Clients, TestApp, WORKER_TOKEN};
use crate::pg::TestDb;
use crate::session::Session;

fn hello(id: uuid::Uuid) -> pb::SessionRequest {
    pb::SessionRequest {
        kind: Some(In::Hello(pb::WorkerHello {
            worker_id: id.to_string(),
            version: "test".into(),
            capacity: 1,
        })),
    }
}

async fn open(app: &TestApp, token: &str, id: uuid::Uuid) -> Result<(), Code> {
    let mut client = Clients::new(app.channel().await, token).workers;
    client
        .session(tokio_stream::iter(vec![hello(id)]))
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}

#[tokio::test]
async fn a_worker_cannot_say_it_is_another_and_the_enrolment_token_only_enrols() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let (id, token) = app.worker_credential().await;
    assert!(token.starts_with(&format!("wkr_{}_", id.simple())));
    assert_eq!(open(&app, &token, id).await, Ok(()));
    // Another worker's id in the hello is refused.
    let (other, _) = app.worker_credential().await;
    assert_eq!(open(&app, &token, other).await, Err(Code::PermissionDenied));
    // The shared enrolment token opens no session, whatever id it names...
    assert_eq!(
        open(&app, WORKER_TOKEN, id).await,
        Err(Code::PermissionDenied)
    );
    // ...but exchanges itself for a credential of its own.
    let mut fleet = Clients::new(app.channel().await, WORKER_TOKEN);
    let enrolled = fleet
        .worker_credentials
        .enroll_worker(pb::EnrollWorkerRequest {
            name: "host-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let credential = enrolled.credential.unwrap();
    assert_eq!(credential.created_by, "enrolment");
    let enrolled_id = credential.worker_id.parse().unwrap();
    assert_eq!(open(&app, &enrolled.secret, enrolled_id).await, Ok(()));
    // Worker credentials reach only WorkerService; the enrolment token cannot manage them.
    let mut worker = Clients::new(app.channel().await, &token);
    let status = worker
        .identity
        .get_current_identity(pb::GetCurrentIdentityRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = fleet
        .worker_credentials
        .list_worker_credentials(pb::ListWorkerCredentialsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // The platform admin sees them all, never with secrets.
    let listed = app
        .admin()
        .await
        .worker_credentials
        .list_worker_credentials(pb::ListWorkerCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .credentials;
    assert_eq!(listed.len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_worker_is_cut_off_and_cannot_reconnect() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let credential = app.worker_credential().await;
    let mut session = Session::open(&app, &credential).await;
    let ws = app.admin().await.create_workspace("revoked").await;
    session.settle(&ws).await;

    let mut admin = app.admin().await;
    let revoked = admin
        .worker_credentials
        .revoke_worker_credential(pb::RevokeWorkerCredentialRequest {
            worker_id: credential.0.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(revoked.revoked_by, "platform-admin");
    assert!(revoked.revoke_time.is_some());
    // A second revocation changes nothing and records nothing.
    admin
        .worker_credentials
        .revoke_worker_credential(pb::RevokeWorkerCredentialRequest {
            worker_id: credential.0.to_string(),
        })
        .await
        .unwrap();
    // Issuing and revoking are platform events with the acting identity.
    let events: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, actor FROM platform_events WHERE resource_id = $1 ORDER BY seq",
    )
    .bind(credential.0)
    .fetch_all(&db.owner_pool().await)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            (
                "worker_credential.created".to_owned(),
                "platform-admin".to_owned()
            ),
            (
                "worker_credential.revoked".to_owned(),
                "platform-admin".to_owned()
            ),
        ]
    );

    // The open session ends with UNAUTHENTICATED.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match session.recv.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the session ends within 10 s");
    assert_eq!(ended, Some(Code::Unauthenticated));
    // And it cannot open another.
    assert_eq!(
        open(&app, &credential.1, credential.0).await,
        Err(Code::Unauthenticated)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_worker_started_with_the_enrolment_token_runs_tasks_under_its_own_id() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let worker = app.worker(&db, 1, Duration::ZERO).await;
    let mut c = app.admin().await;
    let ws = c.workspace("enrolled").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let task = c.task(&ws, &agent.id, "hi").await;
    let done = c.wait_terminal(&ws, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Succeeded as i32);
    assert_eq!(done.worker_id, worker.worker_id().to_string());
    let credentials = c
        .worker_credentials
        .list_worker_credentials(pb::ListWorkerCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .credentials;
    assert!(
        credentials
            .iter()
            .any(|k| k.worker_id == done.worker_id && k.created_by == "enrolment")
    );
    worker.shutdown().await;
    app.stop().await;
}

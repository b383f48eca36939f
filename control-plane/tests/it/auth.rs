//! Authentication and the authorisation table.

use agentplane_proto::v1 as pb;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;

use crate::app::{Clients, TestApp, WORKER_TOKEN};
use crate::pg::TestDb;

#[tokio::test]
async fn every_rpc_requires_a_valid_bearer_token_for_its_role() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let channel = app.channel().await;

    let list = pb::ListWorkspacesRequest::default();
    let mut anonymous = Clients::new(channel.clone(), "");
    let status = anonymous
        .workspaces
        .list_workspaces(list.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut wrong = Clients::new(channel.clone(), "not-a-real-token-at-all");
    let status = wrong
        .workspaces
        .list_workspaces(list.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // The worker credential may not use the public API...
    let mut worker = Clients::new(channel.clone(), WORKER_TOKEN);
    let status = worker
        .workspaces
        .list_workspaces(list.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = worker
        .tasks
        .get_task(pb::GetTaskRequest {
            workspace_id: uuid::Uuid::now_v7().to_string(),
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // ...and the admin credential may not pose as a worker.
    let mut admin = app.admin().await;
    let hello = pb::SessionRequest {
        kind: Some(pb::session_request::Kind::Hello(pb::WorkerHello {
            worker_id: uuid::Uuid::now_v7().to_string(),
            version: "test".into(),
            capacity: 1,
        })),
    };
    let status = admin
        .workers
        .session(tokio_stream::iter(vec![hello]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(admin.workspaces.list_workspaces(list).await.is_ok());

    // Health needs no credential, so load balancers and kubelets can probe it.
    let mut health = HealthClient::new(channel);
    let mut serving = false;
    for _ in 0..100 {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "agentplane.v1.TaskService".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if response.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        {
            serving = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(serving, "health reports SERVING once the database answers");
    app.stop().await;
}

#[tokio::test]
async fn repeated_authentication_failures_from_one_source_are_slowed_down() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut wrong = Clients::new(app.channel().await, "not-a-real-token-at-all");
    let mut timings = Vec::new();
    for _ in 0..8 {
        let started = std::time::Instant::now();
        let status = wrong
            .identity
            .get_current_identity(pb::GetCurrentIdentityRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        timings.push(started.elapsed());
    }
    // Five are free; then 100 ms, 200 ms, 400 ms.
    let slow = std::time::Duration::from_millis(90);
    assert!(timings[..5].iter().all(|t| *t < slow), "{timings:?}");
    assert!(timings[5] >= slow, "{timings:?}");
    assert!(
        timings[7] >= std::time::Duration::from_millis(390),
        "{timings:?}"
    );
    // A valid credential from the same source is not held up.
    let mut admin = app.admin().await;
    let started = std::time::Instant::now();
    admin
        .workspaces
        .list_workspaces(pb::ListWorkspacesRequest::default())
        .await
        .unwrap();
    assert!(started.elapsed() < slow);
    app.stop().await;
}

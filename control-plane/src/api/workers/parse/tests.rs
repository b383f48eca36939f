//! Tests of the parent module.

use uuid::Uuid;

use super::*;

fn hello(worker_id: String, capacity: i32) -> pb::WorkerHello {
    pb::WorkerHello {
        worker_id,
        version: "1".to_owned(),
        capacity,
    }
}

#[test]
fn a_hello_with_the_nil_uuid_or_a_capacity_out_of_range_is_refused() {
    let valid = Uuid::now_v7().to_string();
    assert!(Hello::try_from(hello(valid.clone(), 8)).is_ok());
    for bad in [
        hello(Uuid::nil().to_string(), 8),
        hello(valid.clone(), 0),
        hello(valid, 10_001),
        hello(String::new(), 8),
    ] {
        assert!(matches!(
            Hello::try_from(bad),
            Err(ApiError::InvalidArgument(_))
        ));
    }
}

fn output(index: i64) -> pb::SessionRequest {
    pb::SessionRequest {
        kind: Some(In::Output(pb::WorkerOutput {
            lease: Some(pb::LeaseRef {
                workspace_id: Uuid::now_v7().to_string(),
                task_id: Uuid::now_v7().to_string(),
                attempt: 1,
            }),
            index,
            text: "x\0".to_owned(),
            ..Default::default()
        })),
    }
}

#[test]
fn output_indexes_outside_the_limit_are_refused_and_nul_is_replaced() {
    for bad in [-1, limits::MAX_DELTA_INDEX + 1, i64::MAX] {
        assert!(Report::try_from(output(bad)).is_err(), "{bad}");
    }
    let Ok(Report::Output { text, index, .. }) = Report::try_from(output(limits::MAX_DELTA_INDEX))
    else {
        panic!("the largest index is accepted");
    };
    assert_eq!(
        (text.as_str(), index),
        ("x\u{FFFD}", limits::MAX_DELTA_INDEX)
    );
}

#[test]
fn a_reset_has_no_text_and_an_index_in_range() {
    let reset = |index: i64, text: &str| {
        let mut message = output(index);
        if let Some(In::Output(output)) = &mut message.kind {
            output.reset = true;
            output.text = text.to_owned();
        }
        Report::try_from(message)
    };
    assert!(matches!(
        reset(3, ""),
        Ok(Report::OutputReset { index: 3, .. })
    ));
    assert!(reset(limits::MAX_DELTA_INDEX, "").is_ok());
    for (index, text) in [(3, "x"), (-1, ""), (limits::MAX_DELTA_INDEX + 1, "")] {
        assert!(
            matches!(reset(index, text), Err(ApiError::InvalidArgument(_))),
            "{index} {text:?}"
        );
    }
}

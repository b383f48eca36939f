//! Tests of the parent module.

use super::*;

fn args() -> ServeArgs {
    ServeArgs {
        listen_addr: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        database_url: "postgres://localhost/x".into(),
        migrate_database_url: None,
        admin_token: None,
        worker_token: None,
        dev_mode: false,
        db_max_connections: 10,
        db_acquire_timeout_seconds: 5,
        db_statement_timeout_seconds: 30,
        db_idle_in_transaction_timeout_seconds: 10,
        lease_seconds: 30,
        shutdown_grace_seconds: 5,
        max_streams: 10_000,
        jwt_issuer: None,
        jwt_audience: None,
        jwt_hs256_secret: None,
        jwt_public_key_file: None,
        jwt_jwks_url: None,
        metrics_addr: None,
        task_retention: TaskRetention(Some(Duration::from_secs(30 * 86_400))),
        task_retention_interval_seconds: 300,
        listener_probe_seconds: 10,
    }
}

#[test]
fn jwt_settings_are_all_or_nothing_with_one_usable_key() {
    let dev = || ServeArgs {
        dev_mode: true,
        ..args()
    };
    let secret = || Some(SecretString::from("x".repeat(32)));
    let issuer = || Some("https://idp.example".to_owned());
    let audience = || Some("agentplane".to_owned());
    let ok = ServeArgs {
        jwt_issuer: issuer(),
        jwt_audience: audience(),
        jwt_hs256_secret: secret(),
        ..dev()
    };
    assert!(ok.validate().is_ok_and(|c| c.jwt.is_some()));
    let jwks = ServeArgs {
        jwt_issuer: issuer(),
        jwt_audience: audience(),
        jwt_jwks_url: Some("https://idp.example/.well-known/jwks.json".into()),
        ..dev()
    };
    assert!(jwks.validate().is_ok_and(|c| c.jwt.is_some()));
    for bad in [
        ServeArgs {
            jwt_issuer: issuer(),
            ..dev()
        },
        ServeArgs {
            jwt_issuer: issuer(),
            jwt_audience: audience(),
            ..dev()
        },
        ServeArgs {
            jwt_issuer: issuer(),
            jwt_audience: audience(),
            jwt_hs256_secret: Some(SecretString::from("short")),
            ..dev()
        },
        ServeArgs {
            jwt_issuer: issuer(),
            jwt_audience: audience(),
            jwt_hs256_secret: secret(),
            jwt_public_key_file: Some("/nonexistent.pem".into()),
            ..dev()
        },
        ServeArgs {
            jwt_issuer: issuer(),
            jwt_audience: audience(),
            jwt_public_key_file: Some("/nonexistent.pem".into()),
            ..dev()
        },
        ServeArgs {
            jwt_issuer: issuer(),
            jwt_audience: audience(),
            jwt_jwks_url: Some("http://idp.example/jwks.json".into()),
            ..dev()
        },
        ServeArgs {
            jwt_issuer: issuer(),
            jwt_audience: audience(),
            jwt_hs256_secret: secret(),
            jwt_jwks_url: Some("https://idp.example/jwks.json".into()),
            ..dev()
        },
    ] {
        assert!(bad.validate().is_err());
    }
}

#[test]
fn refuses_to_start_without_tokens_outside_dev_mode() {
    assert!(args().validate().is_err());
    assert!(
        ServeArgs {
            dev_mode: true,
            ..args()
        }
        .validate()
        .is_ok()
    );
}

#[test]
fn debug_output_hides_database_passwords_and_tokens() {
    let secrets = [
        "hunter2",
        "owner-pass",
        "admin-token-0123456789",
        "worker-token-0123456789",
    ];
    let cli = Cli::try_parse_from([
        "agentplane-control-plane",
        "serve",
        "--database-url",
        "postgres://cp:hunter2@db.internal:5433/agentplane",
        "--migrate-database-url",
        "postgres://owner:owner-pass@db.internal:5433/agentplane",
        "--admin-token",
        secrets[2],
        "--worker-token",
        secrets[3],
    ])
    .expect("the flags parse");
    let Command::Serve(args) = &cli.command else {
        unreachable!("serve parses as serve")
    };
    let config = ServeArgs::clone(args)
        .validate()
        .expect("the flags are valid");
    for printed in [format!("{cli:?}"), format!("{config:?}")] {
        for secret in secrets {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
    }
    assert!(
        format!("{config:?}").contains("cp@db.internal:5433/agentplane"),
        "the database is named: {config:?}"
    );
    let demo = Cli::try_parse_from(["agentplane-control-plane", "demo", "--token", secrets[2]])
        .expect("the flags parse");
    assert!(!format!("{demo:?}").contains(secrets[2]));
}

#[test]
fn refuses_bad_database_urls_without_quoting_them() {
    let bad = ServeArgs {
        dev_mode: true,
        database_url: "mysql://cp:hunter2@db/x".into(),
        ..args()
    };
    let error = bad.validate().expect_err("not a postgres url");
    assert!(matches!(
        error,
        ConfigError::DatabaseUrl {
            flag: "--database-url",
            ..
        }
    ));
    assert!(!format!("{error:?} {error}").contains("hunter2"));
    let summary = database_summary(&"postgres://cp:hunter2@db.internal:5433/ap".into());
    assert_eq!(summary, "cp@db.internal:5433/ap");
}

#[test]
fn refuses_short_or_equal_tokens() {
    let short = ServeArgs {
        admin_token: Some("short".into()),
        worker_token: Some("w".repeat(20).into()),
        ..args()
    };
    assert!(matches!(
        short.validate(),
        Err(ConfigError::ShortToken {
            flag: "--admin-token"
        })
    ));
    let same = ServeArgs {
        admin_token: Some("a".repeat(20).into()),
        worker_token: Some("a".repeat(20).into()),
        ..args()
    };
    assert!(matches!(same.validate(), Err(ConfigError::SameTokens)));
    let good = ServeArgs {
        admin_token: Some("a".repeat(20).into()),
        worker_token: Some("w".repeat(20).into()),
        ..args()
    };
    assert!(good.validate().is_ok());
}

#[test]
fn task_retention_defaults_to_thirty_days_and_can_be_off_or_refused() {
    let serve = |extra: &[&str]| {
        let mut argv = vec![
            "agentplane-control-plane",
            "serve",
            "--dev-mode",
            "--database-url",
            "postgres://localhost/x",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).map(|cli| cli.command) {
            Ok(Command::Serve(args)) => args.validate().map(|config| config.task_retention),
            Ok(_) => unreachable!(),
            Err(error) => panic!("{error}"),
        }
    };
    assert_eq!(
        serve(&[]).ok().flatten(),
        Some(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(serve(&["--task-retention", "off"]).ok(), Some(None));
    assert_eq!(
        serve(&["--task-retention", "7d"]).ok().flatten(),
        Some(Duration::from_secs(7 * 86_400))
    );
    assert!(matches!(
        serve(&["--task-retention", "5s"]),
        Err(ConfigError::OutOfRange { .. })
    ));
    assert!(
        Cli::try_parse_from([
            "agentplane-control-plane",
            "serve",
            "--database-url",
            "postgres://localhost/x",
            "--task-retention",
            "a month",
        ])
        .is_err()
    );
}

#[test]
fn the_listener_probe_is_between_a_second_and_an_hour() {
    let probe = |seconds| {
        ServeArgs {
            listener_probe_seconds: seconds,
            dev_mode: true,
            ..args()
        }
        .validate()
        .map(|config| config.listener_probe_interval)
    };
    assert_eq!(probe(10).ok(), Some(Duration::from_secs(10)));
    assert!(matches!(probe(0), Err(ConfigError::OutOfRange { .. })));
    assert!(matches!(probe(3601), Err(ConfigError::OutOfRange { .. })));
}

//! A private PostgreSQL cluster for the test binary: initialised from the installed
//! binaries in a temporary directory on a free port, migrated once into a template
//! database, and copied into a fresh database for every test.
//!
//! The cluster is shared by all tests of one test binary and stopped by a watchdog process
//! when the binary exits. The template is migrated with the control plane's embedded
//! migrations, and has the login roles [`APP_USER`] and [`WORKER_USER`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

const TEMPLATE: &str = "agentplane_template";
/// Login role of the control plane (member of agentplane_app).
pub const APP_USER: &str = "ap_app";
/// Login role of workers (member of agentplane_worker).
pub const WORKER_USER: &str = "ap_worker";

struct Cluster {
    port: u16,
    socket_dir: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(start_cluster) {
        Ok(cluster) => cluster,
        Err(error) => panic!("could not start the test PostgreSQL cluster: {error}"),
    }
}

fn pg_bin_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("PostgreSQL is not installed (/usr/lib/postgresql: {e}); set PG_BIN"))?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    candidates.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates
        .pop()
        .ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".to_owned())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command that runs as the `postgres` OS user when we are root (PostgreSQL refuses to run
/// as root).
fn pg_command(bin: &Path, root: bool) -> Command {
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(bin);
        command
    } else {
        Command::new(bin)
    }
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn start_cluster() -> Result<Cluster, String> {
    let bin = pg_bin_dir()?;
    let root = is_root();
    let dir = std::env::temp_dir().join(format!("agentplane-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if root {
        run(
            {
                let mut c = Command::new("chown");
                c.args(["-R", "postgres:postgres"]).arg(&dir);
                c
            },
            "chown",
        )?;
    }
    let data = dir.join("data");
    let mut initdb = pg_command(&bin.join("initdb"), root);
    initdb.arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "--auth=trust",
        "--no-sync",
        "-E",
        "UTF8",
        "--locale=C",
    ]);
    run(initdb, "initdb")?;

    let port = free_port()?;
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=400 -c shared_buffers=128MB",
        dir.display()
    );
    let mut pg_ctl = pg_command(&bin.join("pg_ctl"), root);
    pg_ctl
        .arg("-D")
        .arg(&data)
        .args(["-o", &options, "-l"])
        .arg(dir.join("postgres.log"))
        .args(["-w", "-t", "60", "start"]);
    run(pg_ctl, "pg_ctl start")?;

    // Stop the cluster and delete it once this test binary has exited.
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runuser}{pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        runuser = if root { "runuser -u postgres -- " } else { "" },
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    Command::new("setsid")
        .args(["sh", "-c", &stop])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the cluster watchdog: {e}"))?;

    let cluster = Cluster {
        port,
        socket_dir: dir,
    };
    // Migrate the template on a thread with its own runtime: we may be inside a test's.
    let url = cluster.url("postgres", "postgres");
    let template_url = cluster.url("postgres", TEMPLATE);
    std::thread::spawn(move || -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let mut admin = PgConnection::connect(&url)
                .await
                .map_err(|e| e.to_string())?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {TEMPLATE}")))
                .execute(&mut admin)
                .await
                .map_err(|e| e.to_string())?;
            let pool = sqlx::PgPool::connect(&template_url)
                .await
                .map_err(|e| e.to_string())?;
            agentplane_control_plane::store::MIGRATOR
                .run(&pool)
                .await
                .map_err(|e| format!("migrating the template: {e}"))?;
            pool.close().await;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE ROLE {APP_USER} LOGIN IN ROLE agentplane_app; \
                 CREATE ROLE {WORKER_USER} LOGIN IN ROLE agentplane_worker;"
            )))
            .execute(&mut admin)
            .await
            .map_err(|e| e.to_string())?;
            admin.close().await.map_err(|e| e.to_string())
        })
    })
    .join()
    .map_err(|_| "template setup panicked".to_owned())??;
    Ok(cluster)
}

impl Cluster {
    fn url(&self, user: &str, database: &str) -> String {
        url_at(self.port, user, database)
    }

    /// The lines of the server's log that say it crashed or refused, newest last: the cause
    /// of a failure to connect that a test's own output cannot show (the log is deleted with
    /// the cluster).
    fn trouble(&self) -> String {
        let log = std::fs::read_to_string(self.socket_dir.join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|line| {
                [
                    "PANIC",
                    "FATAL",
                    "terminated by signal",
                    "exited with exit code",
                    "server processes",
                    "stuck",
                    "out of memory",
                    "No space",
                ]
                .iter()
                .any(|mark| line.contains(mark))
            })
            .collect();
        let recent = &lines[lines.len().saturating_sub(20)..];
        format!("; the server's log says:\n{}", recent.join("\n"))
    }
}

fn url_at(port: u16, user: &str, database: &str) -> String {
    format!("postgres://{user}@127.0.0.1:{port}/{database}")
}

/// A fresh, migrated database for one test.
#[derive(Debug)]
pub struct TestDb {
    /// Database name.
    pub name: String,
}

impl TestDb {
    /// Copies the migrated template into a new database.
    pub async fn new() -> TestDb {
        let cluster = cluster();
        let _ = &cluster.socket_dir;
        let name = format!("test_{}", uuid::Uuid::now_v7().simple());
        let options: PgConnectOptions = match cluster.url("postgres", "postgres").parse() {
            Ok(options) => options,
            Err(error) => panic!("bad admin url: {error}"),
        };
        let mut admin = match options.connect().await {
            Ok(connection) => connection,
            Err(error) => panic!(
                "connecting to the test cluster: {error}{}",
                cluster.trouble()
            ),
        };
        let create = format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}");
        // Copies of one template may collide briefly; retry.
        let mut tries = 0;
        loop {
            match sqlx::raw_sql(sqlx::AssertSqlSafe(create.clone()))
                .execute(&mut admin)
                .await
            {
                Ok(_) => break,
                Err(error) if tries < 20 => {
                    tries += 1;
                    let _ = error;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
                }
                Err(error) => panic!("creating {name}: {error}{}", cluster.trouble()),
            }
        }
        let _ = admin.close().await;
        TestDb { name }
    }

    /// URL of the schema owner (a superuser here).
    pub fn owner_url(&self) -> String {
        cluster().url("postgres", &self.name)
    }

    /// URL of the control plane's application role.
    pub fn app_url(&self) -> String {
        cluster().url(APP_USER, &self.name)
    }

    /// URL of the control plane's application role through a proxy on `port` (see
    /// [`crate::proxy`]).
    pub fn app_url_through(&self, port: u16) -> String {
        url_at(port, APP_USER, &self.name)
    }

    /// Where the cluster listens, for a proxy in front of it.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], cluster().port))
    }

    /// URL of the workers' role.
    pub fn worker_url(&self) -> String {
        cluster().url(WORKER_USER, &self.name)
    }

    /// A small pool as the owner, for arranging and inspecting state directly.
    pub async fn owner_pool(&self) -> sqlx::PgPool {
        match sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.owner_url())
            .await
        {
            Ok(pool) => pool,
            Err(error) => panic!("connecting as owner: {error}{}", cluster().trouble()),
        }
    }

    /// A small pool as the worker role.
    pub async fn worker_pool(&self) -> sqlx::PgPool {
        match sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.worker_url())
            .await
        {
            Ok(pool) => pool,
            Err(error) => panic!("connecting as worker: {error}{}", cluster().trouble()),
        }
    }
}
